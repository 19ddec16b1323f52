"""What every reader shares: the error type, the list of known formats, lazy imports, and
turning raw named points into a :class:`RunData` with canonical names."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from unstuck.analyze.hygiene import clean_series, count_runs
from unstuck.analyze.names import canonical_names
from unstuck.detect.detector import DEFAULT_MIN_POINTS, WARMUP_FACTOR
from unstuck.record.rundata import RunData

__all__ = [
    "FORMATS",
    "KNOWN_FORMATS",
    "LogFormatError",
    "build_run",
    "require",
    "run_number",
    "to_float",
    "to_step",
]

FORMATS: tuple[str, ...] = (
    "tensorboard",
    "hf",
    "lightning",
    "keras",
    "mlflow",
    "unstuck",
    "csv",
    "jsonl",
    "text",
)

# Appended to a "cannot read" error only when the format itself is unknown: what unstuck
# analyze reads and how to force a reader (`unstuck analyze --help` and docs/analyze.md say more).
KNOWN_FORMATS = (
    "it reads TensorBoard, HF trainer_state.json, Lightning and Keras CSV logs, MLflow, unstuck "
    "run stores, any CSV or JSON lines of metrics and printed logs ('step 100: loss 0.41'); "
    "force one with --format {" + ",".join(FORMATS) + "}"
)


# A series shorter than this cannot hold a plateau (analysis.MIN_PLATEAU_POINTS, the detector's
# warm-up of WARMUP_FACTOR × DEFAULT_MIN_POINTS bins): the name table prefers a longer alias.
MIN_SERIES_POINTS = WARMUP_FACTOR * DEFAULT_MIN_POINTS


class LogFormatError(ValueError):
    """A log that cannot be read: the message says why and which formats are known."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional framework at the point of use, naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"reading this log needs {module.split('.')[0]}: pip install 'unstuck[{extra}]'"
        ) from exc


def to_float(value: Any) -> float | None:
    """A logged cell as a float: numbers and numeric strings (``nan``/``inf`` included); empty
    cells, ``NA`` and anything else non-numeric are missing (None)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text or text.upper() in ("NA", "N/A", "NONE", "NULL"):
            return None
        try:
            return float(text)
        except ValueError:
            return None
    return None


def to_step(value: Any) -> int | None:
    """A step or epoch cell as an int (CSV writers may print ``12.0``)."""
    number = to_float(value)
    if number is None or not math.isfinite(number):
        return None
    return round(number)


def build_run(
    source: str,
    fmt: str,
    raw: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    meta: Mapping[str, Any] | None = None,
    run: str | None = None,
) -> RunData:
    """A RunData whose series carry canonical names; ``meta["names"]`` maps raw -> canonical.

    ``raw`` holds each series' points in the order the log has them: steps that go backwards
    (a resumed run, several runs in one file) and per-epoch tags are sorted out here, once for
    every reader (``hygiene.py``), before sorting by step could interleave them. ``run`` (the
    CLI's ``--run``) is a run's number, 1 = the first, in a file that holds several.
    """
    number = run_number(run, raw)
    run_data = RunData(source=source, format=fmt, meta=dict(meta or {}))
    try:
        raw, notes = clean_series(raw, str(run_data.meta.get("step_unit", "step")), number)
    except ValueError as exc:  # a --run the file does not hold
        raise LogFormatError(str(exc)) from None
    if notes:
        run_data.meta["notes"] = [*run_data.meta.get("notes", []), *notes]
    if number is not None:
        run_data.meta["run"] = number
    names = canonical_names(raw, {k: len(v[0]) for k, v in raw.items()}, MIN_SERIES_POINTS)
    for raw_name, (steps, values) in raw.items():
        if len(steps):
            run_data.add_series(names[raw_name], steps, values)
    run_data.meta["names"] = {k: v for k, v in names.items() if k in raw and len(raw[k][0])}
    return run_data


def run_number(
    run: str | None, raw: Mapping[str, tuple[Sequence[int], Sequence[float]]]
) -> int | None:
    """``--run`` for a file that holds several runs one after another: the run's number."""
    if run is None:
        return None
    try:
        return int(run)
    except ValueError:
        n = count_runs(raw)
        held = "holds one run" if n == 1 else f"holds {n} runs: pick one by its number, 1 to {n}"
        raise LogFormatError(f"--run {run!r}: the log {held}") from None
