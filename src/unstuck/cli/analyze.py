"""``unstuck analyze PATH``: plateaus and likely causes in an existing training log.

Reads a TensorBoard folder, an HF ``trainer_state.json``, a Lightning ``metrics.csv``, a Keras
``CSVLogger`` file, an MLflow run or unstuck's own run store (``unstuck.analyze``), runs the live
detector and the rules the log's series allow, prints a table (or ``--json``) and writes the
HTML report. Exit status 0 on success, 2 when the input cannot be read (one line on stderr that
names the known formats).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unstuck.record.rundata import RunData

__all__ = ["default_report_path", "format_table", "register", "run_analyze"]

REPORT_SUFFIX = "-report.html"
SHOWN_EPISODES = 3  # oscillating/diverging stretches printed per series and state
MAX_NAMES_SHOWN = 8  # series named in the one-line error of a log without a loss


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``analyze`` command to the ``unstuck`` parser's subparsers."""
    from unstuck.analyze import FORMATS

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "analyze",
        help="find plateaus and likely causes in an existing training log",
        description=(
            "Reads a log another tool wrote (TensorBoard event folder or file, HF "
            "trainer_state.json, Lightning metrics.csv, Keras CSVLogger .csv, an MLflow run, "
            "unstuck's run store, any CSV or JSON-lines file of metrics, or a script's "
            "printout), runs unstuck's plateau detector on the training and "
            "validation loss and the diagnosis rules the logged series support, prints what it "
            "found and writes an HTML report. See docs/analyze.md."
        ),
    )
    parser.add_argument(
        "path",
        metavar="PATH",
        help="the log: a file or folder, or mlflow:RUN_ID for an MLflow run",
    )
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=FORMATS,
        default=None,
        help="read PATH as this format (default: recognised from PATH)",
    )
    parser.add_argument(
        "--run",
        default=None,
        help="which run, when PATH holds several (TensorBoard sub-folder, run store run_id, "
        "MLflow run id, run name in a W&B CSV export; in a file of runs one after another, "
        "the run's number, 1 = the first; default: the last)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI for mlflow:RUN_ID (default: MLFLOW_TRACKING_URI)",
    )
    parser.add_argument(
        "--loss",
        metavar="NAME",
        default=None,
        help="analyse this series as the training loss (a tag the name table does not know)",
    )
    parser.add_argument(
        "--val-loss",
        metavar="NAME",
        default=None,
        help="analyse this series as the validation loss",
    )
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help=f"where to write the HTML report (default: <PATH stem>{REPORT_SUFFIX} next to PATH)",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    parser.set_defaults(handler=run_analyze)
    return parser


def default_report_path(source: str) -> Path:
    """``<stem>-report.html`` next to the input; in the current folder for ``mlflow:RUN_ID``."""
    if source.startswith("mlflow:"):
        return Path(f"mlflow-{source.split(':', 1)[1] or 'run'}{REPORT_SUFFIX}")
    path = Path(source)
    if path.is_dir():
        resolved = path.resolve()
        return resolved.parent / f"{resolved.name}{REPORT_SUFFIX}"
    return path.with_name(f"{path.stem}{REPORT_SUFFIX}")


def _steps(first: Any, last: Any) -> str:
    if first is None:
        return "-"
    return f"{first}" if first == last else f"{first}–{last}"


def format_table(result: dict[str, Any]) -> list[str]:
    """The human-readable output: series, plateaus, findings, what could and could not run."""
    unit = result["step_unit"]
    lines = [f"unstuck analyze: {result['source']} ({result['format']}; x axis: {unit}s)", ""]
    analyzed = [s for s in result["series"] if "label" in s]
    others = [s["name"] for s in result["series"] if "label" not in s]
    rows = [("series", "points", f"{unit}s", "final state", "plateaus")]
    for s in analyzed:
        name = s["name"] if s["label"] == s["name"] else f"{s['name']} ({s['label']})"
        state = s["final_state"]
        if s["too_few_points"]:
            state += f" (< {result['min_plateau_points']} points)"
        rows.append(
            (
                name,
                str(s["points"]),
                _steps(s["first_step"], s["last_step"]),
                state,
                str(s["plateaus"]),
            )
        )
    if len(rows) == 1:
        lines.append("no loss series found: nothing for the detector to run on")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            cells = [r[0].ljust(widths[0]), r[1].rjust(widths[1])]
            cells += [c.ljust(w) for c, w in zip(r[2:], widths[2:])]
            lines.append("  " + "  ".join(cells).rstrip())
    if others:
        lines.append(f"  other series: {', '.join(others)}")
    lines += ["", "plateaus"]
    if not result["plateaus"]:
        lines.append("  none")
    for p in result["plateaus"]:
        end = "open" if p["end"] is None else p["end"]
        lines.append(
            f"  {p['series']}  {unit}s {p['start']}–{end}  {p['kind']}  "
            f"confidence {p['confidence']:.2f}  (called at {unit} {p['detected_at']})"
        )
    episodes: dict[tuple[str, str], list[str]] = {}
    for s in analyzed:
        for e in s.get("episodes", []):
            end = "open" if e["end"] is None else e["end"]
            episodes.setdefault((s["label"], e["state"]), []).append(f"{e['start']}–{end}")
    if episodes:
        lines += ["", "oscillating / diverging (the detector's state on the loss)"]
    for (series, state), spans in episodes.items():
        more = f" (+{len(spans) - SHOWN_EPISODES} more)" if len(spans) > SHOWN_EPISODES else ""
        lines.append(f"  {series}  {state}  {unit}s {', '.join(spans[:SHOWN_EPISODES])}{more}")
    lines += ["", "findings"]
    if not result["findings"] and (result["plateaus"] or episodes):
        # A stall or a swing with no cause is what most logs give: say so, not just "none".
        lines.append(
            "  none: this log cannot tell the cause of what the detector saw (only the rules "
            "under 'rules run' can read it; unstuck.Guard records what the others need)"
        )
    elif not result["findings"]:
        lines.append("  none")
    for f in result["findings"]:
        live = " (recorded live)" if f.get("evidence", {}).get("recorded_live") else ""
        lines.append(
            f"  {f['cause']} ({f['series']}) {f['confidence']:.2f} at {unit} {f['step']}{live} "
            f"— {f['summary']}"
        )
    lines += ["", "rules run: " + (", ".join(result["rules_run"]) or "none")]
    for code, why in result["rules_left_out"].items():
        lines.append(f"left out: {code} — {why}")
    missing = result["rules_missing_inputs"]
    if missing:
        lines.append(f"{len(missing)} other rules need inputs this log lacks (--json lists them)")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    carried = result.get("recorded_live") or []
    if carried:
        lines.append(
            f"note: {', '.join(carried)} recorded live: the store does not hold the inputs "
            "to redo them (per-sample losses, activation or optimizer-state summaries)"
        )
    recorded = result.get("recorded")
    if recorded and result.get("replayed") and _same_plateaus(recorded, result):
        lines.append("note: replayed at the Guard's own flushes: the live run's plateaus")
    elif recorded:
        n_plateaus, n_findings = len(recorded["plateaus"]), len(recorded["findings"])
        lines.append(
            f"note: the live run recorded {n_plateaus} plateau{'s' * (n_plateaus != 1)} and "
            f"{n_findings} finding{'s' * (n_findings != 1)} (unstuck report shows them)"
        )
    if result["report"]:
        lines += ["", f"report: {result['report']}"]
    return lines


def _same_plateaus(recorded: dict[str, Any], result: dict[str, Any]) -> bool:
    def spans(plateaus: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((p["series"], p["start"], p["end"]) for p in plateaus)

    return spans(recorded["plateaus"]) == spans(result["plateaus"])


def run_analyze(args: argparse.Namespace) -> int:
    """The ``analyze`` command: read, analyze, print, write the report."""
    from unstuck.analyze import LogFormatError, analyze, load, summary
    from unstuck.analyze.analysis import loss_series

    try:
        run = load(
            args.path,
            fmt=args.fmt,
            run=args.run,
            tracking_uri=args.tracking_uri,
            loss=args.loss,
            val_loss=args.val_loss,
        )
    except (LogFormatError, ImportError) as exc:
        print(f"unstuck analyze: {exc}", file=sys.stderr)
        return 2
    if not loss_series(run):
        names = sorted(run.series)
        shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (" …" if len(names) > MAX_NAMES_SHOWN else "")
        print(
            f"unstuck analyze: {args.path} holds no loss series (it has: {shown or 'nothing'}); "
            "name the column to analyse with --loss NAME",
            file=sys.stderr,
        )
        return 2
    run = analyze(run)
    report, report_error = None, None
    if not args.no_report:
        report, report_error = _write_report(run, args.output or default_report_path(args.path))
    result = summary(run, report)
    if report_error:
        result["report_error"] = report_error
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for line in format_table(result):
            print(line)
        if report_error:
            print(f"report not written: {report_error}", file=sys.stderr)
    return 0


def _write_report(run: RunData, path: str | Path) -> tuple[str | None, str | None]:
    """Write the HTML report; one that cannot be written is a note, not a failed analysis."""
    try:
        from unstuck.record.report import write_report

        return str(write_report(run, path)), None
    except (ImportError, OSError) as exc:
        logging.getLogger(__name__).debug("report not written", exc_info=True)
        return None, str(exc)
