"""``unstuck report RUN_DIR``: render a guarded run's store as one self-contained HTML file."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unstuck.record.rundata import RunData

__all__ = ["register", "run_report", "summary"]

NO_STORE = (
    "no run store in {path}; pass the run_dir you gave unstuck.Guard(run_dir=...) "
    "(the folder holding unstuck.sqlite) or that unstuck.sqlite file"
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` command to the ``unstuck`` parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="write an HTML report of a guarded run (plots, findings, actions)",
        description=(
            "Reads the run store a Guard wrote (RUN_DIR/unstuck.sqlite) and writes one "
            "self-contained HTML file: loss with plateaus and actions, learning rate, gradient "
            "norms, update/weight ratios, findings with evidence, actions with their "
            "verification, probe results. The file opens offline in any browser."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the Guard's run_dir (or its .sqlite)")
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="where to write the report (default: RUN_DIR/report.html)",
    )
    parser.add_argument("--run-id", default=None, help="which run of the store (default: latest)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary only")
    parser.set_defaults(handler=run_report)
    return parser


def _finite(value: Any) -> Any:
    """JSON without NaN/Infinity tokens (which strict parsers reject): non-finite → null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def summary(run: RunData, report: Path) -> dict[str, Any]:
    """What ``--json`` prints: the report path, counts, and plateaus/findings/actions as dicts."""
    out: dict[str, Any] = _finite(
        {
            "report": str(report),
            "source": run.source,
            "run_id": run.meta.get("run_id"),
            "counts": {
                "series": len(run.series),
                "points": int(sum(s.size for s, _ in run.series.values())),
                "plateaus": len(run.plateaus),
                "findings": len(run.findings),
                "actions": len(run.actions),
                "probes": len(run.probes),
            },
            "plateaus": [p.to_dict() for p in run.plateaus],
            "findings": [f.to_dict() for f in run.findings],
            "actions": [a.to_dict() for a in run.actions],
        }
    )
    return out


def run_report(args: argparse.Namespace) -> int:
    """The ``report`` command: 0 written, 2 bad input or an unwritable output."""
    from unstuck.record.report import REPORT_FILENAME, write_report
    from unstuck.record.rundata import load_run
    from unstuck.record.store import STORE_FILENAME

    source = Path(args.run_dir)
    store = source / STORE_FILENAME if source.is_dir() else source
    if not store.is_file():
        print(f"unstuck report: {NO_STORE.format(path=source)}", file=sys.stderr)
        return 2
    try:
        run = load_run(source, args.run_id)
    except (ValueError, FileNotFoundError) as exc:
        print(f"unstuck report: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    except (RecursionError, MemoryError, OverflowError) as exc:  # a hostile store's payloads
        print(
            f"unstuck report: cannot read {store}: {type(exc).__name__} "
            "(not a run store unstuck wrote?)",
            file=sys.stderr,
        )
        return 2
    output = Path(args.output) if args.output else store.parent / REPORT_FILENAME
    try:
        path = write_report(run, output)
    except OSError as exc:
        print(f"unstuck report: cannot write {output}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary(run, path), indent=2))
    else:
        counts = summary(run, path)["counts"]
        print(f"report written: {path}")
        print(
            f"  {counts['series']} series, {counts['plateaus']} plateaus, "
            f"{counts['findings']} findings, {counts['actions']} actions, "
            f"{counts['probes']} probes — open it in a browser (no network needed)"
        )
    return 0
