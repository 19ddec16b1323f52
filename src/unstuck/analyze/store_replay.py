"""Replaying a Guard's run store as the live run decided: its cadence and the facts its rules read.

A live Guard decides once per flush, on a detector fed the flush's points together, with
evidence that holds facts no log has (parameter names and shapes, the optimizer, the curvature
measured at a stall, the per-layer gradient norms). Its store records them
(``unstuck.record.rundata``: ``facts`` in the metadata, one ``lr_multiplier`` row per flush,
``optimizer_momentum``, the per-tensor ``grad_norm/<name>`` series and the ``curvature`` probe
events), so ``unstuck analyze RUN_DIR`` replays the train detector at the flush steps and
rebuilds that evidence at each one: the same store gives the same diagnosis live and offline.

Only a store whose actions were all kept replays exactly: a rollback put the live detector back
to its snapshot while the store keeps every point it undid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from unstuck.diagnose.evidence import PER_TENSOR_GRAD, PER_TENSOR_GRAD_INITIAL
from unstuck.record.rundata import (
    DETECTOR_OPTIONS_KEY,
    FLUSH_SERIES,
    MOMENTUM_SERIES,
    RUN_FACTS_KEY,
    RunData,
)
from unstuck.types import FLAT_STATES, Plateau

__all__ = ["StoreReplay", "store_replay"]

PER_TENSOR_PREFIX = "grad_norm/"  # the Guard's per-tensor gradient norms, one mean per flush
# Series that stand for a per-flush scalar the live rules read as a number, not as a series.
SCALAR_SERIES = (FLUSH_SERIES, MOMENTUM_SERIES)


def _latest(pair: tuple[np.ndarray, np.ndarray] | None, step: int) -> float | None:
    if pair is None:
        return None
    k = int(np.searchsorted(pair[0], step, side="right"))
    return float(pair[1][k - 1]) if k else None


class StoreReplay:
    """The flush steps of a Guard's store and the evidence its rules read at each."""

    def __init__(self, run: RunData, facts: Mapping[str, Any], flushes: np.ndarray) -> None:
        self.run = run
        self.facts = dict(facts)
        self.flushes = flushes
        names = [str(n) for n in self.facts.get("param_names") or []]
        self._per_tensor = [run.series.get(PER_TENSOR_PREFIX + n) for n in names]
        self._curvature = [
            p for p in run.probes if p.get("probe") == "curvature" and isinstance(p, dict)
        ]
        self.rolled_back = any(a.outcome == "rolled_back" for a in run.actions)
        options = run.meta.get(DETECTOR_OPTIONS_KEY)
        # The options the live detectors ran with (the user's, and the weights' own size that
        # scales hidden progress), so the replayed detector decides as they did.
        self.detector_options: dict[str, Any] = dict(options) if isinstance(options, dict) else {}

    def chunks(self, steps: np.ndarray) -> list[slice]:
        """The points each flush fed the detector (a killed run's tail is one more chunk)."""
        ends = np.searchsorted(steps, self.flushes, side="right")
        out, start = [], 0
        for end in [*ends.tolist(), int(steps.size)]:
            if end > start:
                out.append(slice(start, end))
                start = end
        return out

    def evidence_series(
        self, series: Mapping[str, tuple[np.ndarray, np.ndarray]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The recorded series the rules read as series (not the per-flush scalars)."""
        return {n: s for n, s in series.items() if n not in SCALAR_SERIES}

    def extras(self, step: int, state: str, plateau: Plateau | None) -> dict[str, Any]:
        """The non-series evidence the live Guard's rules read at the flush at ``step``."""
        out: dict[str, Any] = dict(self.facts)
        multiplier = _latest(self.run.series.get(FLUSH_SERIES), step)
        out["lr_multiplier"] = 1.0 if multiplier is None else multiplier
        out["optimizer_momentum"] = _latest(self.run.series.get(MOMENTUM_SERIES), step)
        row = self._per_tensor_row(step)
        if row is not None:
            out[PER_TENSOR_GRAD] = np.asarray([row])
        first = self._per_tensor_row(None)
        if first is not None:
            out[PER_TENSOR_GRAD_INITIAL] = first
        curvature = self._curvature_at(step, state, plateau)
        if curvature is not None:
            out["curvature"] = curvature
        return out

    def reachable(self, step: int) -> dict[str, Any]:
        """Every input the replay can give some decision up to ``step``: :meth:`extras` plus the
        curvature of any stall (the live run measured it only while stalled)."""
        out = self.extras(step, "", None)
        if self._curvature:
            out["curvature"] = {
                k: v for k, v in self._curvature[-1].items() if k not in ("probe", "step")
            }
        return out

    def _per_tensor_row(self, step: int | None) -> list[float] | None:
        if not self._per_tensor or any(p is None or not p[0].size for p in self._per_tensor):
            return None
        row = []
        for pair in self._per_tensor:
            assert pair is not None
            if step is None:
                row.append(float(pair[1][0]))
                continue
            value = _latest(pair, step)
            if value is None:
                return None
            row.append(value)
        return row

    def _curvature_at(self, step: int, state: str, plateau: Plateau | None) -> Any:
        """The curvature the live run measured for this stall, once it had measured it."""
        if state not in FLAT_STATES:  # where the Guard measures curvature
            return None
        start = plateau.start if plateau is not None else None
        found = None
        for probe in self._curvature:
            if int(probe.get("step", -1)) <= step and probe.get("plateau_start") == start:
                found = {k: v for k, v in probe.items() if k not in ("probe", "step")}
        return found


def store_replay(run: RunData) -> StoreReplay | None:
    """A replay of ``run`` when it is a Guard's store that recorded its cadence and facts."""
    if run.format != "unstuck":
        return None
    facts = run.meta.get(RUN_FACTS_KEY)
    flushes = run.series.get(FLUSH_SERIES)
    if not isinstance(facts, dict) or flushes is None or not flushes[0].size:
        return None
    return StoreReplay(run, facts, np.unique(flushes[0]))
