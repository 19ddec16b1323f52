"""The same few batches again and again: every epoch draws the same small subset."""

from __future__ import annotations

from typing import ClassVar

from unstuck.diagnose.base import Rule
from unstuck.diagnose.causes._coverage import stable_coverage
from unstuck.diagnose.causes._data import REPEAT_MULTIPLICITY, SAME_IDS_OVERLAP, ramp
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy


class RepeatedData(Rule):
    """Each nominal epoch draws ≤ 1/10 of the data, ≥ 90 % the same ids as the epoch before."""

    code: ClassVar[str] = "repeated_data"
    requires: ClassVar[frozenset[str]] = frozenset(
        {"data_reach", "epoch_coverage", "epoch_new_ids", "epoch_overlap", "samples_per_step"}
    )
    continuous: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "The loop trains on the same small set of samples over and over: in each nominal epoch "
        "(dataset_size draws) every sample it sees is drawn ten times or more, and the ids are "
        "the same as in the epoch before. The model memorises those few batches (training loss "
        "goes to zero or stalls) and learns nothing about the rest. The classic cause is "
        "`batch = next(iter(loader))` inside the training loop with shuffle=False (a fresh "
        "iterator returns the first batch every time), or a batch fetched once before the loop "
        "(an 'overfit one batch' check left in), or a cached/cycled list of a few batches. "
        "Create the iterator once per epoch (`for batch in loader:`). (When the subset is a "
        "sizeable share of the data, unstuck reports truncated_data instead.)"
    )

    def check(self, ev: Evidence) -> Finding | None:
        cov = stable_coverage(ev)
        if cov is None or cov.reach <= 0.0 or cov.reach * REPEAT_MULTIPLICITY > 1.0:
            return None
        if cov.overlap < SAME_IDS_OVERLAP:
            return None
        draws = 1.0 / max(cov.coverage, 1e-12)  # draws per distinct sample in the last epoch
        confidence = 0.9 + 0.05 * ramp(
            draws, REPEAT_MULTIPLICITY, 100.0
        )  # counted ids: near certain
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "data_reach": cov.reach,
                "draws_per_sample": draws,
                "threshold": REPEAT_MULTIPLICITY,
                "epoch_overlap": cov.overlap,
                "samples_per_step": cov.per_step,
                "nominal_epochs": cov.epochs,
            },
            step=ev.step,
            summary=f"each nominal epoch draws only {cov.coverage:.1%} of the data, every "
            f"sample {draws:.0f} times, {cov.overlap:.0%} the same ids as the epoch before",
            remedies=(
                Remedy(
                    "check_data_loader",
                    {"draws_per_sample": round(draws, 2)},
                    automatic=False,
                    note="iterate the loader (for batch in loader) instead of calling "
                    "next(iter(loader)) each step",
                ),
            ),
        )
