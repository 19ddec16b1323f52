"""CSV reading shared by the Lightning and Keras readers: separator, header, rows.

A last line cut off by a killed run is skipped and noted; any other ragged line is an error.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from unstuck.analyze import _limits
from unstuck.analyze._common import LogFormatError, check_text

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


def csv_rows(path: Path) -> tuple[list[str], Iterator[dict[str, str]], list[str]]:
    """The header, the rows (streamed from the file: a log near the size limit is never held
    as text and rows at once) and the notes list, which the rows fill as they are read."""
    check_text(path)
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline(_limits.MAX_LINE_BYTES)
    if not first.strip():
        raise LogFormatError(f"{path} is empty")
    sep = _dialect(first.rstrip("\r\n"))
    csv.field_size_limit(max(1, _limits.MAX_LINE_BYTES))  # a field is within one line
    notes: list[str] = []
    header = next(csv.reader([first], delimiter=sep))
    return header, _rows(path, sep, header, notes), notes


def _rows(path: Path, sep: str, header: list[str], notes: list[str]) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        try:
            next(reader)
            held: list[str] | None = None  # one row behind: the last one may be cut off
            held_line = 0
            for fields in reader:
                if held is not None:
                    if len(held) != len(header):
                        raise LogFormatError(
                            f"{path}: line {held_line} has {len(held)} fields, "
                            f"the header {len(header)}"
                        )
                    yield dict(zip(header, held))
                held, held_line = (fields, reader.line_num) if fields else (None, 0)
        except csv.Error as exc:
            raise LogFormatError(f"{path} is not a CSV file ({exc})") from None
        except UnicodeDecodeError:
            raise LogFormatError(f"{path} is not a text file") from None
        if held is not None:
            if len(held) != len(header):
                notes.append(
                    f"the last line has {len(held)} of {len(header)} fields "
                    "(cut off?) and was skipped"
                )
            else:
                yield dict(zip(header, held))
