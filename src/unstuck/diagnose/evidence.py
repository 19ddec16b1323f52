"""Evidence: the host-side history that diagnosis rules read, built from signal frames.

Rules never see the model; they see this mapping of named numbers, so each rule can be tested on
hand-built evidence. The names a rule may require are listed in ``docs/signals.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from unstuck.signals.host import Frame, Series

__all__ = [
    "FACTS",
    "HISTORY_POINTS",
    "Evidence",
    "EvidenceBuilder",
    "EvidenceView",
    "derived_names",
]

HISTORY_POINTS = 4096  # points kept per series: enough for the longest detector window we use
INITIAL_POINTS = 8  # finite points whose median is a run's starting level (``loss_initial``)
# Series whose starting level is kept for good as ``<name>_initial``: how far the loss has
# fallen (converged vs capacity limit).
INITIAL_OF = ("loss",)
# Series whose largest per-batch median is kept for good as ``<name>_peak``: how far the
# gradient has shrunk since its largest (lr_too_low's small steps may be a minimum's).
PEAK_OF = ("grad_norm",)
# Per-tensor gradient norms at the start of the run (median of the first frame's rows), kept for
# good like ``loss_initial``: a gradient that was healthy at the start and collapsed later is a
# symptom of something that happened in training (dying units, saturation), not of the
# architecture (``vanishing_gradients``).
PER_TENSOR_GRAD = "grad_norm_per_tensor"
PER_TENSOR_GRAD_INITIAL = PER_TENSOR_GRAD + "_initial"
# Names the evidence holds besides the taps' signals: facts a front-end sets once (what the
# model and optimizer are), at each decision (the detector's verdict, unstuck's own LR factor
# and momentum) or when measured (validation, the curvature probe). With the names the taps
# provide and those derived from them (``derived_names``), they are every name a rule may
# require: the conformance test checks each rule's ``requires`` against them.
FACTS = frozenset(
    {
        "param_names",
        "param_ndims",
        "post_norm_transformer_layers",
        "optimizer_type",
        "optimizer_beta2",
        "optimizer_momentum",
        "params_not_in_optimizer",
        "params_frozen",
        "params_frozen_share",
        "params_frozen_untrained",
        "params_frozen_untrained_share",
        "curvature",
        "lr_multiplier",
        "val_loss",
        "detector_state",
        "detector_series",
        "detector_stats",
    }
)


def derived_names(provided: frozenset[str]) -> frozenset[str]:
    """The names :class:`EvidenceBuilder` derives from the series in ``provided`` and keeps for
    good: starting levels, peaks, the first per-tensor gradient row, non-finite totals."""
    out = {f"{n}_initial" for n in INITIAL_OF if n in provided}
    out |= {f"{n}_peak" for n in PEAK_OF if n in provided}
    out |= {f"{n}_total" for n in provided if n.startswith("nonfinite_")}
    if PER_TENSOR_GRAD in provided:
        out.add(PER_TENSOR_GRAD_INITIAL)
    return frozenset(out)


class Evidence(Mapping[str, Any]):
    """A read-only mapping of signal names to values, with helpers for series.

    Series are stored as ``(steps, values)`` pairs of numpy arrays; everything else as is.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, *, step: int = 0) -> None:
        self._data = dict(data or {})
        self.step = step

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def values_of(self, name: str) -> np.ndarray:
        """The values of a series as a float array (empty if absent)."""
        entry = self._data.get(name)
        if entry is None:
            return np.zeros(0)
        if isinstance(entry, tuple):
            return np.asarray(entry[1], dtype=np.float64)
        return np.asarray(entry, dtype=np.float64)

    def steps_of(self, name: str) -> np.ndarray:
        entry = self._data.get(name)
        if isinstance(entry, tuple):
            return np.asarray(entry[0], dtype=np.int64)
        return np.zeros(0, dtype=np.int64)


class _Series:
    """A bounded (steps, values) history, kept as read-only numpy arrays.

    Rules read every series at every decision, so the arrays are what is stored; extending one
    concatenates in C instead of converting a Python list of up to ``capacity`` points.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._steps = np.zeros(0, dtype=np.int64)
        self._values = np.zeros(0, dtype=np.float64)

    def extend(self, steps: list[int], values: list[float]) -> None:
        new_steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        new_values = np.asarray(values, dtype=np.float64).reshape(-1)
        self._steps = np.concatenate([self._steps, new_steps])[-self.capacity :]
        self._values = np.concatenate([self._values, new_values])[-self.capacity :]
        self._steps.flags.writeable = False
        self._values.flags.writeable = False

    def truncate_after(self, step: int) -> None:
        keep = self._steps <= step
        if not keep.all():
            self._steps, self._values = self._steps[keep], self._values[keep]
            self._steps.flags.writeable = False
            self._values.flags.writeable = False

    @property
    def steps(self) -> list[int]:
        return [int(s) for s in self._steps]

    @property
    def values(self) -> list[float]:
        return [float(v) for v in self._values]

    def __len__(self) -> int:
        return int(self._steps.size)

    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        return self._steps, self._values


class EvidenceBuilder:
    """Accumulates frames into bounded histories and snapshots them as :class:`Evidence`."""

    def __init__(self, capacity: int = HISTORY_POINTS) -> None:
        self.capacity = capacity
        self._series: dict[str, _Series] = {}
        self._latest: dict[str, Any] = {}
        self._totals: dict[str, float] = {}
        self._heads: dict[str, list[float]] = {name: [] for name in INITIAL_OF}

    def add_series(self, name: str, steps: list[int], values: list[float]) -> None:
        self._series.setdefault(name, _Series(self.capacity)).extend(steps, values)
        if name in self._heads and name + "_initial" not in self._latest:
            self._note_initial(name, values)
        if name in PEAK_OF:
            finite = [v for v in values if np.isfinite(v)]
            if finite:
                peak = max(float(np.median(finite)), self._latest.get(name + "_peak", 0.0))
                self._latest[name + "_peak"] = peak

    def _note_initial(self, name: str, values: list[float]) -> None:
        # The level the run started from, kept for good: the bounded history forgets it.
        head = self._heads[name]
        head.extend(v for v in values if np.isfinite(v))
        if len(head) >= INITIAL_POINTS:
            self._latest[name + "_initial"] = float(np.median(head[:INITIAL_POINTS]))

    def set(self, name: str, value: Any) -> None:
        """Record a non-series value (latest wins)."""
        self._latest[name] = value

    def add_frame(self, frame: Frame) -> None:
        for name, value in frame.signals.items():
            if name.startswith("nonfinite_"):
                total = self._totals.get(name, 0.0) + float(sum(value[1]))
                self._totals[name] = total
                self._latest[name + "_total"] = total
            if isinstance(value, Series):
                self.add_series(name, value.steps, value.values)
            else:
                self._latest[name] = value
                if name == PER_TENSOR_GRAD:
                    self._note_initial_row(value)

    def _note_initial_row(self, value: Any) -> None:
        if PER_TENSOR_GRAD_INITIAL in self._latest:
            return
        rows = np.asarray(value, dtype=np.float64)
        if rows.size == 0:
            return
        row = np.median(rows, axis=0) if rows.ndim == 2 else rows
        if np.all(np.isfinite(row)):
            self._latest[PER_TENSOR_GRAD_INITIAL] = [float(v) for v in row]

    def forget_after(self, step: int) -> None:
        """Drop every series point past ``step``: a restore to a snapshot taken at ``step``
        undid those steps, so rules and verdicts must not read them as the run's present (a
        rolled-back action's NaN losses, a range test's sweep). Totals stay: they count what
        happened, and the run store keeps every point."""
        for series in self._series.values():
            series.truncate_after(step)

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One recorded series as read-only ``(steps, values)`` arrays (empty if never seen)."""
        found = self._series.get(name)
        if found is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return found.pair()

    def build(self, step: int, extra: Mapping[str, Any] | None = None) -> Evidence:
        data: dict[str, Any] = {name: s.pair() for name, s in self._series.items() if len(s)}
        data.update(self._latest)
        if extra:
            data.update(extra)
        return Evidence(data, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "series": {n: [list(s.steps), list(s.values)] for n, s in self._series.items()},
            "totals": dict(self._totals),
            **{f"{n}_initial": self._latest.get(f"{n}_initial") for n in INITIAL_OF},
            **{f"{n}_peak": self._latest.get(f"{n}_peak") for n in PEAK_OF},
            PER_TENSOR_GRAD_INITIAL: self._latest.get(PER_TENSOR_GRAD_INITIAL),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._series = {}
        for key in [f"{n}_initial" for n in INITIAL_OF] + [f"{n}_peak" for n in PEAK_OF]:
            value = state.get(key)
            if value is not None:
                self._latest[key] = float(value)
        initial_row = state.get(PER_TENSOR_GRAD_INITIAL)
        if initial_row is not None:
            self._latest[PER_TENSOR_GRAD_INITIAL] = [float(v) for v in initial_row]
        for name, (steps, values) in state.get("series", {}).items():
            self.add_series(name, list(steps), list(values))
        self._totals = {k: float(v) for k, v in state.get("totals", {}).items()}
        for name, total in self._totals.items():
            self._latest[name + "_total"] = total


class EvidenceView:
    """What a front-end may read of a run's evidence, and nothing it could change.

    The Guard's ``evidence`` property hands this out: callers (tests, notebooks, front-ends)
    read series and build snapshots, while adding a point stays the pipeline's job.
    """

    __slots__ = ("_builder",)

    def __init__(self, builder: EvidenceBuilder) -> None:
        self._builder = builder

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One recorded series as read-only ``(steps, values)`` arrays (empty if never seen)."""
        return self._builder.series(name)

    def build(self, step: int) -> Evidence:
        """What the rules would read at ``step`` (without the decision's own extras)."""
        return self._builder.build(step)
