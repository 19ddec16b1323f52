"""The Guard's collectives under ``torch.distributed``: identical decisions on every rank.

Each rank of a data-parallel run trains on its own batches, so its loss, activations and
per-sample statistics differ from the other ranks'. If every rank decided on its own numbers,
one rank could raise its LR while another kept it, or roll back an action the other kept, and
the run would train several models at once (DALLE-pytorch#268 is this bug with stock
schedulers). The Guard therefore makes every rank's decision from the same inputs:

What crosses between ranks at a flush is what each tap declares (``Tap.reduction``): the loss
tap's ``mean``, the parameter-distance and gradient-noise taps' ``lead``; the rest stay local.

* **The loss is averaged.** At each flush every rank hands in its window of per-step losses and
  one ``all_gather_object`` brings every rank's window to every rank; each rank averages them in
  rank order with ``math.fsum`` (exact, so the same bits everywhere, whatever the machine). The
  detectors, the verdicts, the probes and the next flush's timing all read that average.
* **The other detector inputs are rank 0's.** The parameter distance and the gradient
  signal-to-noise ratio travel in the same gather; every rank uses rank 0's (they are equal on
  ranks in sync, and a desync is the ``rank_desync`` rule's business, not a reason to disagree).
* **Rank 0 diagnoses.** The rules read many rank-local signals (activations, per-sample losses,
  a curvature probe on a kept batch), so rank 0 alone runs them and ``broadcast_object_list``
  hands its findings to the others, once per flush.
* **Validation values and probe-set scores are averaged** over the ranks the same way.

Given identical inputs the rescue engine is deterministic, so every rank snapshots, applies,
verifies and rolls back at the same step; each rank restores its own snapshot (its own RNG
state included). Every rank makes the same collectives in the same order, and only at a flush
(or a ``validate`` / branch-trial score, which every rank makes at the same point): nothing is
added to a step. Without ``torch.distributed``, before ``init_process_group`` or with one
rank, :meth:`RankSync.create` returns ``None`` and the Guard makes no collective at all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from unstuck.signals.base import Reduction
from unstuck.signals.distributed import distributed_world
from unstuck.signals.host import Series
from unstuck.signals.hub import Frame, SignalHub

__all__ = ["RankSync", "WindowReader", "unwrap_model"]

_logger = logging.getLogger("unstuck")

LEAD = 0  # the rank that diagnoses and writes the run store
NONFINITE = "nonfinite_"  # the prefix of a series' non-finite count


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (else ``model`` itself).

    Probes (the curvature probe, probe-set scores) run forwards of their own. Through the DDP
    wrapper a forward may be a collective (buffer broadcast) and a backward certainly is, which
    would hang when only some ranks probe; the wrapped module computes the same loss alone.
    """
    dist = torch.distributed
    if dist.is_available():
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(model, DistributedDataParallel):
            inner = model.module
            assert isinstance(inner, torch.nn.Module)
            return inner
    return model


def _on_wire(value: Any, how: Reduction) -> Any:
    """What one rank hands in for a series: plain lists for an averaged one."""
    if how == "mean" and value is not None:
        return (list(value[0]), list(value[1]))
    return value


def _mean_series(windows: list[Any]) -> Series | None:
    """Every rank's ``(steps, values)`` window averaged step by step; ``None`` when no rank
    has one. Ranks whose windows cover other steps make every rank raise the same error."""
    steps = windows[LEAD][0] if windows[LEAD] is not None else None
    if any((w[0] if w is not None else None) != steps for w in windows):
        seen = ", ".join(
            f"rank {i}: " + (f"{len(w[0])} steps ending at {w[0][-1]}" if w and w[0] else "none")
            for i, w in enumerate(windows)
        )
        raise RuntimeError(
            f"unstuck: the ranks flushed different steps ({seen}); build the Guard on every "
            "rank and call guard.step once per optimizer step on every rank"
        )
    if steps is None:
        return None
    columns = zip(*(w[1] for w in windows))
    return Series(list(steps), [_mean([float(v) for v in column]) for column in columns])


def _mean(values: Sequence[float]) -> float:
    """The mean in a fixed order with exact summation: the same bits on every rank."""
    if all(math.isfinite(v) for v in values):
        return math.fsum(values) / len(values)
    return sum(values) / len(values)  # NaN or ±inf: any non-finite rank makes the mean so


_DOING = {
    "flush": "flushing",
    "close": "closing",
    "validate": "in guard.validate",
    "scores": "scoring branch trials",
}


def _out_of_step(heads: Sequence[tuple[str, int | None]]) -> str:
    """One message, the same on every rank: who was doing what after how many steps."""
    seen = ", ".join(
        f"rank {i}: {_DOING.get(call, call)}"
        + ("" if steps is None else f" after {steps} guard.step calls")
        for i, (call, steps) in enumerate(heads)
    )
    counts = {steps for _, steps in heads if steps is not None}
    first = next(
        (i for i, (_, steps) in enumerate(heads) if steps is not None and steps != min(counts)),
        None,
    )
    where = (
        f"rank {first} is at guard.step {heads[first][1]}"
        if first is not None and len(counts) > 1
        else "the ranks are in different calls"
    )
    return (
        f"unstuck: the ranks are out of step ({where}; {seen}); call guard.step once per "
        "optimizer step, as many times on every rank, and validate/flush/close on every rank"
    )


class RankSync:
    """The collectives one Guard makes per flush when a process group with > 1 rank exists."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank = rank
        self.world = world

    @classmethod
    def create(cls) -> RankSync | None:
        """A sync for the default process group, or ``None`` when there is nothing to sync."""
        world = distributed_world()
        if world <= 1:
            return None
        return cls(int(torch.distributed.get_rank()), world)

    @property
    def lead(self) -> bool:
        """Whether this rank diagnoses and records (rank 0)."""
        return self.rank == LEAD

    # -- the collectives ----------------------------------------------------------------------
    def gather(self, obj: Any, call: str = "gather", steps: int | None = None) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (one ``all_gather_object``).

        Each rank's ``obj`` travels with what it is doing (``call``) and, where the ranks must
        agree on it, its ``guard.step`` count (``steps``). A rank closing while another flushes,
        or flushing after another number of steps, is then seen by every rank in the same
        gather, and every rank raises the same ``RuntimeError`` at once instead of waiting in
        mismatched collectives until the process group times out.
        """
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, (call, steps, obj))
        heads = [(c, n) for c, n, _ in out]
        if any(c != call for c, _ in heads) or (
            steps is not None and any(n != steps for _, n in heads)
        ):
            raise RuntimeError(_out_of_step(heads))
        return [o for _, _, o in out]

    def from_lead(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (one ``broadcast_object_list``); rank 0 keeps its own."""
        box = [obj if self.lead else None]
        torch.distributed.broadcast_object_list(box, src=LEAD)
        return obj if self.lead else box[0]

    def lead_decides(self, decide: Callable[[], Any]) -> Any:
        """``decide()`` run on rank 0 only, its result on every rank (one broadcast).

        When it raises on rank 0, rank 0 still broadcasts (the error's text), so every rank
        raises instead of the others waiting in the broadcast until the process group times out.
        """
        if not self.lead:
            status, value = self.from_lead(None)
            if status == "error":
                raise RuntimeError(f"unstuck: rank 0 failed while deciding: {value}")
            return value
        try:
            value = decide()
        except BaseException as exc:
            self.from_lead(("error", f"{type(exc).__name__}: {exc}"))
            raise
        self.from_lead(("ok", value))
        return value

    # -- what the Guard asks for --------------------------------------------------------------
    def merge_frame(self, frame: Frame, reductions: Mapping[str, Reduction]) -> None:
        """Combine the frame's series across ranks as their taps declare (``Tap.reduction``):
        ``mean`` series averaged step by step, ``lead`` ones replaced by rank 0's.

        One gather per flush. Every rank must have recorded a ``mean`` series for the same
        steps (``guard.step`` on every rank); otherwise every rank raises the same
        ``RuntimeError`` (none is left waiting). A non-finite count of an averaged series
        (``nonfinite_loss``) is counted again on the mean, not averaged.
        """
        signals = frame.signals
        counts = {
            name
            for name, how in reductions.items()
            if how == "mean"
            and name.startswith(NONFINITE)
            and reductions.get(name[len(NONFINITE) :]) == "mean"
        }
        wire = [name for name in reductions if name not in counts]
        mine = {name: _on_wire(signals.get(name), reductions[name]) for name in wire}
        ranks = self.gather(mine, "flush", frame.step)
        for name in wire:
            values = [r[name] for r in ranks]
            if reductions[name] == "lead":
                if values[LEAD] is None:
                    signals.pop(name, None)
                else:
                    signals[name] = values[LEAD]
                continue
            merged = _mean_series(values)
            if merged is None:
                continue
            signals[name] = merged
            if NONFINITE + name in counts:
                bad = sum(1 for v in merged.values if not math.isfinite(v))
                signals[NONFINITE + name] = Series(merged.steps[-1:], [float(bad)])

    def check_in(self, call: str, steps: int) -> None:
        """The first collective of every flush and close: what each rank is doing and after
        how many ``guard.step`` calls (a few bytes, once per flush). A rank that stepped more
        or less than the others, or closes while they flush, makes every rank raise the same
        ``RuntimeError`` here, before any collective whose shapes could disagree."""
        self.gather(None, call, int(steps))

    def mean_value(self, step: int, value: float) -> tuple[int, float]:
        """A validation loss: rank 0's step, the mean of every rank's value."""
        ranks = self.gather((int(step), float(value)), "validate")
        return int(ranks[LEAD][0]), _mean([float(v) for _, v in ranks])

    def mean_scores(self, scores: list[float] | None) -> list[float] | None:
        """Probe-set scores: the per-batch mean over ranks when every rank scored as many
        batches (each scored its own kept batches); otherwise rank 0's."""
        ranks = self.gather(None if scores is None else [float(s) for s in scores], "scores")
        first = ranks[LEAD]
        if first is None or any(r is None or len(r) != len(first) for r in ranks):
            return None if first is None else list(first)
        return [_mean(list(column)) for column in zip(*ranks)]


class WindowReader:
    """Reads a Guard's window from its hub: under torch.distributed every rank checks in first
    (ranks that flushed different steps raise on every rank) and the frame is merged as the taps
    declare; a misuse that would leave the run half watched is said once."""

    def __init__(
        self, hub: SignalHub, sync: RankSync | None, lead: bool, accumulation: Any
    ) -> None:
        self.hub = hub
        self.sync = sync
        self.lead = lead
        self.accumulation = accumulation  # its ``steps``: guard.step calls per optimizer step
        self._late_dist_warned = False
        self._no_step_warned = False

    def read(self) -> Frame:
        if self.sync is not None:
            self.sync.check_in("flush", self.hub.step)  # before the hub's own collectives
        frame = self.hub.flush()
        if self.sync is not None:
            # as the taps declare: the mean loss over ranks, rank 0's detector inputs
            self.sync.merge_frame(frame, self.hub.reductions())
        elif not self._late_dist_warned and distributed_world() > 1:
            self._late_dist_warned = True
            _logger.warning(
                "unstuck: torch.distributed was initialised after this Guard was built, so its "
                "ranks decide on their own losses; build the Guard after init_process_group"
            )
        self._warn_if_no_optimizer_step()
        return frame

    def _warn_if_no_optimizer_step(self) -> None:
        """Every signal but the loss comes from the optimizer's step hooks: a loop that never
        steps this optimizer (or steps another one) is watched half blind, so say so once."""
        hub = self.hub
        if self._no_step_warned or hub.opt_steps or hub.step < self.accumulation.steps:
            return
        self._no_step_warned = True
        if self.lead:
            _logger.warning(
                "unstuck: no optimizer.step() seen in %d guard.step calls; call "
                "optimizer.step() before guard.step(loss), on the optimizer the Guard was "
                "built with",
                hub.step,
            )
