"""The data-coverage numbers truncated_data and repeated_data both read, checked once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unstuck.diagnose.causes._data import MIN_EPOCHS, NEW_ID_TOLERANCE, finite_number
from unstuck.diagnose.evidence import Evidence


@dataclass(frozen=True)
class Coverage:
    """What the stream of ids looks like once it is stable (no new ids arrive)."""

    reach: float  # distinct ids ever seen / dataset_size
    coverage: float  # distinct ids in the latest nominal epoch / dataset_size
    overlap: float  # share of the latest epoch's ids also in the one before
    new_ids: float  # ids first seen in the latest epoch / dataset_size
    epochs: int  # nominal epochs (dataset_size draws) completed
    per_step: float  # samples drawn per step (the batch size)


def stable_coverage(ev: Evidence) -> Coverage | None:
    """The coverage numbers when ≥ MIN_EPOCHS epochs are done and the last added no new ids."""
    reach = finite_number(ev.get("data_reach"))
    per_step = finite_number(ev.get("samples_per_step"))
    coverage = ev.values_of("epoch_coverage") if "epoch_coverage" in ev else np.zeros(0)
    new_ids = ev.values_of("epoch_new_ids") if "epoch_new_ids" in ev else np.zeros(0)
    overlap = ev.values_of("epoch_overlap") if "epoch_overlap" in ev else np.zeros(0)
    if reach is None or per_step is None or coverage.size < MIN_EPOCHS:
        return None
    if new_ids.size < MIN_EPOCHS or overlap.size < MIN_EPOCHS:
        return None
    last = (float(coverage[-1]), float(new_ids[-1]), float(overlap[-1]))
    if not all(np.isfinite(last)) or last[1] > NEW_ID_TOLERANCE:
        return None  # the stream still reaches new data: not (yet) a fixed subset
    return Coverage(reach, last[0], last[2], last[1], int(coverage.size), per_step)
