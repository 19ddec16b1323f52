"""CSV reading shared by the Lightning and Keras readers: separator, header, rows.

A last line cut off by a killed run is skipped and noted; any other ragged line is an error.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from unstuck.analyze import _limits
from unstuck.analyze._common import LogFormatError, read_text

__all__ = ["csv_header", "csv_rows"]

SEPARATORS = (",", ";", "\t")


def _dialect(header_line: str) -> str:
    counts = {sep: header_line.count(sep) for sep in SEPARATORS}
    return max(counts, key=lambda s: counts[s]) if any(counts.values()) else ","


def csv_header(path: Path) -> list[str]:
    """The header fields of a CSV file (empty when the first line is empty)."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline(_limits.MAX_LINE_BYTES).rstrip("\r\n")
    if not first:
        return []
    return next(csv.reader([first], delimiter=_dialect(first)))


def csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]], list[str]]:
    text = read_text(path)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise LogFormatError(f"{path} is empty")
    sep = _dialect(lines[0])
    csv.field_size_limit(max(1, _limits.MAX_LINE_BYTES))  # a field is within one line
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    header = next(reader)
    rows: list[dict[str, str]] = []
    notes: list[str] = []
    try:
        body = list(reader)
    except csv.Error as exc:
        raise LogFormatError(f"{path} is not a CSV file ({exc})") from None
    for i, fields in enumerate(body):
        if not fields:
            continue
        if len(fields) != len(header):
            if i == len(body) - 1:
                notes.append(
                    f"the last line has {len(fields)} of {len(header)} fields "
                    "(cut off?) and was skipped"
                )
                continue
            raise LogFormatError(
                f"{path}: line {i + 2} has {len(fields)} fields, the header {len(header)}"
            )
        rows.append(dict(zip(header, fields)))
    return header, rows, notes
