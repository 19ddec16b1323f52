"""Minority classes stall: their loss stays high while the majority classes are fitted."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from unstuck.diagnose.base import Rule, found_confidence
from unstuck.diagnose.causes._data import (
    IMBALANCE_COUNT_RATIO,
    UNLEARNED_LOSS,
    finite_number,
    ramp,
)
from unstuck.diagnose.evidence import Evidence
from unstuck.signals.host import PERSIST_OBSERVATIONS
from unstuck.types import Finding, Remedy


class ClassImbalance(Rule):
    """Class counts differ > 10x and the rare classes stay below chance while the others learn."""

    code: ClassVar[str] = "class_imbalance"
    requires: ClassVar[frozenset[str]] = frozenset({"class_counts", "class_loss_history"})
    explanation: ClassVar[str] = (
        "Some classes are more than ten times rarer than the largest one, and the model has "
        "settled on predicting the frequent classes: the rare classes' loss stays above chance "
        "(ln C: their label gets less than a uniform guess would give it) flush after flush "
        "while the frequent classes are fitted. Their few samples contribute little to the mean "
        "gradient, so the run plateaus with the minority unlearned. Re-balance what the model "
        "sees (a weighted sampler, class weights in the loss such as inverse frequency or "
        "effective number of samples, focal loss, logit adjustment) and judge progress with "
        "per-class or balanced metrics."
    )

    def check(self, ev: Evidence) -> Finding | None:
        counts_raw = ev.get("class_counts")
        history_raw = ev.get("class_loss_history")
        if not isinstance(counts_raw, dict) or not isinstance(history_raw, dict):
            return None
        counts = {}
        for c, n in counts_raw.items():
            value = finite_number(n)
            if value is not None and value > 0:
                counts[c] = value
        if len(counts) < 2:
            return None
        largest = max(counts.values())
        ratio = largest / min(counts.values())
        if not ratio > IMBALANCE_COUNT_RATIO:
            return None
        minority = [c for c, n in counts.items() if n * IMBALANCE_COUNT_RATIO < largest]
        majority = [c for c in counts if c not in minority]
        minority_loss = self._recent(history_raw, minority, counts)
        majority_loss = self._recent(history_raw, majority, counts)
        if minority_loss is None or majority_loss is None:
            return None
        # Stalled: every one of the last PERSIST_OBSERVATIONS flushes leaves the minority unlearned
        # while the majority is learned. Unlearned here is worse than a uniform guess (loss above
        # ln C, C the classes seen): the model gives the rare classes less than 1/C, i.e. it has
        # settled on the frequent ones. A minority still being learned (a skew the task itself
        # has, its loss falling below chance) is not that.
        chance = math.log(len(counts))
        if not (
            min(minority_loss) > max(UNLEARNED_LOSS, chance) and max(majority_loss) < UNLEARNED_LOSS
        ):
            return None
        gap = float(np.mean(minority_loss)) / max(float(np.mean(majority_loss)), 1e-12)
        confidence = found_confidence(
            0.15 * ramp(float(np.log10(ratio)), 1.0, 2.0), 0.15 * ramp(gap, 10.0, 100.0), cap=0.9
        )
        total = sum(counts.values())
        share = sum(counts[c] for c in minority) / total
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "count_ratio": ratio,
                "threshold": IMBALANCE_COUNT_RATIO,
                "minority_classes": sorted(int(c) for c in minority),
                "minority_sample_share": share,
                "minority_loss": float(np.mean(minority_loss)),
                "majority_loss": float(np.mean(majority_loss)),
                "chance_loss": chance,
            },
            step=ev.step,
            summary=f"classes {sorted(int(c) for c in minority)} are {ratio:.0f}x rarer than the "
            f"largest; their loss stays at {np.mean(minority_loss):.2f} (> ln 2) while the "
            f"others' is {np.mean(majority_loss):.3f}",
            remedies=(
                Remedy(
                    "rebalance_classes",
                    {"classes": sorted(int(c) for c in minority)},
                    automatic=False,
                    note="weighted sampler or class-weighted / focal loss; track per-class metrics",
                ),
            ),
        )

    @staticmethod
    def _recent(
        history: dict[object, object], classes: list[object], counts: dict[object, float]
    ) -> list[float] | None:
        """Count-weighted mean loss of ``classes`` at each of the last few flushes they appear."""
        columns: list[np.ndarray] = []
        weights: list[float] = []
        for c in classes:
            values = history.get(c)
            if not isinstance(values, (list, tuple, np.ndarray)):
                continue
            arr = np.asarray(values, dtype=np.float64)[-PERSIST_OBSERVATIONS:]
            if arr.size < PERSIST_OBSERVATIONS or not np.all(np.isfinite(arr)):
                continue
            columns.append(arr)
            weights.append(counts[c])
        if not columns:
            return None
        stacked = np.stack(columns)
        w = np.asarray(weights)[:, None]
        return [float(v) for v in (stacked * w).sum(0) / w.sum()]
