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

# Per bin: points, first/last step, sums of step, value, value², and for the lag-1
# autocorrelation inside the bin (swings faster than a bin), the first and last value and the
# sum of products of consecutive values.
_FIELDS = ("count", "first", "last", "sum_x", "sum_y", "sum_yy", "y_first", "y_last", "sum_lag")
_EMPTY = (0.0,) * len(_FIELDS)


class BinnedSeries:
    """Streaming bins of (step, value) points with sums for means and within-bin variance."""

    def __init__(self, capacity: int = 128) -> None:
        if capacity < 4:
            raise ValueError(f"capacity must be at least 4, got {capacity!r}")
        self.capacity = capacity
        self.width = 1
        self.total = 0
        self._closed: dict[str, list[float]] = {f: [] for f in _FIELDS}
        self._open: list[float] = list(_EMPTY)

    def __len__(self) -> int:
        return len(self._closed["count"])

    def add(self, step: float, value: float) -> bool:
        """Add one point; returns ``True`` when it closed a bin."""
        o = self._open
        if o[0] == 0:
            o[1] = step
            o[6] = value
        else:
            o[8] += o[7] * value
        o[0] += 1
        o[2] = step
        o[3] += step
        o[4] += value
        o[5] += value * value
        o[7] = value
        self.total += 1
        if o[0] < self.width:
            return False
        for name, v in zip(_FIELDS, o):
            self._closed[name].append(v)
        self._open = list(_EMPTY)
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
        merged["y_first"] = c["y_first"][:n:2]
        merged["y_last"] = c["y_last"][1:n:2]
        lag = np.asarray(c["sum_lag"][:n])
        boundary = np.asarray(c["y_last"][:n:2]) * np.asarray(c["y_first"][1:n:2])
        merged["sum_lag"] = (lag[0::2] + lag[1::2] + boundary).tolist()
        self._closed = {f: merged[f] for f in _FIELDS}
        self.width *= 2

    def arrays(self) -> dict[str, np.ndarray]:
        """Closed bins as arrays: ``x`` (mean step), ``y`` (mean value), ``var`` (within-bin)."""
        c = {k: np.asarray(v, dtype=float) for k, v in self._closed.items()}
        count = c["count"]
        if count.size == 0:
            empty = np.zeros(0)
            return {k: empty for k in ("x", "y", "var", "lag_cov", "count", "first", "last")}
        mean = c["sum_y"] / count
        var = np.maximum(c["sum_yy"] / count - mean * mean, 0.0)
        # Σ over consecutive pairs of (y_t − m)(y_{t−1} − m), divided by the pairs (0 for 1 point)
        pairs = count - 1
        lag_sum = (
            c["sum_lag"]
            - mean * (c["sum_y"] - c["y_first"])
            - mean * (c["sum_y"] - c["y_last"])
            + pairs * mean * mean
        )
        lag_cov = np.where(pairs > 0, lag_sum / np.maximum(pairs, 1), 0.0)
        return {
            "x": c["sum_x"] / count,
            "y": mean,
            "var": var,
            "lag_cov": lag_cov,
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
