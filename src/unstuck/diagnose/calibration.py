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

__all__ = ["CAP", "FITTED_ON", "HINT_CEILING", "PRIOR_FINDINGS", "SCALES", "calibrated"]

PRIOR_FINDINGS = 4.0  # the rule's own claim counts as this many findings (a Beta prior)
CAP = 0.99  # no scaled finding claims certainty; a rule's own 1.0 (nonfinite, frozen) stays
FITTED_ON = (
    "2026-12-07: bench/zoo/run.py --split train --quick (52 scored mutants, 10 healthy runs), "
    "fitted by bench/zoo/calibrate.py"
)
# Per rule: its findings on the train split that named the seeded cause, of all its findings.
SCALES: dict[str, float] = {
    "capacity_limit": 0.47,  # 1/11 right
    "class_imbalance": 0.735,  # 2/5 right
    "converged": 0.673,  # 1/6 right
    "dead_relu": 1.05,  # 2/2 right
    "flat_region": 0.571,  # 0/3 right
    "hard_subset": 0.667,  # 0/2 right
    "input_scale": 1.037,  # 2/2 right
    "label_noise": 0.756,  # 1/3 right
    "lr_too_high": 0.586,  # 2/8 right
    "lr_too_low": 0.818,  # 2/5 right
    "nonfinite": 0.669,  # 2/5 right
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


HINT_CEILING = 0.49  # a finding its rule put below the 0.5 bar stays a hint (docs/diagnosis.md)


def calibrated(cause: str, confidence: float) -> float:
    """``confidence`` times the cause's fitted scale, within [0, CAP]. A finding its rule put
    below 0.5 (an end state, a hint) stays below it whatever the scale: the bar is a design
    decision (never acted on, never a root), not a measured one. Monotone for each cause, so a
    rule's findings keep their order."""
    scale = SCALES.get(cause, 1.0)
    if scale == 1.0:
        return confidence
    out = min(max(confidence * scale, 0.0), CAP)
    return min(out, HINT_CEILING) if confidence < 0.5 else out
