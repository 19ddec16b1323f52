"""Rescue on the fault zoo: does ``policy="rescue"`` help, and does it ever harm? (issue 20)

    python bench/zoo/rescue.py --split test [--quick] [--jobs N] [--json PATH]
        [--programs A,B] [--operators X,Y] [--strategies A,B] [--max-steps N]

The runs are the zoo's (``plan.zoo_runs``: the same programs, split, seeds and severities) for
the faults a schedule or an optimizer setting can fix (``FIXABLE``: an LR far too high or too
low, a missing warm-up, the user's own clipping too tight, a saddle that momentum leaves, a
batch of one's noisy steps, exploding gradients), plus each program's healthy runs. Each is
trained under every strategy with the same initial weights and batch order:

* ``constant``: the program as written (its own optimizer, LR and schedule; constant LR where
  it has none): "the same run without unstuck";
* ``rlrop_epoch`` / ``rlrop_mean50``: torch ``ReduceLROnPlateau`` at its defaults in place of
  the program's schedule, stepped once per epoch on the epoch's mean training loss, or every
  50 steps on the mean of those 50;
* ``schedulefree``: ``schedulefree.AdamWScheduleFree`` at its default LR, ``warmup_steps=0``,
  ``train()``/``eval()`` around evaluations;
* ``prodigy``: ``prodigyopt.Prodigy`` at its defaults (lr 1.0: it estimates its step size),
  in place of the program's optimizer and schedule;
* ``unstuck``: the program as written under ``Guard(policy="rescue", loss_fn=..., scheduler=...)``
  at every other default; ``guard.step(loss, batch=(x, y))`` each step, ``guard.validate`` at
  each evaluation. Its probe steps are ordinary loop steps, so they count.

The **target** of a run is the validation loss the unmutated program (the operator's reference
where it has one: the same deep linear net at torch's default init) reaches at half the budget,
read at the evaluation there (every ``budget / EVAL_POINTS`` steps). Per run and strategy:
``steps_to_target`` (the first evaluation at or below the target; never: ``NOT_REACHED`` ×
budget, as ``bench/rescue.py``), ``final_loss`` (validation loss at the end; non-finite: inf).

Figures (JSON keys), per strategy against ``constant``:

* ``harm_rate``: share of runs (faults and healthy) that end worse than ``constant`` by more
  than ``FINAL_MARGIN`` (1 %, the margin the issue sets for a healthy run), or reach the target
  more than ``LATE_MARGIN`` (10 %) later, or not at all where ``constant`` does;
* ``missed``: runs where ``constant`` or ``rlrop_*`` reaches the target and the strategy does
  not; ``geomean_steps_vs``: geometric mean over the fault runs of the strategy's steps to
  target over each other strategy's;
* ``healthy_final_ratio``: the strategy's final loss over ``constant``'s on each healthy run
  (``healthy_within_1pct``: the share within 1 %);
* for ``unstuck``: ``probe_steps`` and ``probe_nonfinite`` (range-test steps whose loss was
  non-finite; the goal is none), and its actions per run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

FIXABLE = (
    "lr_x10k",
    "lr_div10k",
    "post_ln_no_warmup",
    "user_clip_grad_norm",
    "deep_linear_small_init",
    "batch_of_one",
    "weight_gain",
)
STRATEGIES = ("constant", "rlrop_epoch", "rlrop_mean50", "schedulefree", "prodigy", "unstuck")
EVAL_POINTS = 20  # evaluations per run: steps to target are read at this resolution
NOT_REACHED = 2  # a run that never reaches the target counts NOT_REACHED × budget steps
FINAL_MARGIN = 0.01  # worse final loss than constant by more than this share: harm
LATE_MARGIN = 0.10  # reaching the target more than this share later than constant: harm
MEAN_WINDOW = 50  # rlrop_mean50's window


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("unstuck").setLevel(logging.WARNING)
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))


# ----------------------------------------------------------------------------------- loop


def train(spec: Any, seed: int, strategy: str) -> dict[str, Any]:
    """Train ``spec`` under ``strategy``; the validation loss at every evaluation."""
    import torch

    from zoo._spec import (
        SoftmaxOut,
        _pretrain,
        apply_init,
        loss_function,
        make_optimizer,
        make_scheduler,
    )

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = spec.data
    model = spec.build(spec)
    apply_init(model, spec)
    if spec.out_act == "softmax":
        model = SoftmaxOut(model)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = loss_function(spec)
    modes: Any = None
    if strategy == "schedulefree":
        module: Any = importlib.import_module("schedulefree")
        modes = module.AdamWScheduleFree(params, warmup_steps=0)
        opt: torch.optim.Optimizer = modes
    elif strategy == "prodigy":  # at its defaults: it estimates its own step size
        opt = importlib.import_module("prodigyopt").Prodigy(params)
    else:
        opt = make_optimizer(spec, params)
    if spec.pretrain_steps:
        _pretrain(spec, model, opt, seed)
        if spec.pretrain_reset:
            opt = make_optimizer(spec, params)
    scheduler: Any = None
    plateau: Any = None
    if strategy in ("constant", "unstuck"):
        scheduler = make_scheduler(spec, opt)
    elif strategy.startswith("rlrop"):
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    n = data.x.shape[0]
    window = max(n // spec.batch_size, 1) if strategy == "rlrop_epoch" else MEAN_WINDOW
    guard: Any = None
    if strategy == "unstuck":
        import unstuck

        guard = unstuck.Guard(
            model, opt, policy="rescue", loss_fn=loss_fn, scheduler=scheduler, console=False
        )
    every = max(spec.steps // EVAL_POINTS, 1)

    def val_loss() -> float:
        model.eval()
        if modes is not None:
            modes.eval()
        with torch.no_grad():
            value = float(loss_fn(model(data.x_val), data.y_val))
        return value if math.isfinite(value) else math.inf

    points: list[tuple[int, float]] = []
    window_losses: list[float] = []
    order = torch.randperm(n, generator=gen)
    cursor = 0
    clip_at: float | None = None
    start = time.perf_counter()
    try:
        for step in range(spec.steps):
            if spec.indices is not None:
                idx = spec.indices(step, gen)
            else:
                if cursor + spec.batch_size > n:
                    order = torch.randperm(n, generator=gen)
                    cursor = 0
                idx = order[cursor : cursor + spec.batch_size]
                cursor += spec.batch_size
            x, y = data.x[idx], data.y[idx]
            model.train()
            if modes is not None:
                modes.train()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.clip_fraction is not None:
                if clip_at is None:  # the user picked max_norm from the first step's norm
                    first = torch.nn.utils.clip_grad_norm_(params, math.inf)
                    clip_at = max(float(first) * spec.clip_fraction, 1e-12)
                torch.nn.utils.clip_grad_norm_(params, clip_at)
            opt.step()
            if scheduler is not None:
                scheduler.step()
            if plateau is not None:
                window_losses.append(float(loss.detach()))
                if len(window_losses) == window:
                    plateau.step(statistics.fmean(window_losses))
                    window_losses = []
            if guard is not None:
                guard.step(loss, batch=(x, y))
            if (step + 1) % every == 0:
                points.append((step + 1, val_loss()))
                if guard is not None:
                    guard.validate(points[-1][1])
            if guard is not None and guard.should_stop:
                last = val_loss()
                points += [(s, last) for s in range(step + 1 + every, spec.steps + 1, every)]
                break
    finally:
        if guard is not None:
            guard.close()
    result: dict[str, Any] = {
        "points": points,
        "final_loss": points[-1][1] if points else math.inf,
        "seconds": time.perf_counter() - start,
    }
    if guard is not None:
        engine = guard._engine
        result["probe_steps"] = engine.probe_steps
        result["probe_nonfinite"] = getattr(engine, "probe_nonfinite", 0)  # older engines: none
        result["actions"] = [
            {"name": a.name, "step": a.step, "outcome": a.outcome, "cause": a.evidence.get("cause")}
            for a in guard.actions
        ]
    return result


def _target(reference: dict[str, Any], budget: int) -> float:
    """The reference's validation loss at the evaluation nearest half the budget."""
    half = budget / 2
    return float(min(reference["points"], key=lambda p: abs(p[0] - half))[1])


def _steps_to(points: list[tuple[int, float]], target: float, budget: int) -> int:
    return next((s for s, v in points if v <= target), NOT_REACHED * budget)


def run_one(job: Any, strategies: tuple[str, ...]) -> dict[str, Any]:
    """One zoo run: the reference for the target, then every strategy."""
    _init_worker()
    from zoo import SPLIT
    from zoo.plan import build

    record: dict[str, Any] = {
        **asdict(job),
        "key": job.key,
        "split": SPLIT[job.program],
        "kind": "healthy" if job.operator is None else "fault",
    }
    try:
        spec, ref_spec = build(job)
        budget = spec.steps
        reference = train((ref_spec or spec).copy(), job.seed, "constant")
        target = _target(reference, budget)
        record.update(budget=budget, target=target, strategies={})
        for name in strategies:
            out = train(spec.copy(), job.seed, name)
            out["steps_to_target"] = _steps_to(out["points"], target, budget)
            out["reached"] = out["steps_to_target"] <= budget
            del out["points"]
            record["strategies"][name] = out
    except Exception as exc:  # one broken run must not lose the others
        import traceback

        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    return record


# -------------------------------------------------------------------------------- scoring


def _harmed(run: dict[str, Any], name: str) -> list[str]:
    """Why strategy ``name`` did worse than ``constant`` on this run (empty: no harm)."""
    base, mine = run["strategies"]["constant"], run["strategies"][name]
    why = []
    if mine["final_loss"] > base["final_loss"] * (1 + FINAL_MARGIN):
        why.append("worse final loss")
    if base["reached"] and (
        not mine["reached"] or mine["steps_to_target"] > base["steps_to_target"] * (1 + LATE_MARGIN)
    ):
        why.append("later to target")
    return why


def _geomean(values: list[float]) -> float | None:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


def score(records: list[dict[str, Any]], strategies: tuple[str, ...]) -> dict[str, Any]:
    """The figures of the module docstring."""
    runs = [r for r in records if "error" not in r]
    faults = [r for r in runs if r["kind"] == "fault"]
    healthy = [r for r in runs if r["kind"] == "healthy"]
    out: dict[str, Any] = {
        "runs": len(runs),
        "fault_runs": len(faults),
        "healthy_runs": len(healthy),
    }
    if "constant" not in strategies:
        return out
    rlrops = [s for s in ("rlrop_epoch", "rlrop_mean50") if s in strategies]
    per: dict[str, Any] = {}
    for name in strategies:
        harmed = {r["key"]: _harmed(r, name) for r in runs} if name != "constant" else {}
        harmed = {k: v for k, v in harmed.items() if v}
        missed = [
            r["key"]
            for r in faults
            if not r["strategies"][name]["reached"]
            and any(r["strategies"][s]["reached"] for s in ("constant", *rlrops))
        ]
        ratios = {
            other: _geomean(
                [
                    r["strategies"][name]["steps_to_target"]
                    / r["strategies"][other]["steps_to_target"]
                    for r in faults
                ]
            )
            for other in strategies
            if other != name
        }
        healthy_ratio = {
            r["key"]: r["strategies"][name]["final_loss"]
            / r["strategies"]["constant"]["final_loss"]
            for r in healthy
            if r["strategies"]["constant"]["final_loss"] > 0
        }
        cell: dict[str, Any] = {
            "harm_rate": len(harmed) / len(runs) if runs and name != "constant" else 0.0,
            "harmed": harmed,
            "reached": sum(r["strategies"][name]["reached"] for r in faults),
            "missed": missed,
            "missed_share": len(missed) / len(faults) if faults else 0.0,
            "geomean_steps_vs": ratios,
            "healthy_final_ratio": healthy_ratio,
            "healthy_within_1pct": (
                sum(abs(v - 1) <= FINAL_MARGIN for v in healthy_ratio.values()) / len(healthy_ratio)
                if healthy_ratio
                else None
            ),
        }
        if name == "unstuck":
            cell["probe_steps"] = sum(r["strategies"][name].get("probe_steps", 0) for r in runs)
            cell["probe_nonfinite"] = sum(
                r["strategies"][name].get("probe_nonfinite", 0) for r in runs
            )
            cell["runs_with_action"] = sum(
                any(a["outcome"] != "skipped" for a in r["strategies"][name].get("actions", []))
                for r in runs
            )
        per[name] = cell
    out["strategies"] = per
    return out


def table(result: dict[str, Any]) -> str:
    per = result.get("strategies", {})
    lines = [
        "| strategy | harm rate | reached (faults) | missed | geomean steps vs constant | "
        "vs rlrop_epoch | vs rlrop_mean50 | healthy within 1 % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.3g}"

    for name, c in per.items():
        vs = c["geomean_steps_vs"]
        lines.append(
            f"| {name} | {c['harm_rate']:.1%} | {c['reached']}/{result['fault_runs']} | "
            f"{len(c['missed'])} | {fmt(vs.get('constant'))} | {fmt(vs.get('rlrop_epoch'))} | "
            f"{fmt(vs.get('rlrop_mean50'))} | {fmt(c['healthy_within_1pct'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Rescue on the fault zoo (steps to target, harm).")
    ap.add_argument("--split", choices=("train", "test", "all"), default="test")
    ap.add_argument("--quick", action="store_true", help="two mutants per fault, one healthy")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "zoo_rescue.json")
    ap.add_argument("--programs", default="", help="comma-separated base programs (a subset)")
    ap.add_argument("--operators", default="", help=f"a subset of {','.join(FIXABLE)}")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run's steps (tests)")
    args = ap.parse_args(argv)

    _init_worker()
    from zoo import SPLIT
    from zoo.plan import zoo_runs

    only = set(args.programs.split(",")) if args.programs else None
    unknown = sorted((only or set()) - set(SPLIT))
    if unknown:
        ap.error(f"unknown programs {unknown}")
    operators = set(args.operators.split(",")) if args.operators else set(FIXABLE)
    if operators - set(FIXABLE):
        ap.error(f"operators must be among {','.join(FIXABLE)}")
    strategies = tuple(args.strategies.split(","))
    if set(strategies) - set(STRATEGIES) or "constant" not in strategies:
        ap.error(f"strategies must be among {','.join(STRATEGIES)} and include constant")
    jobs = [
        j
        for j in zoo_runs(args.split, quick=args.quick, only=only)
        if (j.operator is None and not j.variant) or j.operator in operators
    ]
    if args.max_steps:
        jobs = [replace(j, max_steps=args.max_steps) for j in jobs]
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []

    def progress(r: dict[str, Any]) -> None:
        records.append(r)
        if "error" in r:
            line = r["error"]
        else:
            line = " ".join(
                f"{k}={v['steps_to_target']}/{v['final_loss']:.3g}"
                for k, v in r["strategies"].items()
            )
        print(f"[{len(records)}/{len(jobs)}] {r['key']}: {line}", file=sys.stderr, flush=True)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_init_worker) as pool:
            for r in pool.map(run_one, jobs, [strategies] * len(jobs), chunksize=1):
                progress(r)
    else:
        for j in jobs:
            progress(run_one(j, strategies))
    result: dict[str, Any] = {
        "split": args.split,
        "quick": args.quick,
        "operators": sorted(operators),
        **score(records, strategies),
    }
    result["errors"] = {r["key"]: r["error"] for r in records if "error" in r}
    result["records"] = records
    result["seconds"] = time.perf_counter() - t0
    print(table(result))
    summary = {
        k: {kk: vv for kk, vv in v.items() if kk not in ("harmed", "healthy_final_ratio")}
        for k, v in result.get("strategies", {}).items()
    }
    print(json.dumps(summary, indent=1, default=str))
    for key, error in result["errors"].items():
        print(f"error (left out): {key}: {error}")
    print(f"\n{len(records)} runs in {result['seconds']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
