"""``unstuck run``: an unmodified training script under a Guard (docs/run.md).

The script runs in a child process whose ``PYTHONPATH`` starts with unstuck's ``sitecustomize``
folder and whose ``UNSTUCK_AUTORUN`` holds the options; ``unstuck.integrations.autorun`` does
the watching there. The command's exit status is the script's own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_command", "main", "register", "run_command", "split_argv"]

DEFAULT_ROOT = "unstuck-runs"  # run stores go to ./unstuck-runs/<script>-<time>


DESCRIPTION = (
    "Runs SCRIPT (a .py file, '-m module', or a launcher such as torchrun) with unstuck "
    "watching every optimizer it steps: no code change. Prints what unstuck finds and a "
    "summary at exit, and writes a run store and report. The script's output and exit "
    "status are its own; any error inside unstuck turns it off with one warning."
)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        choices=("observe", "rescue"),
        default="observe",
        help="observe (default) changes nothing; rescue acts where safe (one optimizer, its "
        "model found), else observes and says why",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help=f"where the run store goes (default: ./{DEFAULT_ROOT}/<script>-<time>); "
        "'none' records nothing",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write report.html")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``run`` command to the ``unstuck`` parser's subparsers (for ``--help``; the
    command line itself is split by :func:`main`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run an unmodified training script under unstuck", description=DESCRIPTION
    )
    _add_arguments(parser)
    parser.add_argument(
        "script",
        nargs=argparse.REMAINDER,
        metavar="SCRIPT [ARGS...]",
        help="the script and its arguments (or -m module ..., or torchrun ...)",
    )
    return parser


OPTIONS_WITH_VALUE = ("--policy", "--run-dir")
FLAGS = ("--no-report", "-h", "--help")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``unstuck run``'s own options, and the command from the first token that is not one
    (argparse cannot leave ``-m module`` or a launcher's flags alone)."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[:i], argv[i + 1 :]
        if token in FLAGS or any(token.startswith(o + "=") for o in OPTIONS_WITH_VALUE):
            i += 1
        elif token in OPTIONS_WITH_VALUE:
            i += 2
        else:
            break
    return argv[:i], argv[i:]


def main(argv: list[str]) -> int:
    """``unstuck run ARGS``: unstuck's options, then the command, run as it is."""
    own, command = split_argv(argv)
    parser = argparse.ArgumentParser(
        prog="unstuck run",
        usage="unstuck run [--policy {observe,rescue}] [--run-dir DIR] [--no-report] "
        "SCRIPT [ARGS...]",
        description=DESCRIPTION,
    )
    _add_arguments(parser)
    args = parser.parse_args(own)
    args.script = command
    return run_command(args)


def build_command(command: list[str]) -> list[str]:
    """The child's argv: a .py file or ``-m`` runs under this Python; anything else as is."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("name the script to run: unstuck run train.py [ARGS...]")
    first = command[0]
    if first == "-m" or first.endswith(".py"):
        return [sys.executable, *command]
    return list(command)


def _default_run_dir(command: list[str]) -> Path:
    name = next((Path(c).stem for c in command if c.endswith(".py")), None)
    if name is None:
        name = command[1] if command[0] == "-m" and len(command) > 1 else Path(command[0]).name
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(DEFAULT_ROOT) / f"{name}-{stamp}"


def run_command(args: argparse.Namespace) -> int:
    """The ``run`` command: start the child, wait, return its exit status."""
    try:
        argv = build_command(list(args.script))
    except ValueError as exc:
        print(f"unstuck run: {exc}", file=sys.stderr)
        return 2
    if argv[0] == sys.executable and argv[1] != "-m" and not Path(argv[1]).is_file():
        print(f"unstuck run: no such script: {argv[1]}", file=sys.stderr)
        return 2
    command = argv[1:] if argv[0] == sys.executable else argv
    run_dir: Path | None
    if args.run_dir is not None and str(args.run_dir).lower() == "none":
        run_dir = None
    else:
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(command)
    config = {
        "policy": args.policy,
        "run_dir": None if run_dir is None else str(run_dir.resolve()),
        "report": not args.no_report,
    }
    site = Path(__file__).resolve().parents[1] / "_site"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["UNSTUCK_AUTORUN"] = json.dumps(config)
    where = f"; run store: {run_dir}" if run_dir is not None else ""
    print(
        f"unstuck run: watching {' '.join(command)} (policy {args.policy}){where}", file=sys.stderr
    )
    try:
        proc = subprocess.run(argv, env=env, check=False)
    except FileNotFoundError:
        print(f"unstuck run: cannot start {argv[0]}: not found", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    code = proc.returncode
    return 128 - code if code < 0 else code
