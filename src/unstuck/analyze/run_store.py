"""unstuck's own run store -> RunData, through ``unstuck.record.rundata.load_run``.

The store already holds what the live Guard found (plateaus, findings, actions, probes). The
analysis re-runs detection and diagnosis on the recorded series like on any other log, so those
live results move to ``meta["recorded"]`` (the report of ``unstuck report RUN_DIR`` shows them);
actions and probes stay, since the analysis cannot redo them.
"""

from __future__ import annotations

import os

from unstuck.analyze._common import LogFormatError, thin
from unstuck.record.rundata import RunData, load_run

__all__ = ["read_store"]


def read_store(path: str | os.PathLike[str], run: str | None = None) -> RunData:
    """Read one run (``run`` = its run_id; the latest by default) of a run dir or .sqlite."""
    try:
        data = load_run(path, run)
    except FileNotFoundError as exc:
        raise LogFormatError(str(exc)) from None
    data.meta.setdefault("step_unit", "step")
    kept, notes = thin(data.series)  # a 10M-step run is analysed on MAX_POINTS per series
    for name, (steps, values) in kept.items():
        data.series[name] = (steps, values)
    if notes:
        data.meta["notes"] = [*data.meta.get("notes", []), *notes]
    data.meta["recorded"] = {
        "plateaus": [p.to_dict() for p in data.plateaus],
        "findings": [f.to_dict() for f in data.findings],
    }
    data.plateaus = []
    data.findings = []
    return data
