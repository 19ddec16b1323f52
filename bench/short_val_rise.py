"""The short-validation rise test of ``overfitting``: its false-positive level and its power.

    python bench/short_val_rise.py [--draws N] [--seed S] [--json PATH]

A validation series of 5 to 8 evaluations (too few for the validation detector) goes through
the ``overfitting`` rule exactly as ``unstuck analyze`` runs it (detector state ``unknown``, a
training loss falling over the run). Two readings:

* ``exact_level``: the share of all n! orderings of n distinct values the rank test alone calls
  rising (no trend makes each ordering equally likely, so this is its false-positive rate on
  any noise without a trend);
* ``simulated``: the share of ``--draws`` generated series per shape, length and noise level on
  which the rule names ``overfitting`` (rank test, Prechelt's GL > 5 % and the training loss
  lower now than at the best evaluation). Shapes without a rise (``flat``, ``falling``,
  ``falling_then_flat``) give the false-positive level; ``rising`` (+30 % over the series) and
  ``fall_then_rise`` (halved at the second evaluation, then +30 %) its power. Noise is
  multiplicative Gaussian, σ = 2 %, 5 %, 10 % of the level.
* ``live_three_looks``: a live run diagnoses at every new evaluation, so a flat series is
  tested at 5, 6, 7 and 8 points: the share of flat series named at any of those looks.

Results go to ``bench/results/short_val_rise.json`` unless ``--json`` says otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from unstuck.diagnose import Evidence, get_rule  # noqa: E402
from unstuck.diagnose.causes._rise import ALPHA, MAX_POINTS, MIN_POINTS, rise_test  # noqa: E402

NOISE = (0.02, 0.05, 0.1)
SHAPES = ("flat", "falling", "falling_then_flat", "rising", "fall_then_rise")


def shape(kind: str, n: int) -> np.ndarray:
    t = np.arange(n) / (n - 1)
    if kind == "flat":
        return np.ones(n)
    if kind == "falling":
        return 1.0 + np.exp(-3.0 * t)
    if kind == "falling_then_flat":
        return 1.0 + np.maximum(1.0 - t / 0.4, 0.0)
    if kind == "rising":
        return 1.0 + 0.3 * t
    if kind == "fall_then_rise":
        out = 0.5 * (1.0 + 0.3 * t)
        out[0] = 1.0
        return out
    raise ValueError(kind)


def evidence(val: np.ndarray, state: str = "unknown") -> Evidence:
    steps = 49 + 50 * np.arange(val.size)
    length = int(steps[-1]) + 1
    train = np.linspace(1.0, 0.1, length)  # the training loss falls throughout
    return Evidence(
        {
            "loss": (np.arange(length), train),
            "val_loss": (steps, val),
            "detector_state": state,
            "detector_series": "val",
        },
        step=length - 1,
    )


# Between the rank test and the detector's rise windows: 9 to 31 evaluations, the detector's
# state anything but "unknown" or "diverging" (here "slow"), the rule reading the latest 8.
BETWEEN = (12, 20, 31)


def between(rule: Any, rng: np.random.Generator, draws: int) -> dict[str, Any]:
    """One look at n = 12, 20, 31 evaluations per shape and noise, and a live run's looks at
    every evaluation from 9 to 31 on flat noise (the share named at any of them)."""
    one_look: dict[str, dict[str, dict[str, float]]] = {}
    for kind in SHAPES:
        one_look[kind] = {}
        for n in BETWEEN:
            for sigma in NOISE:
                base = shape(kind, n)
                named = sum(
                    rule.check(evidence(base * (1.0 + sigma * rng.standard_normal(n)), "slow"))
                    is not None
                    for _ in range(draws)
                )
                one_look[kind].setdefault(str(n), {})[str(sigma)] = named / draws
    live: dict[str, dict[str, float]] = {}
    top = max(BETWEEN)
    for kind in ("flat", "falling_then_flat"):
        live[kind] = {}
        for sigma in NOISE:
            named = 0
            for _ in range(draws):
                val = shape(kind, top) * (1.0 + sigma * rng.standard_normal(top))
                named += any(
                    rule.check(evidence(val[:k], "slow")) is not None
                    for k in range(MAX_POINTS + 1, top + 1)
                )
            live[kind][str(sigma)] = named / draws
    return {"one_look": one_look, "live_looks_9_to_31": live}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(HERE / "results" / "short_val_rise.json"))
    args = parser.parse_args(argv)
    rule = get_rule("overfitting")
    rng = np.random.default_rng(args.seed)
    exact = {}
    for n in range(MIN_POINTS, MAX_POINTS + 1):
        orders = itertools.permutations(range(n))
        flagged = [bool(rise_test(np.asarray(o, dtype=float)).rising) for o in orders]  # type: ignore[union-attr]
        exact[str(n)] = sum(flagged) / len(flagged)
    simulated: dict[str, dict[str, dict[str, float]]] = {}
    for kind in SHAPES:
        simulated[kind] = {}
        for n in range(MIN_POINTS, MAX_POINTS + 1):
            for sigma in NOISE:
                base = shape(kind, n)
                named = 0
                for _ in range(args.draws):
                    val = base * (1.0 + sigma * rng.standard_normal(n))
                    named += rule.check(evidence(val)) is not None
                simulated[kind].setdefault(str(n), {})[str(sigma)] = named / args.draws
    looks = {}
    for sigma in NOISE:
        named = 0
        for _ in range(args.draws):
            val = 1.0 + sigma * rng.standard_normal(MAX_POINTS)
            named += any(
                rule.check(evidence(val[:k])) is not None for k in range(MIN_POINTS, MAX_POINTS + 1)
            )
        looks[str(sigma)] = named / args.draws
    mid = between(rule, rng, max(args.draws // 4, 50))
    worst_fp = max(
        rate
        for kind in ("flat", "falling", "falling_then_flat")
        for by_sigma in simulated[kind].values()
        for rate in by_sigma.values()
    )
    out = {
        "alpha": ALPHA,
        "draws": args.draws,
        "seed": args.seed,
        "exact_level": exact,
        "simulated": simulated,
        "worst_false_positive_rate": worst_fp,
        "live_three_looks": looks,
        "between": mid,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print("exact level of the rank test (share of all orderings called rising):")
    print("  " + "  ".join(f"n={n}: {v:.4f}" for n, v in exact.items()))
    print(f"named overfitting, {args.draws} draws each (n = 5..8 per row; sigma 2/5/10 %):")
    for kind in SHAPES:
        cells = [
            "/".join(f"{simulated[kind][str(n)][str(s)]:.3f}" for s in NOISE)
            for n in range(MIN_POINTS, MAX_POINTS + 1)
        ]
        print(f"  {kind:18s} " + "  ".join(cells))
    print(
        "flat series named at any of the looks at 5, 6, 7, 8 points (sigma 2/5/10 %): "
        + "/".join(f"{v:.3f}" for v in looks.values())
    )
    print(f"worst false-positive rate (flat, falling, falling then flat): {worst_fp:.3f}")
    print(
        "between (9 to 31 evaluations, detector 'slow', the latest 8 read), one look, "
        f"{max(args.draws // 4, 50)} draws (n = {', '.join(map(str, BETWEEN))} per row; "
        "sigma 2/5/10 %):"
    )
    for kind in SHAPES:
        cells = [
            "/".join(f"{mid['one_look'][kind][str(n)][str(s)]:.3f}" for s in NOISE) for n in BETWEEN
        ]
        print(f"  {kind:18s} " + "  ".join(cells))
    for kind, rates in mid["live_looks_9_to_31"].items():
        print(
            f"{kind} series named at any look from 9 to 31 evaluations (sigma 2/5/10 %): "
            + "/".join(f"{v:.3f}" for v in rates.values())
        )
    return out


if __name__ == "__main__":
    main()
