"""Run unstuck's diagnosis on the fault zoo and print its figures (``docs/zoo.md``).

    python bench/zoo/run.py --split test [--quick] [--jobs N] [--json PATH]
        [--programs A,B] [--operators X,Y] [--max-steps N] [--no-healthy]

Every run trains under ``Guard(policy="observe")`` with the Guard's defaults; every mutant is
also trained without unstuck, beside its reference, for the hurt check (``plan.hurt``). The
JSON holds the figures of ``metrics.score`` (keys: split, quick, top1, top3,
healthy_false_rate, ece, seeded_runs, healthy_runs, not_hurt_runs, per_cause, per_program,
reliability, not_hurt, healthy_false, not_in_zoo, errors, runs, seconds). A run that raises
is recorded under ``errors`` and left out of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("unstuck").setLevel(logging.WARNING)
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))


def _run(job: Any) -> dict[str, Any]:
    """One run; an exception is recorded (and the run left out of every figure), not raised:
    one broken mutant must not lose an hour of runs."""
    _init_worker()
    import traceback
    from dataclasses import asdict

    from zoo import SPLIT
    from zoo.plan import run_job

    try:
        return run_job(job)
    except Exception as exc:
        return {
            **asdict(job),
            "key": job.key,
            "split": SPLIT[job.program],
            "expected": job.expected,
            "ranking": [],
            "findings": [],
            "hurt": None,
            "scored": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Diagnosis on the fault zoo.")
    ap.add_argument("--split", choices=("train", "test", "all"), default="test")
    ap.add_argument("--quick", action="store_true", help="one mutant per operator, one healthy")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "zoo.json")
    ap.add_argument("--programs", default="", help="comma-separated base programs (a subset)")
    ap.add_argument("--operators", default="", help="comma-separated operators (a subset)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run's steps (tests)")
    ap.add_argument("--no-healthy", action="store_true", help="mutants only")
    args = ap.parse_args(argv)

    _init_worker()
    from zoo import SPLIT
    from zoo.metrics import score, tables
    from zoo.operators import NOT_IN_ZOO, OPERATORS
    from zoo.plan import zoo_runs

    only = set(args.programs.split(",")) if args.programs else None
    unknown_programs = sorted((only or set()) - set(SPLIT))
    if unknown_programs:
        ap.error(f"unknown programs {unknown_programs}")
    jobs = zoo_runs(args.split, quick=args.quick, only=only)
    if args.operators:
        keep_ops = set(args.operators.split(","))
        unknown = sorted(keep_ops - set(OPERATORS))
        if unknown:
            ap.error(f"unknown operators {unknown}")
        jobs = [j for j in jobs if j.operator is None or j.operator in keep_ops]
    if args.no_healthy:
        jobs = [j for j in jobs if j.operator is not None]
    if args.max_steps:
        jobs = [replace(j, max_steps=args.max_steps) for j in jobs]
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []

    def progress(r: dict[str, Any]) -> None:
        records.append(r)
        top = ", ".join(f"{c} {p:.2f}" for c, p in r["ranking"][:3]) or "nothing"
        hurt = "" if r["hurt"] is None else f" hurt={r['hurt']}"
        print(f"[{len(records)}/{len(jobs)}] {r['key']}{hurt}: {top}", file=sys.stderr, flush=True)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_init_worker) as pool:
            for r in pool.map(_run, jobs, chunksize=1):
                progress(r)
    else:
        for j in jobs:
            progress(_run(j))
    result = {"split": args.split, "quick": args.quick, **score(records)}
    result["errors"] = {r["key"]: r["error"] for r in records if "error" in r}
    result["not_in_zoo"] = NOT_IN_ZOO
    result["runs"] = records
    result["seconds"] = time.perf_counter() - t0
    print(tables(result))
    for key, error in result["errors"].items():
        print(f"error (left out): {key}: {error}")
    print(f"\n{len(records)} runs in {result['seconds']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
