"""The update/weight ratio healthy training shows: the target of ``lr_too_low``'s raise.

    python bench/zoo/update_ratios.py [--split train] [--jobs N] [--json PATH]

``lr_too_low`` estimates the factor an LR needs as target / measured update-ratio. CS231n's
"about 1e-3" is a rule of thumb for SGD late in training; the raise it asks for left the zoo's
Adam runs an order of magnitude short (a digits MLP 224× too low was raised ×21, then waited a
200-step verdict for the rest). This script measures the target once, on the zoo's TRAIN split
only (it refuses the test split): every train program's healthy runs (seeds 0–2, the default
variant) under ``Guard(policy="observe")`` at its defaults, each run's median ``update_ratio``
over the whole run, each program's median over its seeds, and the median over the programs
(each program one vote, whatever its optimizer). ``RAISE_TARGET_RATIO`` in
``unstuck.diagnose.causes.lr_too_low`` holds the figure this printed (docs/causes/lr_too_low.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def _median_ratio(job: Any) -> tuple[str, str, str, float | None]:
    """One healthy run under the Guard: (program, optimizer, key, median update ratio)."""
    import logging

    import numpy as np
    import torch

    torch.set_num_threads(1)
    logging.getLogger("unstuck").setLevel(logging.WARNING)
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import unstuck
    from zoo._spec import execute
    from zoo.plan import build

    seen: dict[str, Any] = {}

    class Kept(unstuck.Guard):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            seen["guard"] = self

    real = unstuck.Guard
    unstuck.Guard = Kept  # type: ignore[misc]
    try:
        spec, _ = build(job)
        execute(spec, job.seed, guard=True)
    finally:
        unstuck.Guard = real  # type: ignore[misc]
    guard = seen["guard"]
    ratios = guard.evidence.series("update_ratio")[1]
    ratios = ratios[np.isfinite(ratios)]
    median = float(np.median(ratios)) if ratios.size else None
    return job.program, type(guard.optimizer).__name__, job.key, median


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("train",), default="train", help="train only")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from zoo.plan import zoo_runs

    jobs = [j for j in zoo_runs(args.split) if j.operator is None and j.variant == ""]
    with ProcessPoolExecutor(max(args.jobs, 1)) as pool:
        runs = list(pool.map(_median_ratio, jobs))
    by_program: dict[str, list[float]] = {}
    optimizer: dict[str, str] = {}
    for program, opt, _, median in runs:
        optimizer[program] = opt
        if median is not None:
            by_program.setdefault(program, []).append(median)
    per_program = {p: statistics.median(v) for p, v in sorted(by_program.items())}
    target = statistics.median(per_program.values())
    out = {
        "split": args.split,
        "runs": len(runs),
        "per_program": per_program,
        "optimizer": optimizer,
        "target": target,
    }
    for program, value in per_program.items():
        print(f"{program:36s} {optimizer[program]:8s} {value:.2e}")
    print(f"median over {len(per_program)} programs: {target:.2e}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
