"""Diagnosis benchmark: seeded-fault scenarios and healthy controls, against naive baselines.

    python bench/diagnosis.py [--quick] [--seeds N] [--only NAME,...] [--workers N] [--json PATH]

Every scenario in ``bench/scenarios/`` (one file each; ``expected`` is its cause code, or
``None`` for a healthy control) is trained under ``Guard(policy="observe")`` with the Guard's
defaults, once per seed. A run's *ranking* lists the causes of every finding recorded during the
run by their highest confidence.

* top-1: the expected cause ranks first; top-3: it ranks among the first three. Overall figures
  are over all seeded runs; ``per_cause`` averages the runs of each expected cause.
* healthy false rate: the share of healthy-control runs with any finding of confidence ≥ 0.5.
  ``healthy_false_rate_excluding_converged`` leaves out ``converged``, which on a finished
  healthy run is the right answer rather than a false alarm; both are reported.
* baselines, on the same runs: ``random`` ranks the catalog's causes uniformly at random (its
  expected top-k accuracy is k / number of causes); ``most_frequent`` always ranks the causes by
  how many scenarios expect them. Both name a cause on every run, so their healthy false rate
  is 1.

``--quick`` runs one seed of the scenarios marked ``quick`` (under 3 minutes on 2 cores).
Results go to ``bench/results/diagnosis.json`` unless ``--json`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FALSE_FINDING_CONFIDENCE = 0.5  # the bar: a healthy run with such a finding is a false one


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))


def run_one(job: tuple[str, int, bool]) -> dict[str, Any]:
    """Run one scenario at one seed; returns plain data (it crosses a process boundary)."""
    _init_worker()
    import logging

    from scenarios import load_scenarios

    logging.getLogger("unstuck").setLevel(logging.WARNING)
    name, seed, short = job
    scenario = load_scenarios()[name]
    t0 = time.perf_counter()
    result = scenario.run(seed, short)
    return {
        "scenario": name,
        "seed": seed,
        "expected": scenario.expected,
        "ranking": result.ranking(),
        "findings": [
            {
                "cause": f.cause,
                "confidence": round(f.confidence, 3),
                "step": f.step,
                "series": f.series,
                "summary": f.summary,
            }
            for f in result.findings
        ],
        "plateaus": len(result.plateaus),
        "final_loss": result.final_loss,
        "seconds": time.perf_counter() - t0,
    }


def score(runs: list[dict[str, Any]], causes: list[str]) -> dict[str, Any]:
    seeded = [r for r in runs if r["expected"] is not None]
    healthy = [r for r in runs if r["expected"] is None]

    def top(r: dict[str, Any], k: int) -> bool:
        return r["expected"] in [c for c, _ in r["ranking"][:k]]

    per_cause: dict[str, dict[str, Any]] = {}
    for cause in sorted({r["expected"] for r in seeded}):
        mine = [r for r in seeded if r["expected"] == cause]
        per_cause[cause] = {
            "runs": len(mine),
            "top1": sum(top(r, 1) for r in mine) / len(mine),
            "top3": sum(top(r, 3) for r in mine) / len(mine),
            "named_first": dict(Counter(r["ranking"][0][0] if r["ranking"] else "-" for r in mine)),
        }

    def false(r: dict[str, Any], skip: frozenset[str] = frozenset()) -> bool:
        return any(c not in skip and p >= FALSE_FINDING_CONFIDENCE for c, p in r["ranking"])

    k = len(causes)
    frequency = Counter(r["expected"] for r in seeded)
    by_frequency = sorted(frequency, key=lambda c: (-frequency[c], c))
    n = max(len(seeded), 1)
    return {
        "top1": sum(top(r, 1) for r in seeded) / n,
        "top3": sum(top(r, 3) for r in seeded) / n,
        "healthy_false_rate": sum(false(r) for r in healthy) / max(len(healthy), 1),
        "healthy_false_rate_excluding_converged": sum(
            false(r, frozenset({"converged"})) for r in healthy
        )
        / max(len(healthy), 1),
        "seeded_runs": len(seeded),
        "healthy_runs": len(healthy),
        "per_cause": per_cause,
        "healthy": {
            r["scenario"] + f"@{r['seed']}": [(c, round(p, 3)) for c, p in r["ranking"]]
            for r in healthy
        },
        "baselines": {
            "random": {"top1": 1 / k, "top3": min(3, k) / k, "healthy_false_rate": 1.0},
            "most_frequent": {
                "top1": sum(r["expected"] == by_frequency[0] for r in seeded) / n,
                "top3": sum(r["expected"] in by_frequency[:3] for r in seeded) / n,
                "healthy_false_rate": 1.0,
            },
        },
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| diagnoser | top-1 | top-3 | healthy false rate |",
        "|---|---|---|---|",
        f"| unstuck | {result['top1']:.3f} | {result['top3']:.3f} | "
        f"{result['healthy_false_rate']:.3f} |",
    ]
    for name, b in result["baselines"].items():
        lines.append(
            f"| {name} | {b['top1']:.3f} | {b['top3']:.3f} | {b['healthy_false_rate']:.3f} |"
        )
    lines += [
        "",
        "| expected cause | runs | top-1 | top-3 | named first |",
        "|---|---|---|---|---|",
    ]
    for cause, c in result["per_cause"].items():
        named = ", ".join(f"{k} ×{v}" for k, v in sorted(c["named_first"].items()))
        lines.append(f"| {cause} | {c['runs']} | {c['top1']:.2f} | {c['top3']:.2f} | {named} |")
    lines += ["", "| healthy run | findings (confidence) |", "|---|---|"]
    for run, ranking in result["healthy"].items():
        shown = ", ".join(f"{c} {p:.2f}" for c, p in ranking) or "none"
        lines.append(f"| {run} | {shown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Diagnosis benchmark.")
    ap.add_argument("--quick", action="store_true", help="one seed of the quick subset")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--short", action="store_true", help="the shortened runs the tests use")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "diagnosis.json")
    args = ap.parse_args(argv)

    _init_worker()
    from scenarios import load_scenarios
    from unstuck.diagnose import all_rules

    scenarios = load_scenarios()
    names = [n for n in args.only.split(",") if n] or sorted(scenarios)
    unknown = sorted(set(names) - set(scenarios))
    if unknown:
        ap.error(f"unknown scenarios {unknown}; known: {', '.join(sorted(scenarios))}")
    if args.quick:
        names = [n for n in names if scenarios[n].quick]
    seeds = 1 if args.quick else args.seeds
    jobs = [(n, s, args.short) for n in names for s in range(seeds)]
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, initializer=_init_worker) as pool:
            runs = list(pool.map(run_one, jobs, chunksize=1))
    else:
        runs = [run_one(j) for j in jobs]
    result = score(runs, sorted(all_rules()))
    result["runs"] = runs
    result["seconds"] = time.perf_counter() - t0
    result["scenario_seconds_max"] = max((r["seconds"] for r in runs), default=0.0)
    result["scenario_seconds_median"] = statistics.median([r["seconds"] for r in runs] or [0.0])
    print(table(result))
    print(
        f"\n{len(runs)} runs ({len(names)} scenarios × {seeds} seeds) in {result['seconds']:.0f} s;"
        f" slowest run {result['scenario_seconds_max']:.1f} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
