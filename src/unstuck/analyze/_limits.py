"""What ``unstuck analyze`` and ``unstuck report`` accept from one input, in one place.

A log or run store is read whole into memory and analysed in one process, so a hostile or
mistaken input (a 2 GB sparse file, a 100 MB line, a run store whose ``metrics`` is a
recursive view) must stop with a one-line error, not a traceback, a hang or
gigabytes of RSS. docs/analyze.md and docs/run-store.md state each limit and what happens past
it. The tests monkeypatch these module constants low (read them as ``_limits.NAME`` at the point
of use, never ``from _limits import NAME``) so a 2 GB case is a 2 MB case.
"""

from __future__ import annotations

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_LINE_BYTES",
    "MAX_POINTS",
    "MAX_STEP",
    "MAX_TB_RECORD_BYTES",
    "QUERY_SECONDS",
]

# A text log (CSV, JSON lines, JSON, printed text) larger than this is refused before reading:
# real metric logs are megabytes; a dense CSV takes about 20x its size in memory (measured:
# 23 MB, 1M rows -> 477 MB RSS), so this keeps a read within about 2.5 GB.
MAX_FILE_BYTES: int = 128 * 1024 * 1024
# One line (or CSV field) longer than this is an error: no metric row is this long.
MAX_LINE_BYTES: int = 1024 * 1024
# Points kept per series: a longer series is thinned to every k-th point (noted in meta).
MAX_POINTS: int = 1_000_000
# Steps beyond ±this (int64, what the analysis and the store hold) are skipped with a note.
MAX_STEP: int = 2**63 - 1
# A TensorBoard event record claiming more bytes than this is an error, not an allocation.
MAX_TB_RECORD_BYTES: int = 64 * 1024 * 1024
# Wall-clock seconds any one run-store query may take before it is interrupted.
QUERY_SECONDS: float = 30.0
