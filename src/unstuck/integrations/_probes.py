"""The batches a Guard keeps for its probes, and what it measures on them.

The latest kept batch feeds the curvature probe (once per stall of the training loss); the last
few score branch trials, all on the same batches, in eval mode and without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from unstuck.core import Monitor
from unstuck.signals import CurvatureProbe
from unstuck.types import FLAT_STATES, Plateau, primitive

__all__ = ["PROBE_KEEP_EVERY", "ProbeSet"]

PROBE_KEEP_EVERY = 64  # steps between refreshes of a kept probe batch (a clone of one batch)


class ProbeSet:
    """Kept batches (cloned by the caller), the curvature probe, and branch-trial scores.

    Args:
        model: the module itself (not a DDP wrapper: a probe's forwards must not be
            collectives).
        params: the parameters the optimizer steps (the curvature is measured over them).
        loss_fn: ``loss_fn(model(inputs), targets)`` on a kept ``(inputs, targets)`` batch.
        probe_fn: ``probe_fn(model) -> loss`` on data of the user's choice; wins over
            ``loss_fn``.
        max_hvps: Hessian-vector products per curvature probe.
        keep: batches kept to score branch trials on.
        scores_branches: whether the policy can run branch trials (else one batch is kept).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        params: list[torch.Tensor],
        *,
        loss_fn: Callable[..., Any] | None,
        probe_fn: Callable[..., Any] | None,
        max_hvps: int,
        keep: int,
        scores_branches: bool,
    ) -> None:
        self.model = model
        self.curvature = CurvatureProbe(
            model, params, loss_fn=loss_fn, probe_fn=probe_fn, max_hvps=max_hvps
        )
        self._loss_fn = loss_fn
        self._probe_fn = probe_fn
        self._keep = keep
        self._scores_branches = scores_branches and loss_fn is not None and probe_fn is None
        self.latest: Any = None  # the latest kept batch (the curvature probe reads it)
        self.kept: list[Any] = []  # the probe set branch trials are scored on
        self._measured_for: int | None = None  # start step of the stall last measured

    def wants(self, step: int, probing: bool) -> bool:
        """Whether to clone this step's batch: on the refresh cadence, when something reads
        it, and never during a probe (branches are scored on one fixed set)."""
        return (
            step % PROBE_KEEP_EVERY == 0
            and not probing
            and (self.curvature.needs_batch or self._scores_branches)
        )

    def keep(self, batch: Any) -> None:
        self.latest = batch
        if self._scores_branches:
            self.kept = [*self.kept, batch][-self._keep :]

    def curvature_at(
        self, state: str, plateau: Plateau | None
    ) -> tuple[bool, dict[str, Any] | None]:
        """Measure the curvature once per stall of the training loss; forget it when the stall
        ends. Returns ``(changed, reading)``: ``reading`` is ``None`` when it was forgotten.

        A stall is a plateau, or hidden progress: a saddle escape looks like hidden progress
        (the weights grow out of it slowly), so the curvature is measured there too.
        """
        if state not in FLAT_STATES:
            if self._measured_for is None:
                return False, None
            self._measured_for = None
            return True, None
        key = plateau.start if plateau is not None else -1
        if self._measured_for == key:
            return False, None
        self._measured_for = key
        result = self.curvature.run(self.latest)
        result["plateau_start"] = plateau.start if plateau is not None else None
        return True, result

    def measure_curvature(self, step: int, state: str, series: str, monitor: Monitor) -> None:
        """Before the rules run: the curvature of a new training-loss stall into the evidence
        (and the store, dated at the decision it informs, so a replay reads it there too)."""
        if series != "train":
            return
        changed, reading = self.curvature_at(state, monitor.detectors["train"].current)
        if not changed:
            return
        monitor.set_fact("curvature", reading)
        if reading is not None:
            monitor.record_event("probe", step, {"probe": "curvature", **primitive(reading)})

    def scores(self) -> list[float] | None:
        """The loss on the kept probe set (or ``probe_fn``), in eval mode, without gradients.

        Branch trials compare remedies on these same batches. Eval mode keeps BatchNorm
        statistics and dropout out of the score; every module's mode is put back after.
        """
        if self._probe_fn is None and (self._loss_fn is None or not self.kept):
            return None
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                if self._probe_fn is not None:
                    values = [self._probe_fn(self.model)]
                else:
                    assert self._loss_fn is not None
                    values = [self._loss_fn(self.model(b[0]), b[1]) for b in self.kept]
        finally:
            for module, mode in modes:
                module.training = mode
        return [float(torch.as_tensor(v).detach().float().mean()) for v in values]
