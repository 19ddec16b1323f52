"""The zoo's figures from run records: top-k, healthy false rate, per-cause and per-program
tables, and a reliability table with the expected calibration error.

A run record (``plan.run_job``) carries ``expected`` (a cause code, None for a healthy run),
``ranking`` (causes by their highest confidence over the run, most confident first, as
``bench/diagnosis.py``), ``program`` and ``scored`` (False for a mutant that did not hurt:
not a fault, left out of every figure).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = [
    "END_STATES",
    "FALSE_FINDING_CONFIDENCE",
    "reliability",
    "score",
    "tables",
]

FALSE_FINDING_CONFIDENCE = 0.5  # issue 24 and bench/diagnosis.py: a finding at ≥ 0.5 is an alarm
# End states describe where a run ended, not a fault (docs/diagnosis.md "End states are capped
# below 0.5"): on a healthy run they are neither a false alarm nor scored for calibration.
END_STATES = frozenset({"converged", "capacity_limit"})
BINS = 10  # reliability bins of width 0.1 over [0, 1]


def _top(r: dict[str, Any], k: int) -> bool:
    return r["expected"] in [c for c, _ in r["ranking"][:k]]


def false_alarm(r: dict[str, Any]) -> bool:
    """A finding ≥ 0.5 that is not an end state."""
    return any(c not in END_STATES and p >= FALSE_FINDING_CONFIDENCE for c, p in r["ranking"])


def reliability(runs: list[dict[str, Any]], bins: int = BINS) -> dict[str, Any]:
    """Every finding of every scored run (a cause at its highest confidence in the run) is one
    prediction: right when the cause is the run's seeded cause. On a healthy run every finding
    that is not an end state is wrong, and end states are left out. ECE = Σ_b (n_b / N) ·
    |accuracy_b − mean confidence_b| over bins of equal width (Guo et al. 2017)."""
    points: list[tuple[float, bool]] = []
    for r in runs:
        for cause, p in r["ranking"]:
            if r["expected"] is None and cause in END_STATES:
                continue
            points.append((p, cause == r["expected"]))
    table = []
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        mine = [(p, ok) for p, ok in points if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if not mine:
            table.append({"bin": [lo, hi], "n": 0, "confidence": None, "accuracy": None})
            continue
        conf = sum(p for p, _ in mine) / len(mine)
        acc = sum(ok for _, ok in mine) / len(mine)
        ece += len(mine) / len(points) * abs(acc - conf)
        table.append({"bin": [lo, hi], "n": len(mine), "confidence": conf, "accuracy": acc})
    return {"bins": table, "ece": ece if points else None, "findings": len(points)}


def score(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures over the scored runs of ``records``."""
    runs = [r for r in records if r["scored"]]
    seeded = [r for r in runs if r["expected"] is not None]
    healthy = [r for r in runs if r["expected"] is None]
    n = max(len(seeded), 1)

    per_cause: dict[str, dict[str, Any]] = {}
    for cause in sorted({r["expected"] for r in seeded}):
        mine = [r for r in seeded if r["expected"] == cause]
        per_cause[cause] = {
            "runs": len(mine),
            "top1": sum(_top(r, 1) for r in mine) / len(mine),
            "top3": sum(_top(r, 3) for r in mine) / len(mine),
            "named_first": dict(Counter(r["ranking"][0][0] if r["ranking"] else "-" for r in mine)),
        }
    per_program: dict[str, dict[str, Any]] = {}
    for program in sorted({r["program"] for r in records}):
        mine = [r for r in seeded if r["program"] == program]
        well = [r for r in healthy if r["program"] == program]
        per_program[program] = {
            "split": next(r["split"] for r in records if r["program"] == program),
            "mutants": len(mine),
            "top1": sum(_top(r, 1) for r in mine) / len(mine) if mine else None,
            "top3": sum(_top(r, 3) for r in mine) / len(mine) if mine else None,
            "healthy": len(well),
            "healthy_false": sum(false_alarm(r) for r in well),
        }
    not_hurt = [r for r in records if not r["scored"] and "error" not in r]
    calibration = reliability(runs)
    return {
        "top1": sum(_top(r, 1) for r in seeded) / n,
        "top3": sum(_top(r, 3) for r in seeded) / n,
        "healthy_false_rate": sum(false_alarm(r) for r in healthy) / max(len(healthy), 1),
        "ece": calibration["ece"],
        "seeded_runs": len(seeded),
        "healthy_runs": len(healthy),
        "not_hurt_runs": len(not_hurt),
        "per_cause": per_cause,
        "per_program": per_program,
        "reliability": calibration,
        "not_hurt": [r["key"] for r in not_hurt],
        "healthy_false": {
            r["key"]: [(c, round(p, 3)) for c, p in r["ranking"]] for r in healthy if false_alarm(r)
        },
    }


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def tables(result: dict[str, Any]) -> str:
    """Markdown tables of a ``score`` result."""
    lines = [
        "| split | seeded runs | top-1 | top-3 | healthy runs | healthy false rate | ECE |"
        " not hurt (dropped) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result.get('split', '?')} | {result['seeded_runs']} | {result['top1']:.3f} | "
        f"{result['top3']:.3f} | {result['healthy_runs']} | {result['healthy_false_rate']:.3f} | "
        f"{_f(result['ece'], 3)} | {result['not_hurt_runs']} |",
        "",
        "| expected cause | runs | top-1 | top-3 | named first |",
        "|---|---|---|---|---|",
    ]
    for cause, c in result["per_cause"].items():
        named = ", ".join(f"{k} ×{v}" for k, v in sorted(c["named_first"].items()))
        lines.append(f"| {cause} | {c['runs']} | {c['top1']:.2f} | {c['top3']:.2f} | {named} |")
    lines += [
        "",
        "| base program | split | mutants | top-1 | top-3 | healthy | healthy false |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in result["per_program"].items():
        lines.append(
            f"| {name} | {p['split']} | {p['mutants']} | {_f(p['top1'])} | {_f(p['top3'])} | "
            f"{p['healthy']} | {p['healthy_false']} |"
        )
    lines += ["", "| confidence | findings | mean confidence | right |", "|---|---|---|---|"]
    for b in result["reliability"]["bins"]:
        lo, hi = b["bin"]
        lines.append(
            f"| {lo:.1f}–{hi:.1f} | {b['n']} | {_f(b['confidence'])} | {_f(b['accuracy'])} |"
        )
    if result["healthy_false"]:
        lines += ["", "| healthy run with a false finding | findings |", "|---|---|"]
        for key, ranking in result["healthy_false"].items():
            lines.append(f"| {key} | {', '.join(f'{c} {p:.2f}' for c, p in ranking)} |")
    if result["not_hurt"]:
        lines += ["", "mutants that did not hurt (dropped): " + ", ".join(result["not_hurt"])]
    return "\n".join(lines)
