"""Per-rule confidence scales fitted on the fault zoo's train split, so that a confidence says
how often such a finding is right (docs/zoo.md "Calibration").

A rule's confidence formula orders its own findings (more decades above a threshold, more
confident); how often its findings name the real cause is measured, not derived. The scales
below were fitted once by ``bench/zoo/calibrate.py`` on the train split's quick run: each
rule's mean confidence becomes its precision there, shrunk towards the rule's own claim by a
prior worth ``PRIOR_FINDINGS`` findings. A rule that never fired on the train split keeps its
confidence. Applied by ``run_rules`` to every finding before symptoms are ranked.
"""

from __future__ import annotations

from unstuck.types import ACTING_CONFIDENCE

__all__ = [
    "CAP",
    "FITTED_ON",
    "HINT_CEILING",
    "PRIOR_FINDINGS",
    "SCALES",
    "calibrated",
    "calibration_key",
]

PRIOR_FINDINGS = 4.0  # the rule's own claim counts as this many findings (a Beta prior)
CAP = 0.99  # no scaled finding claims certainty; a rule's own 1.0 (nonfinite, frozen) stays
FITTED_ON = (
    "2026-12-07: bench/zoo/run.py --split train --quick (52 scored mutants, 10 healthy runs), "
    "fitted by bench/zoo/calibrate.py"
)
# Per rule (or reading): its findings on the train split that named the seeded cause, of all.
SCALES: dict[str, float] = {
    "batch_size": 0.444,  # 0/5 right
    "capacity_limit": 0.415,  # 1/11 right
    "class_imbalance": 0.735,  # 2/5 right
    "converged": 0.673,  # 1/6 right
    "dead_relu": 1.05,  # 2/2 right
    "flat_region": 0.571,  # 0/3 right
    "hard_subset": 0.667,  # 0/2 right
    "input_scale": 1.037,  # 2/2 right
    "label_noise": 0.756,  # 1/3 right
    "lr_too_high/adaptive": 0.364,  # 0/7 right
    "lr_too_high/blow_up": 0.64,  # 2/6 right
    "lr_too_high/ratio": 0.8,  # 0/1 right
    "lr_too_low": 0.753,  # 2/5 right
    "nonfinite": 0.667,  # 2/5 right
    "over_clipping": 1.222,  # 2/2 right
    "over_regularization": 1.018,  # 2/2 right
    "overfitting": 0.903,  # 2/3 right
    "poor_initialization": 0.667,  # 0/2 right
    "precision_underflow": 1.025,  # 1/1 right
    "repeated_data": 1.029,  # 2/2 right
    "saturated_activations": 1.129,  # 2/2 right
    "stale_optimizer_state": 1.063,  # 2/2 right
    "truncated_data": 1.018,  # 2/2 right
    "vanishing_gradients": 1.018,  # 2/2 right
}


HINT_CEILING = 0.49  # a finding its rule put below the acting bar stays a hint (docs/diagnosis.md)


def calibration_key(cause: str, reading: object = None) -> str:
    """The key a finding is calibrated under: ``cause/reading`` for a rule whose readings make
    different claims (``lr_too_high``'s blow-up against its noise floor), else the cause."""
    return f"{cause}/{reading}" if isinstance(reading, str) and reading else cause


def calibrated(cause: str, confidence: float, reading: object = None) -> float:
    """``confidence`` times the fitted scale of the finding's reading (or of its cause), within
    [0, CAP]. A finding its rule put below 0.5 (an end state, a hint) stays below it whatever
    the scale: the bar is a design decision (never acted on, never a root), not a measured one.
    Monotone for each key, so a reading's findings keep their order."""
    scale = SCALES.get(calibration_key(cause, reading), SCALES.get(cause, 1.0))
    if scale == 1.0:
        return confidence
    out = min(max(confidence * scale, 0.0), CAP)
    return min(out, HINT_CEILING) if confidence < ACTING_CONFIDENCE else out
