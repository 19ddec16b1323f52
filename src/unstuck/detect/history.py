"""A bounded summary of a growing series: bins of consecutive points whose width doubles.

A detector that must work on a 300-step run logged every step, a 1M-step run and a 40-row epoch
CSV cannot use a fixed window in points. ``BinnedSeries`` keeps between ``capacity`` and
``2·capacity`` closed bins over the *whole* history: each bin holds the same number of points,
and when the bins fill up, neighbours merge pairwise and the width doubles. Every window the
detector tests is then a number of bins, i.e. a fraction of the run, at any length and any
logging cadence, in bounded memory, and each bin mean is a batch mean (its noise shrinks with
the width, which is what makes the trend test's residuals close to independent).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BinnedSeries"]

_FIELDS = ("count", "first", "last", "sum_x", "sum_y", "sum_yy")


class BinnedSeries:
    """Streaming bins of (step, value) points with sums for means and within-bin variance."""

    def __init__(self, capacity: int = 128) -> None:
        if capacity < 4:
            raise ValueError(f"capacity must be at least 4, got {capacity!r}")
        self.capacity = capacity
        self.width = 1
        self.total = 0
        self._closed: dict[str, list[float]] = {f: [] for f in _FIELDS}
        self._open: list[float] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]

    def __len__(self) -> int:
        return len(self._closed["count"])

    def add(self, step: float, value: float) -> bool:
        """Add one point; returns ``True`` when it closed a bin."""
        o = self._open
        if o[0] == 0:
            o[1] = step
        o[0] += 1
        o[2] = step
        o[3] += step
        o[4] += value
        o[5] += value * value
        self.total += 1
        if o[0] < self.width:
            return False
        for name, v in zip(_FIELDS, o):
            self._closed[name].append(v)
        self._open = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        if len(self) >= 2 * self.capacity:
            self._merge()
        return True

    def _merge(self) -> None:
        c = self._closed
        n = len(self) // 2 * 2
        merged: dict[str, list[float]] = {}
        for name in ("count", "sum_x", "sum_y", "sum_yy"):
            arr = np.asarray(c[name][:n])
            merged[name] = (arr[0::2] + arr[1::2]).tolist()
        merged["first"] = c["first"][:n:2]
        merged["last"] = c["last"][1:n:2]
        self._closed = {f: merged[f] for f in _FIELDS}
        self.width *= 2

    def arrays(self) -> dict[str, np.ndarray]:
        """Closed bins as arrays: ``x`` (mean step), ``y`` (mean value), ``var`` (within-bin)."""
        c = {k: np.asarray(v, dtype=float) for k, v in self._closed.items()}
        count = c["count"]
        if count.size == 0:
            empty = np.zeros(0)
            return {
                "x": empty,
                "y": empty,
                "var": empty,
                "count": empty,
                "first": empty,
                "last": empty,
            }
        mean = c["sum_y"] / count
        var = np.maximum(c["sum_yy"] / count - mean * mean, 0.0)
        return {
            "x": c["sum_x"] / count,
            "y": mean,
            "var": var,
            "count": count,
            "first": c["first"],
            "last": c["last"],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "width": self.width,
            "total": self.total,
            "closed": {k: list(v) for k, v in self._closed.items()},
            "open": list(self._open),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.width = int(state["width"])
        self.total = int(state["total"])
        self._closed = {k: [float(x) for x in state["closed"][k]] for k in _FIELDS}
        self._open = [float(x) for x in state["open"]]
