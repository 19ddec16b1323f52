"""The LR range test, online: sweep the LR over the run's next steps, read the curve, restore.

Smith (2017) and fastai's ``lr_find`` sweep the LR exponentially on fresh batches and read the
loss against log LR. unstuck runs the sweep on the user's own next steps (it never needs the
data loader): ``apply`` starts an exponential ramp of the LR multiplier, the engine collects the
losses at each flush, stops early on divergence or a non-finite loss, restores the full snapshot
taken before the sweep, and applies the suggested factor as an ``lr_scale`` that is verified
like any other action.

The suggestion (REFERENCE.md §1 and §1b: a range test on a plateau picks erratic LRs, so it needs
a cross-check, a confidence and a fallback):

* the loss is smoothed with a bias-corrected EMA of log loss (fastai, LRFOnPlateau); its
  ``β`` is set so the EMA lags by at most 1/20 of the sweep (a lag of ``β/(1−β)`` points):
  the 0.98 those tools use lags 49 points, three decades of a 100-step six-decade sweep;
* **steepest**: the factor where the smoothed curve falls fastest against log LR, skipping the
  first 10 and last 5 points (LRFOnPlateau's skips);
* **valley**: fastai's rule, the middle of the longest descending stretch of the curve;
* the suggestion is the smaller of the two, and never above a tenth of the factor at which
  the sweep diverged (the classic "an order of magnitude below the blow-up");
* **confident** when the two agree within a decade;
* **flat**: when the smoothed curve never fell by more than the detector's progress margin
  (``DEFAULT_EPSILON`` in log units) the curve says nothing; the fallback is a tenth of the
  divergence factor when the sweep diverged, and otherwise no suggestion (the ladder moves on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from unstuck.detect.detector import DEFAULT_EPSILON
from unstuck.rescue.base import Action, Controls

__all__ = ["LRRangeTest", "RangeSuggestion", "diverged", "suggest", "sweep_factors"]

SKIP_START = 10  # points skipped at the start (LRFOnPlateau): the EMA has not settled
SKIP_END = 5  # and at the end (LRFOnPlateau): the last points are the blow-up
MAX_LAG_SHARE = 1 / 20  # the EMA may lag by this share of the sweep
DIVERGE_FACTOR = 4.0  # smoothed loss above 4× its minimum: diverged (fastai's lr_find)
RAW_POINTS = 3  # the raw-loss stop reads the median of this many latest points
AGREE_DECADES = 1.0  # steepest and valley within a decade: a confident suggestion
BELOW_DIVERGENCE = 10.0  # a suggestion is at least this far below the divergence factor
NEGLIGIBLE_DECADES = 0.15  # |log10 factor| below this is no change worth verifying (×0.7 … ×1.4)


def sweep_factors(low: float, high: float, steps: int) -> np.ndarray:
    """The multiplier factor at each optimizer step of the sweep."""
    return np.asarray(low * (high / low) ** (np.arange(steps) / max(steps - 1, 1)))


def _smoothing(points: int) -> float:
    return max(0.0, 1.0 - 1.0 / max(MAX_LAG_SHARE * points, 1.0))


def _smooth(values: np.ndarray, beta: float) -> np.ndarray:
    out = np.empty_like(values)
    avg = 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1)) if beta > 0 else v
    return out


def diverged(losses: np.ndarray, planned: int) -> bool:
    """Whether the sweep must stop now: a non-finite loss, or the loss at 4× the best smoothed
    loss so far (fastai's ``LRFinder`` stop, ``smooth_loss > 4 * best_loss``).

    Read after every sweep step, from the first one, so the sweep ends while the loss is still
    finite: besides fastai's smoothed test, the median of the last ``RAW_POINTS`` raw losses
    is held to the same 4× (the EMA lags a blow-up that grows by orders of magnitude a step;
    a median of three ignores one noisy batch).
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size == 0:
        return False
    if not np.all(np.isfinite(losses)):
        return True
    if not np.all(losses > 0):
        return False
    smooth = _smooth(np.log(losses), _smoothing(planned))
    best = float(np.min(smooth))
    limit = best + math.log(DIVERGE_FACTOR)
    recent = float(np.median(np.log(losses[-RAW_POINTS:])))
    return bool(smooth[-1] > limit or (losses.size >= RAW_POINTS and recent > limit))


def _valley(curve: np.ndarray) -> int:
    """fastai's valley: the middle of the longest descending subsequence of the curve."""
    n = curve.size
    lds = np.ones(n, dtype=int)
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if curve[i] < curve[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return int(max_start + int(sections) + int(sections / 2))


@dataclass(frozen=True)
class RangeSuggestion:
    """What a sweep suggests: a factor over the pre-sweep multiplier (``None``: no change)."""

    factor: float | None
    method: str  # "agreed", "disagreed", "divergence_fallback", "flat", "too_short", "negligible"
    confident: bool
    steepest: float | None = None
    valley: float | None = None
    diverged_at: float | None = None
    drop: float = 0.0  # fall of the smoothed log loss from its start to its minimum
    curve: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "method": self.method,
            "confident": self.confident,
            "steepest": self.steepest,
            "valley": self.valley,
            "diverged_at": self.diverged_at,
            "drop": self.drop,
            **self.curve,
        }


def suggest(
    factors: np.ndarray, losses: np.ndarray, planned: int, stopped: bool = False
) -> RangeSuggestion:
    """Read a sweep: ``factors[i]`` was the multiplier factor when ``losses[i]`` was measured;
    ``stopped``: the sweep ended early on :func:`diverged` (at its last factor)."""
    factors = np.asarray(factors, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    n = min(factors.size, losses.size)
    factors, losses = factors[:n], losses[:n]
    finite = np.isfinite(losses) & (losses > 0)
    blown = int(np.argmin(finite)) if not finite.all() else n
    diverged_at: float | None = float(factors[blown]) if blown < n else None
    if diverged_at is None and stopped and n:
        diverged_at = float(factors[-1])
    factors, losses = factors[:blown], losses[:blown]
    curve = {"factors": [float(f) for f in factors], "losses": [float(v) for v in losses]}
    if losses.size < SKIP_START + SKIP_END + 3:
        fallback = diverged_at / BELOW_DIVERGENCE if diverged_at is not None else None
        return RangeSuggestion(fallback, "too_short", False, diverged_at=diverged_at, curve=curve)
    smooth = _smooth(np.log(losses), _smoothing(planned))
    curve["smoothed"] = [float(v) for v in smooth]
    low_at = int(np.argmin(smooth))
    if diverged_at is None and smooth[-1] > smooth[low_at] + math.log(DIVERGE_FACTOR):
        above = np.nonzero(smooth[low_at:] > smooth[low_at] + math.log(DIVERGE_FACTOR))[0]
        diverged_at = float(factors[low_at + int(above[0])])
    drop = float(smooth[SKIP_START // 2] - smooth[low_at])
    cap = diverged_at / BELOW_DIVERGENCE if diverged_at is not None else math.inf
    if drop < DEFAULT_EPSILON:
        factor = cap if math.isfinite(cap) else None
        method = "divergence_fallback" if factor is not None else "flat"
        return RangeSuggestion(
            factor, method, False, diverged_at=diverged_at, drop=drop, curve=curve
        )
    log_f = np.log(factors)
    window = slice(SKIP_START, smooth.size - SKIP_END)
    slope = np.gradient(smooth, log_f)[window]
    steepest = float(factors[window][int(np.argmin(slope))])
    valley = float(factors[min(_valley(smooth), factors.size - 1)])
    agreed = abs(math.log10(steepest / valley)) <= AGREE_DECADES
    factor = min(steepest, valley, cap)
    if abs(math.log10(factor)) < NEGLIGIBLE_DECADES:
        return RangeSuggestion(
            None, "negligible", agreed, steepest, valley, diverged_at, drop, curve
        )
    return RangeSuggestion(
        factor,
        "agreed" if agreed else "disagreed",
        agreed,
        steepest,
        valley,
        diverged_at,
        drop,
        curve,
    )


class LRRangeTest(Action):
    """Sweep the LR multiplier exponentially over the next ``steps`` optimizer steps."""

    name: ClassVar[str] = "lr_range_test"
    changes_lr: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "Measures which learning rate makes progress now: the LR is swept exponentially over "
        "your next steps while the loss is recorded, then everything (weights, optimizer, "
        "scheduler, RNG) is restored to before the sweep and the LR is set from the curve. "
        "The suggestion is cross-checked two ways and verified after a horizon like any action."
    )
    example_params: ClassVar[dict[str, Any]] = {"steps": 100, "low": 1e-2, "high": 1e4}
    # Parameters validate() must refuse (the conformance test checks each one).
    invalid_params: ClassVar[tuple[dict[str, Any], ...]] = (
        {"steps": 5},
        {"low": 0.0},
        {"low": 10.0, "high": 1.0},
        {"high": "x"},
    )
    probe: ClassVar[bool] = True

    def validate(self, params: dict[str, Any]) -> None:
        steps = params.get("steps", 100)
        if not isinstance(steps, int) or steps < SKIP_START + SKIP_END + 3:
            raise ValueError(
                f"lr_range_test: steps must be an int >= {SKIP_START + SKIP_END + 3}, got {steps!r}"
            )
        low, high = params.get("low", 1e-2), params.get("high", 1e4)
        for key, value in (("low", low), ("high", high)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"lr_range_test: {key} must be a positive number, got {value!r}")
        if high <= low:
            raise ValueError(f"lr_range_test: high ({high}) must exceed low ({low})")

    def apply(self, controls: Controls, params: dict[str, Any]) -> dict[str, Any]:
        self.validate(params)
        token = {"lr": controls.lr.state_dict()}
        steps = int(params.get("steps", 100))
        controls.lr.set_shape(
            "exp", float(params.get("low", 1e-2)), float(params.get("high", 1e4)), steps
        )
        return token

    def undo(self, controls: Controls, token: dict[str, Any]) -> None:
        controls.lr.load_state_dict(token["lr"])

    def duration(self, params: dict[str, Any]) -> int:
        return int(params.get("steps", 100))

    def describe(self, params: dict[str, Any]) -> str:
        low, high = float(params.get("low", 1e-2)), float(params.get("high", 1e4))
        return f"LR range test ×{low:g}…×{high:g} over {int(params.get('steps', 100))} steps"
