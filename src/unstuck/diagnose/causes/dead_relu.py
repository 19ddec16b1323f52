"""Dead ReLUs: most units of a ReLU layer output zero for every input."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy

DEAD_SHARE = 0.7  # DESIGN.md cause catalog / DeepDiagnosis: ≥ 70 % units inactive (REFERENCE §3)
LOWER_LR_FACTOR = 0.5  # halve the LR so no more units die; one rung of the rescue ladder
# A unit that fires on 5 % of its inputs shows no positive output over n independent outputs
# with probability 0.95^n: 3.7 % at n = 64. Fewer outputs per unit (a 4-batch window at batch
# size 1, a window not yet full) cannot tell a dead unit from a sparse one, so the rule reads
# the latest points whose windows together hold at least this many, and takes their minimum.
MIN_DEAD_OBSERVATIONS = 64


class DeadReLU(Rule):
    """At least 70 % of a ReLU layer's units gave no positive output over a window of batches."""

    code: ClassVar[str] = "dead_relu"
    requires: ClassVar[frozenset[str]] = frozenset({"act_dead_fraction"})
    # Units that die after a collapsed init or under unnormalized inputs are those faults'
    # symptom; NaN activations are never > 0, so every unit of a non-finite run looks dead.
    symptom_of: ClassVar[frozenset[str]] = frozenset(
        {"input_scale", "poor_initialization", "nonfinite"}
    )
    explanation: ClassVar[str] = (
        "Most units of a ReLU layer output zero for every sample, so no gradient flows through "
        "them and they never come back: the layer's effective width collapses and the loss "
        "stalls, often at the level of a constant prediction. Units die when a large step (too "
        "high a learning rate, a loss spike, unnormalized inputs) pushes their bias and weights "
        "so that the pre-activation is negative for all inputs, or when they start there (a "
        "strongly negative bias initialisation). Lower the learning rate so no more units die, "
        "check the bias initialisation and input scaling, and consider LeakyReLU/GELU or "
        "normalisation layers; the units already dead need re-initialisation. Only nn.ReLU and "
        "nn.ReLU6 modules are watched: a functional F.relu is invisible to this check."
    )

    def check(self, ev: Evidence) -> Finding | None:
        series = ev.values_of("act_dead_fraction")
        observed = ev.values_of("act_dead_observations")
        if observed.size != series.size:
            observed = np.full(series.size, np.inf)  # no fill recorded (a store, another loop)
        keep = np.isfinite(series)
        series, observed = series[keep], observed[keep]
        if series.size == 0:
            return None
        # The latest points whose windows hold MIN_DEAD_OBSERVATIONS outputs per unit together;
        # each is already a window of DEAD_WINDOW sampled batches, and units that died a moment
        # ago are as dead as old ones (a median would lag behind): their minimum decides.
        total = np.cumsum(observed[::-1])
        enough = np.flatnonzero(total >= MIN_DEAD_OBSERVATIONS)
        if enough.size == 0:
            return None
        share = float(series[-1 - int(enough[0]) :].min())
        if share < DEAD_SHARE:
            return None
        confidence = found_confidence((share - DEAD_SHARE) / (1.0 - DEAD_SHARE) * 0.3, cap=0.9)
        layers: dict[str, Any] = dict(ev.get("act_dead_layers") or {})
        worst = max(layers, key=lambda k: layers[k]) if layers else "?"
        overall = ev.values_of("act_dead_overall")
        overall = overall[np.isfinite(overall)]
        start = float(series[0])
        died_in_training = start < DEAD_SHARE  # alive at the first sample, dead now
        remedies = [
            Remedy(
                "change_architecture",
                note="check bias init and input scaling; LeakyReLU/GELU, He init, norm layers",
            )
        ]
        if died_in_training:
            remedies.insert(
                0,
                Remedy(
                    "lr_scale",
                    {"factor": LOWER_LR_FACTOR},
                    automatic=True,
                    note="stops more units dying; dead units need re-initialisation",
                ),
            )
        return Finding(
            cause=self.code,
            confidence=confidence,
            evidence={
                "dead_fraction": share,
                "threshold": DEAD_SHARE,
                "worst_layer": worst,
                "layers": {k: float(v) for k, v in layers.items()},
                "dead_overall": float(overall[-1]) if overall.size else share,
                "dead_fraction_at_start": start,
                "died_in_training": died_in_training,
            },
            step=ev.step,
            summary=f"{share:.0%} of the units of ReLU layer {worst} gave no positive output over "
            f"the last batches (threshold {DEAD_SHARE:.0%}; {start:.0%} at the first sample)",
            remedies=tuple(remedies),
        )
