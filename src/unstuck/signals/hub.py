"""The signal hub: wires the taps to the optimizer's step hooks and flushes them in one transfer.

Hot path (every step): each tap appends device tensors or Python numbers to its own lists.
Flush (every ``flush_every`` steps): every tap's tensors are packed into one flat buffer per
device and moved to the host with a single ``.cpu()`` — the only host sync unstuck makes.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unstuck.signals.base import Packet, Reduction, StepContext, Tap, early_step
from unstuck.signals.host import Frame

__all__ = ["Frame", "SignalHub", "optimizer_parameters"]

logger = logging.getLogger("unstuck")


def optimizer_parameters(
    model: torch.nn.Module | None, optimizer: torch.optim.Optimizer
) -> tuple[list[torch.Tensor], list[str], list[int]]:
    """The optimizer's parameters in a fixed order, their model names and their group index."""
    names_by_id: dict[int, str] = {}
    if model is not None:
        names_by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    params: list[torch.Tensor] = []
    names: list[str] = []
    groups: list[int] = []
    seen: set[int] = set()
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            if id(p) in seen:
                continue
            seen.add(id(p))
            params.append(p)
            names.append(names_by_id.get(id(p), f"group{g}.param{i}"))
            groups.append(g)
    return params, names, groups


class _Schedule:
    """Which taps are due at each optimizer step, listed once over a period of their cadences:
    a step then calls only its due taps (on most steps the every-step ones), without one
    modulo per tap per step. Cadences whose period is too long are checked each step."""

    MAX_PERIOD = 4096  # the defaults' period is 64; a custom cadence may make it longer

    def __init__(self, taps: Sequence[Tap]) -> None:
        self.taps = list(taps)
        period = 1
        for tap in self.taps:
            period = math.lcm(period, max(int(tap.every), 1))
        self.due: list[list[Tap]] | None = None
        self.period = period
        if period <= self.MAX_PERIOD:
            self.due = [[t for t in self.taps if n % t.every == 0] for n in range(period)]
        # The first steps, where taps with ``early_samples`` also read the powers of two
        # before their first regular sample (``early_step``).
        first = max((int(t.every) for t in self.taps if t.early_samples), default=0)
        self.early = [
            [
                t
                for t in self.taps
                if n % t.every == 0 or (t.early_samples and early_step(n, int(t.every)))
            ]
            for n in range(first)
        ]

    def at(self, n: int) -> list[Tap]:
        if n < len(self.early):
            return self.early[n]
        if self.due is not None:
            return self.due[n % self.period]
        return [t for t in self.taps if n % t.every == 0]


class SignalHub:
    """Owns the taps and the optimizer hooks; produces a :class:`Frame` at each flush."""

    def __init__(
        self,
        model: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer,
        taps: list[Tap],
    ) -> None:
        params, names, groups = optimizer_parameters(model, optimizer)
        self.ctx = StepContext(
            params=params, names=names, group_index=groups, optimizer=optimizer, model=model
        )
        self.taps = taps
        self.step = 0  # Guard steps seen (calls to on_loss)
        self.opt_steps = 0  # optimizer steps seen through the hooks
        # A step the loop takes but asked to skip (a rewind's skip under a framework that cannot
        # leave a batch out): its hooks read nothing and count nothing, as a skipped batch in a
        # plain loop never reaches optimizer.step().
        self.hidden = False
        for tap in taps:
            tap.bind(self.ctx)
        self._pre_taps = [t for t in taps if type(t).on_pre_step is not Tap.on_pre_step]
        self._post_taps = [t for t in taps if type(t).on_post_step is not Tap.on_post_step]
        self._loss_taps = [t for t in taps if type(t).on_loss is not Tap.on_loss]
        self._manual_taps: list[Tap] = []  # pre-step taps run by read_gradients instead
        self._pre_due = _Schedule(self._pre_taps)
        self._post_due = _Schedule(self._post_taps)
        self._manual_due = _Schedule([])
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]

    # -- hooks (hot path) -------------------------------------------------------------------
    def _pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self.hidden:
            self._run_pre_taps(self._pre_due)

    def read_gradients_manually(self) -> None:
        """Take the gradient-reading pre-step taps out of the step pre-hook: the caller runs
        them with :meth:`read_gradients` once the gradients are final. Taps that declare
        ``in_step_hook`` (the LR) stay in the hook, where their order among hooks matters."""
        if self._manual_taps:
            return
        self._manual_taps = [t for t in self._pre_taps if not t.in_step_hook]
        self._pre_taps = [t for t in self._pre_taps if t.in_step_hook]
        self._pre_due, self._manual_due = _Schedule(self._pre_taps), _Schedule(self._manual_taps)

    def read_gradients(self) -> None:
        """Run the taps :meth:`read_gradients_manually` took out of the pre-hook, with the same
        sampling and step numbers the pre-hook would have given them."""
        if not self.hidden:
            self._run_pre_taps(self._manual_due)

    def _run_pre_taps(self, schedule: _Schedule) -> None:
        n = self.opt_steps
        for tap in schedule.at(n):
            tap.current_step = self.step  # type: ignore[attr-defined]
            tap.on_pre_step(self.ctx, n)

    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.hidden:
            return
        n = self.opt_steps
        for tap in self._post_due.at(n):
            tap.current_step = self.step  # type: ignore[attr-defined]
            tap.on_post_step(self.ctx, n)
        self.opt_steps = self.ctx.opt_steps = n + 1

    def on_loss(
        self, loss: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor | None
    ) -> None:
        for tap in self._loss_taps:
            tap.on_loss(self.step, loss, ids, targets)
        self.step = self.ctx.steps = self.step + 1

    # -- flush ------------------------------------------------------------------------------
    def flush(self) -> Frame:
        """Collect every tap, move all device values to the host at once, and finish them."""
        for tap in self.taps:
            if hasattr(tap, "current_step"):
                tap.current_step = max(self.step - 1, 0)
        packets: list[Packet] = [tap.collect() for tap in self.taps]
        by_device: dict[torch.device, list[tuple[int, str, torch.Tensor]]] = defaultdict(list)
        for k, packet in enumerate(packets):
            for name, tensor in packet.tensors.items():
                by_device[tensor.device].append((k, name, tensor))
        for entries in by_device.values():
            # float32 on the wire, unless a value is float64 (a loss of 1e308 is finite and
            # must not arrive as inf): then the device's whole buffer goes as float64.
            wide = any(t.dtype == torch.float64 for _, _, t in entries)
            dtype = torch.float64 if wide else torch.float32
            flat = torch.cat([t.detach().reshape(-1).to(dtype) for _, _, t in entries])
            host = flat.cpu().numpy().astype(np.float64)  # the one transfer per device
            offset = 0
            for k, name, tensor in entries:
                n = tensor.numel()
                packets[k].host[name] = host[offset : offset + n].tolist()
                offset += n
        frame = Frame(step=self.step)
        for tap, packet in zip(self.taps, packets):
            frame.signals.update(tap.finish(packet.host))
        return frame

    def reductions(self) -> dict[str, Reduction]:
        """The series ranks combine at a flush, each with its tap's ``reduction`` (the
        ``local`` ones stay off the wire)."""
        return {
            name: tap.reduction
            for tap in self.taps
            if tap.reduction != "local"
            for name in sorted(tap.provides)
        }

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for tap in self.taps:
            tap.close()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "opt_steps": self.opt_steps,
            "undone_opt_steps": self.ctx.undone_opt_steps,
            "taps": {tap.name: tap.state_dict() for tap in self.taps},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = self.ctx.steps = int(state.get("step", 0))
        self.opt_steps = self.ctx.opt_steps = int(state.get("opt_steps", 0))
        self.ctx.undone_opt_steps = int(state.get("undone_opt_steps", 0))
        for tap in self.taps:
            tap.load_state_dict(state.get("taps", {}).get(tap.name, {}))
