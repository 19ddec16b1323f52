"""An epoch sees part of the data: a fixed share of the data set is never drawn."""

from __future__ import annotations

from typing import ClassVar

from unstuck.diagnose.base import Rule
from unstuck.diagnose.causes._coverage import stable_coverage
from unstuck.diagnose.causes._data import REPEAT_MULTIPLICITY, TRUNCATED_REACH, ramp
from unstuck.diagnose.evidence import Evidence
from unstuck.types import Finding, Remedy


class TruncatedData(Rule):
    """After ≥ 2 nominal epochs the ids reach ≤ 90 % of dataset_size and no new ones arrive."""

    code: ClassVar[str] = "truncated_data"
    requires: ClassVar[frozenset[str]] = frozenset(
        {"data_reach", "epoch_coverage", "epoch_new_ids", "epoch_overlap", "samples_per_step"}
    )
    continuous: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "The training loop only ever draws a fixed part of the data set: after several nominal "
        "epochs (dataset_size draws each) the sample ids seen stop growing well short of "
        "dataset_size. The model fits that part and plateaus, and validation reflects the "
        "smaller data. Typical causes: a debugging limit left in (Subset(ds, range(k)), "
        "max_train_samples, limit_train_batches with shuffling off), a DistributedSampler built "
        "with the wrong num_replicas/rank on a single process, or an early break out of the "
        "epoch loop with shuffle=False. Check len(loader) x batch_size against len(dataset) "
        "and the sampler's arguments. (When the subset is only a few batches drawn over and "
        "over, unstuck reports repeated_data instead.)"
    )

    def check(self, ev: Evidence) -> Finding | None:
        cov = stable_coverage(ev)
        if cov is None or not 0.0 < cov.reach <= TRUNCATED_REACH:
            return None
        if cov.reach * REPEAT_MULTIPLICITY <= 1.0:  # ≥ 10 draws per sample: repeated_data
            return None
        confidence = 0.9 + 0.05 * ramp(cov.reach, TRUNCATED_REACH, 0.5)  # counted ids: near certain
        return Finding(
            cause=self.code,
            confidence=round(confidence, 4),
            evidence={
                "data_reach": cov.reach,
                "threshold": TRUNCATED_REACH,
                "epoch_coverage": cov.coverage,
                "epoch_new_ids": cov.new_ids,
                "nominal_epochs": cov.epochs,
            },
            step=ev.step,
            summary=f"after {cov.epochs} nominal epochs only {cov.reach:.0%} of the data set has "
            f"ever been drawn and the last epoch added {cov.new_ids:.1%} new samples",
            remedies=(
                Remedy(
                    "check_data_loader",
                    {"reach": round(cov.reach, 4)},
                    automatic=False,
                    note="compare len(loader) x batch_size with len(dataset); check sampler "
                    "arguments, subset limits and early breaks",
                ),
            ),
        )
