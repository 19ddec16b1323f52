"""What every reader shares: the error type, the list of known formats, lazy imports, and
turning raw named points into a :class:`RunData` with canonical names."""

from __future__ import annotations

import importlib
import math
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from unstuck.analyze import _limits
from unstuck.analyze.hygiene import clean_series, count_runs
from unstuck.analyze.names import canonical_names
from unstuck.detect.detector import DEFAULT_MIN_POINTS, WARMUP_FACTOR
from unstuck.record.rundata import RunData

__all__ = [
    "FORMATS",
    "KNOWN_FORMATS",
    "LogFormatError",
    "build_run",
    "check_regular",
    "check_text",
    "read_text",
    "require",
    "run_number",
    "thin",
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


def check_regular(path: str | os.PathLike[str], *, folder_ok: bool = True) -> os.stat_result:
    """Refuse anything that is not a regular file (or a folder): opening a FIFO, a socket or a
    device blocks for ever or reads without end."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LogFormatError(f"{path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode) or (folder_ok and stat.S_ISDIR(st.st_mode)):
        return st
    raise LogFormatError(
        f"{path} is not a regular file or folder (a pipe, socket or device?); "
        "save the log to a file and pass that"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def check_text(path: str | os.PathLike[str]) -> Path:
    """Refuse a text log past the size and line-length limits of ``_limits`` before it is read
    (one pass over the bytes, keeping none of them)."""
    file = Path(path)
    st = check_regular(file, folder_ok=False)
    if st.st_size > _limits.MAX_FILE_BYTES:
        raise LogFormatError(
            f"{file} is {_mib(st.st_size)}, over the {_mib(_limits.MAX_FILE_BYTES)} a text log "
            "may be; pass a shorter log (e.g. its last lines: tail -n 1000000)"
        )
    cap = max(1, _limits.MAX_LINE_BYTES)
    run = 0  # bytes since the last newline
    total = 0
    with file.open("rb") as fh:
        while chunk := fh.read(cap):  # a line within one chunk is at most cap bytes long
            total += len(chunk)
            if total > _limits.MAX_FILE_BYTES:  # grew while being read
                raise LogFormatError(f"{file} grew past {_mib(_limits.MAX_FILE_BYTES)}")
            first = chunk.find(b"\n")
            run += len(chunk) if first < 0 else first
            if run > cap:
                raise LogFormatError(
                    f"{file} has a line over {_mib(cap)}: no metric log has one; "
                    "is it the right file?"
                )
            if first >= 0:
                run = len(chunk) - chunk.rfind(b"\n") - 1
    return file


def read_text(path: str | os.PathLike[str]) -> str:
    """A text log whole, after :func:`check_text` (a file past the limits is a one-line error
    before it fills memory)."""
    file = check_text(path)
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise LogFormatError(f"{file} is not a text file") from None


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
    if number is None or not math.isfinite(number) or abs(number) > _limits.MAX_STEP:
        return None  # 1e300 is no step: the row is skipped like one without a step
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
    raw, thinned = thin(raw)
    notes = [*notes, *thinned]
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


def thin(raw: Mapping[str, tuple[Any, Any]]) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
    """Every series within ``_limits.MAX_POINTS``: a longer one keeps every k-th point (a
    plateau spans many points, so the analysis sees the same shape; memory stays bounded)."""
    cap = max(1, _limits.MAX_POINTS)
    out: dict[str, tuple[Any, Any]] = {}  # lists or arrays: both slice
    notes: list[str] = []
    for name, (steps, values) in raw.items():
        n = len(steps)
        if n <= cap:
            out[name] = (steps, values)
            continue
        k = -(-n // cap)  # ceil: the stride that brings n points within the cap
        out[name] = (steps[::k], values[::k])
        notes.append(f"{name!r} has {n} points, over {cap}: every {k}th is kept")
    return out, notes


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
