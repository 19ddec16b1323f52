"""``unstuck watch PATH...``: a fleet view of many runs, which need attention now.

Refreshes every ``--interval`` seconds (a live table), or once (``--once``); prints JSON with
``--json``, writes a dashboard page with ``--html``, and runs ``--on-stall CMD`` with a run's
JSON on stdin when it enters a plateau or divergence, once per episode. Exit status 0, or 2 with
one line on stderr when a path is missing or an option is wrong. docs/watch.md has the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

__all__ = ["register", "run_watch"]

DEFAULT_INTERVAL = 30.0  # seconds between refreshes of the live view
CLEAR = "\x1b[H\x1b[2J"  # cursor home and clear screen, for the live table on a terminal

DESCRIPTION = (
    "Watches many runs at once, running now or finished: folders of unstuck run stores, "
    "TensorBoard log roots (one run per sub-folder), folders of HF output_dirs or Lightning "
    "lightning_logs/, loose CSV / JSON-lines / printed logs, and MLflow experiments "
    "(mlflow:NAME with --tracking-uri). Each refresh reads only what is new, feeds it to each "
    "run's own plateau detector and shows the runs that need attention first. See docs/watch.md."
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``watch`` command to the ``unstuck`` parser's subparsers."""
    from unstuck.fleet.watcher import DEFAULT_STALE_AFTER

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "watch", help="a live view of many runs: which are stuck right now", description=DESCRIPTION
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a folder of runs, a log file, or mlflow:EXPERIMENT (mlflow: alone: all experiments)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help=f"seconds between refreshes (default {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument("--once", action="store_true", help="refresh once, print and exit")
    parser.add_argument(
        "--json", action="store_true", help="print each refresh as a JSON list of runs"
    )
    parser.add_argument("--html", metavar="FILE", help="write a dashboard page at each refresh")
    parser.add_argument(
        "--on-stall",
        metavar="CMD",
        help="shell command run with the run's JSON on stdin when it enters a plateau or "
        "divergence (once per episode)",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=DEFAULT_STALE_AFTER,
        metavar="SECONDS",
        help="a live run with no new data for this long is stale "
        f"(default {DEFAULT_STALE_AFTER:g})",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (a server, sqlite:///FILE or the .db file) for mlflow:NAME",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="run analyze's rules on a run's whole log when it enters a plateau or divergence "
        "(once per episode) and show their top finding",
    )
    parser.add_argument(
        "--feed",
        choices=("point", "refresh"),
        default="point",
        help="feed each run's detector point by point, as analyze does (default), or each "
        "refresh's new points at once, as a live run's flush does (faster to catch up)",
    )
    parser.set_defaults(handler=run_watch)
    return parser


def run_watch(args: argparse.Namespace) -> int:
    """The ``watch`` command: refresh, print, repeat."""
    from unstuck.fleet.render import format_table, to_json, write_html
    from unstuck.fleet.sources import SourceError
    from unstuck.fleet.watcher import Watcher, shell_hook

    if not args.interval > 0:
        print(f"unstuck watch: --interval must be > 0, got {args.interval:g}", file=sys.stderr)
        return 2
    if not args.stale_after > 0:
        bad = args.stale_after
        print(f"unstuck watch: --stale-after must be > 0, got {bad:g}", file=sys.stderr)
        return 2
    if any(p.startswith("mlflow:") for p in args.paths) and args.tracking_uri is None:
        import os

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            print("unstuck watch: mlflow:NAME needs --tracking-uri", file=sys.stderr)
            return 2
    if args.json:
        logging.getLogger("unstuck").setLevel(logging.WARNING)
    try:
        watcher = Watcher(
            args.paths,
            tracking_uri=args.tracking_uri,
            stale_after=args.stale_after,
            feed=args.feed,
            diagnose=args.diagnose,
            on_stall=shell_hook(args.on_stall) if args.on_stall else None,
        )
    except (SourceError, ImportError, ValueError) as exc:
        print(f"unstuck watch: {exc}", file=sys.stderr)
        return 2
    live = not args.once and not args.json and sys.stdout.isatty()
    try:
        while True:
            try:
                rows = watcher.refresh()
            except SourceError as exc:
                print(f"unstuck watch: {exc}", file=sys.stderr)
                return 2
            if args.html:
                try:
                    write_html(
                        args.html,
                        rows,
                        lambda r: watcher.spark(f"{r['path']}#{r['run_id'] or ''}"),
                        interval=None if args.once else args.interval,
                    )
                except OSError as exc:
                    print(f"unstuck watch: cannot write {args.html}: {exc}", file=sys.stderr)
                    return 2
            if args.json:
                print(to_json(rows, indent=2 if args.once else None), flush=True)
            else:
                text = "\n".join(format_table(rows))
                print((CLEAR if live else "") + text + ("" if live else "\n"), flush=True)
            if args.once:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
