"""The uniform interface every signal tap follows.

A tap watches one quantity. It keeps what it measures **on the device** between flushes and hands
it over in :meth:`Tap.collect` as tensors; the :class:`~unstuck.signals.hub.SignalHub` packs the
tensors of every tap into one buffer and moves that to the host in a single transfer, so the
training step never waits on a host sync. Taps declare a cost tier (as Cockpit's economy /
business / full) and how their values combine across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

__all__ = ["CostTier", "Packet", "Reduction", "StepContext", "Tap", "early_step"]

CostTier = Literal["always", "sampled", "probe"]
# How a distributed run combines a tap's series across ranks at each flush (applied by the
# Guard's RankSync.merge_frame): "mean" averages them step by step on every rank, "lead" hands
# every rank rank 0's (inputs the detectors must read alike everywhere), "local" leaves each
# rank its own (rank 0 diagnoses on its own signals).
Reduction = Literal["mean", "lead", "local"]


@dataclass
class StepContext:
    """What the hub knows about the model and optimizer, shared by all taps."""

    params: list[torch.Tensor]  # every parameter the optimizer updates, in a fixed order
    names: list[str]  # their qualified names in the model (same order)
    group_index: list[int]  # the optimizer param group of each parameter
    optimizer: torch.optim.Optimizer
    model: torch.nn.Module | None = None  # for taps that hook the forward pass (activations)
    steps: int = 0  # Guard steps so far (the hub keeps it current)
    opt_steps: int = 0  # optimizer steps so far (GradScaler skips show as the difference)
    # Optimizer steps the loop meant to take, when it is not one per Guard step (accumulation
    # owned by the Guard counts its boundaries here); None means one per Guard step.
    intended_opt_steps: int | None = None
    # Optimizer steps a restore threw away (a rollback or a restart from an earlier snapshot):
    # the optimizer's own state counts from the snapshot, the hub's count goes on.
    undone_opt_steps: int = 0


@dataclass
class Packet:
    """What one tap hands over at a flush.

    ``tensors`` are device tensors the hub moves to the host in one transfer; ``host`` holds values
    already on the host (Python numbers gathered cheaply along the way). ``finish`` turns both into
    named series after the transfer.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)


class Tap:
    """Base class for a signal tap. Subclasses override the hooks they need.

    Every hook must be cheap on steps the tap does not sample, and none may call ``.item()``,
    ``.tolist()`` or ``.cpu()``: only :meth:`finish` sees host values.
    """

    name: ClassVar[str]
    tier: ClassVar[CostTier]
    # The evidence names finish() can return (``prefix/*``: any name under the prefix). The
    # conformance test holds each rule's ``requires`` to these and the front-ends' facts, and
    # each tap's real output to its list, so a misspelt name fails a test, not a rule silently.
    provides: ClassVar[frozenset[str]] = frozenset()
    reduction: ClassVar[Reduction] = "local"  # across ranks: see Reduction
    # The hub calls on_pre_step/on_post_step only on optimizer steps that are multiples of
    # ``every``: a sampled tap costs nothing at all on the other steps, not even a call.
    every: int = 1
    # Whether the tap also reads the powers of two before its first regular sample
    # (``early_step``); the hub then calls it there as well.
    early_samples: ClassVar[bool] = False
    # Whether on_pre_step must run inside the optimizer's step pre-hook even when a front-end
    # reads gradients itself (SignalHub.read_gradients_manually): a tap whose reading depends
    # on its order among the step hooks (the LR, before unstuck's LR multiplier scales it).
    in_step_hook: ClassVar[bool] = False

    def bind(self, ctx: StepContext) -> None:
        """Called once when the hub starts, with the parameters to watch."""

    def on_pre_step(self, ctx: StepContext, opt_step: int) -> None:
        """Runs in the optimizer's step pre-hook: gradients are final (accumulated, clipped)."""

    def on_post_step(self, ctx: StepContext, opt_step: int) -> None:
        """Runs in the optimizer's step post-hook: parameters hold the new values."""

    def on_loss(
        self,
        step: int,
        loss: torch.Tensor,
        ids: torch.Tensor | None,
        targets: torch.Tensor | None,
    ) -> None:
        """Runs in ``Guard.step`` with the detached loss (0-d, or one value per sample)."""

    def collect(self) -> Packet:
        """Hand over what was gathered since the last flush and start afresh."""
        return Packet()

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        """Turn host values (tensors already moved, as lists) into named signals."""
        return host

    def close(self) -> None:
        """Remove any hook the tap installed itself (the hub's optimizer hooks are its own)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def flat_float(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack 0-d tensors into one float32 vector on their device (no host sync)."""
    return torch.stack([t.detach().reshape(()).float() for t in tensors])


def early_step(opt_step: int, every: int) -> bool:
    """Whether ``opt_step`` is one of the powers of two before a cadence's first regular sample
    (1, 2, 4, ... < ``every``): a run too short for the cadence (the 20-35 steps of a small
    program, issue 24) still gets a few log-spaced readings, at a handful of samples per run."""
    return 0 < opt_step < every and opt_step & (opt_step - 1) == 0


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's own part of a sharded tensor (an FSDP2 ``DTensor``), else the tensor itself.

    Taps read what each rank holds and never gather a full tensor: under FSDP2 a rank's
    statistics describe its own shards, a fixed share of every parameter (docs/distributed.md).
    """
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def local_grads(params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """Each parameter's gradient as this rank holds it (None where there is none)."""
    return [None if p.grad is None else local_shard(p.grad) for p in params]
