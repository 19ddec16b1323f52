"""Fuzz every ``unstuck analyze`` reader with 10,000+ generated inputs and print the counts.

Usage: ``python bench/fuzz_readers.py [--per-case N]`` (default 500 inputs for each of the
readers x {random bytes, random rows}, detection included as a reader: 10,000 in all).

Prints one JSON object: ``results`` (a RunData), ``clean_errors`` (a one-line LogFormatError),
``tracebacks`` (any other exception; the first few are listed), ``timeouts`` (an input that
took over the per-input bound). Issue 21's bar is zero tracebacks and zero timeouts. It reuses
the generators of ``tests/test_fuzz_readers.py`` so the suite and the bench fuzz the same inputs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_fuzz_readers import (
    FORMATS,
    ROWS,
    TIME_BOUND_S,
    outcome,
    write_bytes,
    write_rows,
)

PER_CASE = 500  # inputs per (reader, kind): 10 readers x 2 kinds x 500 = 10,000
HANG_S = 30  # an input still running after this is interrupted and counted as a timeout
SHOWN = 5  # tracebacks listed in the output


class _HangError(Exception):
    """An input still being read after ``HANG_S``."""


def _alarm(signum: int, frame: object) -> None:
    raise _HangError


def _run(
    counts: Counter[str], shown: list[str], fmt: str | None, make: Callable[[pathlib.Path], Any]
) -> None:
    """One input: its outcome counted, never raised."""
    with tempfile.TemporaryDirectory() as tmp:
        path = make(pathlib.Path(tmp))
        start = time.monotonic()
        signal.alarm(HANG_S)
        try:
            kind = outcome(path, fmt)
        except _HangError:
            kind = "timeouts"
        except Exception as exc:  # the count this bench exists for
            kind = "tracebacks"
            if len(shown) < SHOWN:
                last = traceback.format_exception(exc)[-2:]
                shown.append(f"{fmt}: {''.join(last).strip()}")
        finally:
            signal.alarm(0)
        if kind == "result":
            kind = "results"
        elif kind == "error":
            kind = "clean_errors"
        if kind in ("results", "clean_errors") and time.monotonic() - start > TIME_BOUND_S:
            kind = "timeouts"
        counts[kind] += 1


def _fuzz_reader(fuzz: settings, fmt: str | None, mine: Counter[str], shown: list[str]) -> None:
    """``fuzz.max_examples`` random byte files and as many files of random rows for ``fmt``."""

    @fuzz
    @given(data=st.binary(max_size=4096))
    def on_bytes(data: bytes) -> None:
        _run(mine, shown, fmt, lambda folder: write_bytes(folder, fmt, data))

    @fuzz
    @given(rows=ROWS)
    def on_rows(rows: list[dict[str, Any]]) -> None:
        _run(mine, shown, fmt, lambda folder: write_rows(folder, fmt, rows))

    on_bytes()
    on_rows()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-case", type=int, default=PER_CASE)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    counts: Counter[str] = Counter()
    per_reader: dict[str, Counter[str]] = {}
    shown: list[str] = []
    fuzz = settings(
        max_examples=args.per_case,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    start = time.monotonic()
    for fmt in FORMATS:
        mine: Counter[str] = Counter()
        _fuzz_reader(fuzz, fmt, mine, shown)
        per_reader[fmt or "detect"] = mine
        counts.update(mine)
    report = {
        "inputs": sum(counts.values()),
        "results": counts["results"],
        "clean_errors": counts["clean_errors"],
        "tracebacks": counts["tracebacks"],
        "timeouts": counts["timeouts"],
        "seconds": round(time.monotonic() - start, 1),
        "per_reader": {k: dict(v) for k, v in per_reader.items()},
        "first_tracebacks": shown,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
