"""Per-rule confidence scales fitted on the fault zoo's train split, so that a confidence says
how often such a finding is right (docs/zoo.md "Calibration").

A rule's confidence formula orders its own findings (more decades above a threshold, more
confident); how often its findings name the real cause is measured, not derived. The scales
below were fitted by ``bench/zoo/calibrate.py`` on the train split's full run (refitted when the
rules change, never on the test split): each rule's mean confidence becomes its precision
there, shrunk towards the rule's own claim by a prior worth ``PRIOR_FINDINGS`` findings. A rule
that never fired on the train split keeps its confidence, and so does a cause the zoo seeds no
fault for (``flat_region``, ``rank_desync``: none of their findings can be right there).
Applied by ``run_rules`` to every finding before symptoms are ranked.
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
    "2026-12-08: bench/zoo/run.py --split train, the full split (604 scored runs: 554 mutants "
    "that hurt, 50 healthy), fitted by bench/zoo/calibrate.py"
)
# Per rule (or reading): its findings on the train split that named the seeded cause, of all.
SCALES: dict[str, float] = {
    "batch_size": 0.242,  # 5/40 right
    "capacity_limit": 0.119,  # 4/104 right
    "class_imbalance": 0.988,  # 10/14 right
    "converged": 0.614,  # 16/75 right
    "dead_relu": 0.914,  # 6/8 right
    "exploding_gradients": 0.571,  # 0/3 right
    "frozen_parameters": 1.0,  # 9/9 right
    "frozen_parameters/untrained": 1.091,  # 18/18 right
    "hard_subset": 0.267,  # 0/11 right
    "input_scale": 1.077,  # 9/9 right
    "label_noise": 0.541,  # 5/15 right
    "label_noise/train_above_val": 1.436,  # 15/15 right
    "loss_component_dominance": 1.271,  # 5/5 right
    "loss_component_dominance/blew_up": 1.238,  # 5/5 right
    "loss_component_dominance/served": 1.369,  # 14/14 right
    "lr_decayed_early/cut_before_learning": 1.201,  # 7/7 right
    "lr_decayed_early/stalled_after_fall": 1.324,  # 19/19 right
    "lr_too_high/adaptive": 0.2,  # 9/83 right
    "lr_too_high/blow_up": 0.601,  # 13/29 right
    "lr_too_high/oscillation": 0.571,  # 0/3 right
    "lr_too_high/ratio": 0.515,  # 3/12 right
    "lr_too_low/ratio": 0.837,  # 26/45 right
    "nonfinite": 0.629,  # 18/31 right
    "output_activation/bounded_output": 1.032,  # 6/6 right
    "output_activation/softmax": 1.143,  # 17/17 right
    "over_clipping": 1.5,  # 12/12 right
    "over_regularization": 1.079,  # 24/24 right
    "overfitting": 0.791,  # 21/49 right
    "poor_initialization": 0.333,  # 0/8 right
    "poor_initialization/layer_drop": 1.139,  # 14/16 right
    "precision_underflow": 1.055,  # 3/3 right
    "repeated_data": 0.977,  # 24/27 right
    "saddle_point": 0.571,  # 0/3 right
    "saturated_activations": 1.198,  # 13/14 right
    "stale_optimizer_state": 0.917,  # 14/21 right
    "truncated_data": 1.041,  # 14/14 right
    "vanishing_gradients": 0.649,  # 9/22 right
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
