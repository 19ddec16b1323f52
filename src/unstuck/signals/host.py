"""The torch-free part of the signals: what diagnosis reads on the host.

The rules in ``unstuck.diagnose`` read a :class:`Frame` and a few thresholds and helpers of the
taps; they live here, importing neither torch nor a tap, so that ``unstuck analyze`` (which runs
the rules on a log, with no model) never imports torch. Each tap module re-exports its names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "CHECKSUM_FIELDS",
    "COMPONENT_PREFIX",
    "CONSTANT_TOLERANCE",
    "DIRECTION_SNR",
    "FLAT_FELT_CURVATURE",
    "NOISE_FLOOR_SHARE",
    "PERSIST_OBSERVATIONS",
    "ROW_SUM_TOLERANCE",
    "SADDLE_RATIO",
    "SATURATION_BOUND",
    "STALLED_PROGRESS",
    "Frame",
    "Series",
    "checksum_spread",
    "classify",
]


class Series(NamedTuple):
    """A scalar signal over steps: what a tap measured at each of ``steps``.

    Frame values are told apart by type, not by shape: a ``Series`` goes to the run store as
    metrics and to the evidence as a history; any other value (per-tensor arrays, summaries) is
    the tap's latest reading. A tuple, so ``steps, values = series`` still reads it.
    """

    steps: list[int]
    values: list[float]


@dataclass
class Frame:
    """Everything the taps measured since the previous flush, on the host.

    Scalar series are ``name -> Series(steps, values)``; other entries (per-tensor arrays,
    summaries) are documented by the tap that makes them.
    """

    step: int
    signals: dict[str, Any] = field(default_factory=dict)

    def series(self) -> dict[str, Series]:
        """Only the scalar series, the part that goes to the run store as metrics."""
        return {k: v for k, v in self.signals.items() if isinstance(v, Series)}


# --- curvature (``signals.curvature``) ---

# Dauphin et al. 2014 ("Identifying and attacking the saddle point problem"): a plateau is a
# saddle when the Hessian has a direction of significant negative curvature. Significant is
# relative to the top curvature: at the minima of trained networks the negative eigenvalues form
# a small bulk near zero (Sagun et al. 2017; Ghorbani et al. 2019), and a 40-step Lanczos Ritz
# value is not exact either, so a negative eigenvalue must reach 5 % of |λ_max| to count.
SADDLE_RATIO = 0.05  # ours, global: |λ_min| ≥ 5 % of |λ_max| is outside the near-zero bulk
# Gradient descent on a quadratic moves each eigen-coordinate by a factor (1 − η·λ) per step, so
# η·λ is the curvature the optimizer feels; η·λ_max = 2 is the stability edge that healthy runs
# sharpen up to (Cohen et al. 2021, "edge of stability"). Two decades below it, η·|λ| < 2e-2,
# even the sharpest direction needs ~50 steps per e-fold: the landscape is flat at this step.
FLAT_FELT_CURVATURE = 2e-2  # ours, global: two decades below the stability edge η·λ = 2
# The gradient's own progress: one step lowers the loss by about η‖g‖²; below 1e-3 of the loss
# a thousand steps make less than one e-fold, as flat as the plateaus the detector reports.
# Above it the gradient still descends, and the curvature names no landscape (a healthy early
# run has negative curvature everywhere, yet its gradient is what moves it).
STALLED_PROGRESS = 1e-3  # ours, global: η‖g‖²/L < 1e-3, > 1,000 steps per e-fold of the loss
# Mahsereci et al. 2017 call a gradient below its minibatch noise (SNR < 1) uninformative for
# one step; momentum and Adam's first moment average the last ~1/(1 − 0.9) = 10 steps, which
# recovers a direction down to SNR ≈ 0.1. Below that no optimizer here finds a consistent
# direction, and the point is a (noisy) minimum or a noise floor.
DIRECTION_SNR = 0.1  # ours, from Mahsereci et al.'s SNR < 1 and the default β₁ = 0.9 averaging
# The detector's plateau margin (detect.detector.DEFAULT_EPSILON; signals import nothing above
# them, and a test keeps the two equal): a floor less than that above the minimum is a plateau
# no test here could tell from the minimum itself.
NOISE_FLOOR_SHARE = 0.15


def classify(
    lambda_max: float,
    lambda_min: float,
    grad_norm: float,
    loss: float,
    step_size: float | None,
    snr: float | None = None,
) -> str:
    """Name the landscape from the extreme eigenvalues, the gradient and the step size.

    ``step_size`` is the effective learning rate η (parameter change per unit gradient). With
    it, a point where the gradient still makes progress (η‖g‖²/L ≥ ``STALLED_PROGRESS``) is
    ``descending``. A point whose mean gradient is below its minibatch noise (``snr`` =
    ‖G‖²/tr Σ_B < 1, Mahsereci et al. 2017) has no consistent direction left: it is a
    ``noise_floor`` when the noise keeps the loss a plateau margin above the minimum (see
    ``NOISE_FLOOR_SHARE``), else a ``minimum``. Otherwise it is ``flat_region`` when the curvature
    it feels is tiny too, else ``saddle_point`` or ``minimum`` by the sign of λ_min. Without a
    step size only the eigenvalues speak.
    """
    values = (lambda_max, lambda_min, grad_norm, loss)
    if not all(math.isfinite(v) for v in values):
        return "unknown"
    known_step = step_size is not None and math.isfinite(step_size) and step_size > 0
    progress = 0.0
    noisy = snr is not None and math.isfinite(snr) and snr < DIRECTION_SNR
    if known_step:
        assert step_size is not None
        progress = step_size * grad_norm * grad_norm / max(abs(loss), 1e-12)
        if progress >= STALLED_PROGRESS and not noisy:
            return "descending"
    if snr is not None and math.isfinite(snr) and snr < DIRECTION_SNR:
        # No consistent direction left. SGD then settles ≈ η·tr Σ_B / 4 above the minimum
        # (Mandt et al. 2017), and with ‖g‖² ≈ tr Σ_B that is progress/4 of the loss: above
        # the detector's plateau margin the floor is made by the noise (batch or LR), below
        # it the point is a minimum as far as any test here can tell.
        if known_step and progress / 4 >= NOISE_FLOOR_SHARE:
            return "noise_floor"
        return "minimum"
    if known_step:
        assert step_size is not None
        if step_size * max(abs(lambda_max), abs(lambda_min)) < FLAT_FELT_CURVATURE:
            return "flat_region"
    if lambda_min < -SADDLE_RATIO * abs(lambda_max):
        return "saddle_point"
    return "minimum"


# --- activations, samples, loss components, rank checksums ---

# The output tap's tolerances (signals/outputs.py), here so that the rules read them without torch.
# bfloat16 keeps 8 significant bits: each probability of a row is rounded by at most 2^-9 of
# itself, so a softmax row computed in bf16 sums to 1 within 2^-9 ≈ 0.002 (float32: ~6e-8 per
# unit). 1e-2 accepts a bf16/fp16 softmax with a 5× margin; logits, on every row of a batch, land
# in so narrow a band only by accident.
ROW_SUM_TOLERANCE = 1e-2
# An output whose spread is below float32's resolution at its size (2^-23 ≈ 1.2e-7) times a
# margin for the reductions: the same value for every sample and unit.
CONSTANT_TOLERANCE = 1e-6
SATURATION_BOUND = 5.0  # DeepDiagnosis: a pre-activation beyond ±5 is saturated (REFERENCE.md §3)
PERSIST_OBSERVATIONS = 3  # "persistently": a sample must stay unlearned over 3 passes in a row
COMPONENT_PREFIX = "loss_component/"
CHECKSUM_FIELDS = ("sum", "sum_sq", "projection", "numel")


def checksum_spread(table: list[list[float]]) -> float:
    """The largest difference of any rank's checksum to rank 0's, relative to its scale.

    Σθ and Σ r·θ are compared relative to √(numel·Σθ²) (their Cauchy–Schwarz bound), Σθ² relative
    to itself, so the figure is ~1e-16 for identical weights and ≥ 1e-7 for any real difference.
    NaN when the table is malformed or the ranks hold different parameter counts (sharding).
    """
    try:
        rows = [[float(v) for v in row] for row in table]
    except (TypeError, ValueError):
        return float("nan")
    if len(rows) < 2 or any(len(r) != len(CHECKSUM_FIELDS) for r in rows):
        return float("nan")
    finite = [all(math.isfinite(v) for v in r) for r in rows]
    if not all(finite):
        # NaN weights on every rank are the nonfinite rule's business; on some ranks only, the
        # ranks certainly disagree.
        return float("inf") if any(finite) else float("nan")
    ref = rows[0]
    if any(r[3] != ref[3] for r in rows):
        return float("nan")
    sq = max(abs(ref[1]), 1e-300)
    linear_scale = math.sqrt(max(ref[3], 1.0) * sq)
    worst = 0.0
    for row in rows[1:]:
        worst = max(
            worst,
            abs(row[0] - ref[0]) / linear_scale,
            abs(row[1] - ref[1]) / sq,
            abs(row[2] - ref[2]) / linear_scale,
        )
    return worst
