"""The ``unstuck`` console script."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unstuck",
        description="Detect, diagnose and rescue loss plateaus in deep-learning training.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from unstuck.cli.demo_tasks import DEFAULT_TASK, TASKS

    tasks = "\n".join(
        f"  {name:15} {task.description}; {task.steps} steps ({task.quick_steps} with --quick)"
        for name, task in TASKS.items()
    )
    demo = sub.add_parser(
        "demo",
        help="train a plateau-prone model as written, with ReduceLROnPlateau and with unstuck",
        description=(
            "Trains a plateau-prone model on a bundled real dataset (scikit-learn digits) on the "
            "CPU three times from the same seed — as written, with torch's ReduceLROnPlateau on "
            "the validation loss, and with unstuck's policy='rescue' — then prints what unstuck "
            "detected, diagnosed and did, the three runs' final losses and unstuck's per-step "
            "cost measured in the run, and writes an HTML report with the curves."
        ),
        epilog=f"tasks:\n{tasks}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--task",
        choices=sorted(TASKS),
        default=DEFAULT_TASK,
        help=f"the task (default {DEFAULT_TASK}; see the list below)",
    )
    demo.add_argument("--steps", type=int, default=None, help="training steps per run")
    demo.add_argument("--seed", type=int, default=0, help="seed for data split, init and batches")
    demo.add_argument(
        "--run-dir",
        default="unstuck-demo",
        help="where the run store goes (default: ./unstuck-demo); 'none' records nothing",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="fewer steps per run (see the task list below)",
    )
    demo.add_argument("--json", action="store_true", help="print the result as JSON only")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    explain = sub.add_parser(
        "explain",
        help="the longer story behind a cause, with what to do",
        description="Explains a cause of the catalog (the code a finding names) and its "
        "remedies. Without a cause, lists the catalog.",
    )
    explain.add_argument("cause", nargs="?", help="a cause code, e.g. lr_too_low")

    from unstuck.cli import report

    report.register(sub)
    from unstuck.cli import analyze

    analyze.register(sub)
    from unstuck.cli import run

    run.register(sub)
    from unstuck.cli import watch

    watch.register(sub)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from unstuck.cli.demo import format_demo, run_demo

    run_dir = None if str(args.run_dir).lower() == "none" else args.run_dir
    if args.json:
        logging.getLogger("unstuck").setLevel(logging.WARNING)
    try:
        result = run_demo(
            args.task,
            steps=args.steps,
            seed=args.seed,
            run_dir=run_dir,
            quick=args.quick,
            progress=not (args.no_progress or args.json),
        )
    except ValueError as exc:
        print(f"unstuck demo: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for line in format_demo(result):
            print(line)
    return 0


def _explain(cause: str | None) -> int:
    import difflib

    from unstuck.diagnose import all_rules, explain

    rules = all_rules()
    if cause is None:
        print("causes unstuck can name (`unstuck explain CAUSE` for one):")
        for code in sorted(rules):
            doc = (type(rules[code]).__doc__ or "").strip().splitlines()[0]
            print(f"  {code:26} {doc}")
        return 0
    code = cause.strip().lower().replace("-", "_")
    if code not in rules:
        close = difflib.get_close_matches(code, list(rules), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "`unstuck explain` lists them"
        print(f"unstuck explain: no cause {cause!r}; {hint}", file=sys.stderr)
        return 2
    print(explain(code))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        from unstuck.cli import run

        return run.main(argv[1:])
    args = parser.parse_args(argv)
    if args.version:
        from unstuck import __version__

        print(__version__)
        return 0
    if args.command == "demo":
        return _demo(args)
    if args.command == "explain":
        return _explain(args.cause)
    if args.command == "report":
        return int(args.handler(args))
    if args.command in ("analyze", "run", "watch"):
        return int(args.handler(args))
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
