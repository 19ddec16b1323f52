"""Keras plateau benchmark: steps to a target loss under ``model.fit``, three ways.

    python bench/keras_plateau.py [--seeds N] [--budget N] [--jobs N] [--out PATH]

The task (``lr_too_low_sgd``, as in ``bench/rescue_tasks.py``): scikit-learn's bundled digits
(inputs / 16; 1,437 training and 360 evaluation images, a stratified split drawn per seed), a
64-64-10 ReLU MLP, plain SGD at LR 1e-4 (100× below Keras's default SGD LR of 0.01), batch 32,
a budget of 2,000 steps (≈ 45 epochs). The loss creeps: each step moves the weights by ~1e-5
of their size. Keras 3 on the torch backend, CPU.

Strategies, each with the same data split, initial weights and batch order per seed:

* ``none``: no callback.
* ``rlrop``: ``keras.callbacks.ReduceLROnPlateau(monitor="loss")``, its defaults otherwise
  (factor 0.1, patience 10 epochs, min_delta 1e-4, cooldown 0, min_lr 0): the epoch's mean
  training loss, as the issue asks.
* ``unstuck``: ``UnstuckCallback("rescue")`` with its other defaults.

The target, by a rule that does not look at unstuck: the fault-free reference is the same
setup at Keras's default SGD LR (0.01) with no callback; the target is its evaluation loss at
half the budget, worst of the seeds, rounded up to two significant figures.

Metric: ``steps_to_target`` = the first evaluation (every 50 steps, on the evaluation split)
whose loss is at or below the target; never reached counts 2 × budget (bench/rescue.py's
rule). Steps an unstuck range test spends measuring count as steps, but an evaluation taken
while it measures cannot reach the target (those weights are put back when it ends).
``ms_per_step`` is wall time per training step, callbacks and evaluations included, with two
runs sharing the CPU; the callback's own cost is measured apart, ``fit`` with and without it
interleaved in one process (``overhead`` in the JSON). Prints a markdown table and
writes ``bench/results/keras_plateau.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "keras_plateau.json"

TASK = "lr_too_low_sgd"
FAULT_LR = 1e-4  # 100× below Keras's default SGD learning rate
REFERENCE_LR = 0.01  # keras.optimizers.SGD's default learning_rate: the fault-free setting
BATCH = 32
BUDGET = 2000
EVAL_EVERY = 50
NOT_REACHED = 2  # steps_to_target of a run that never gets there: 2 × budget (bench/rescue.py)
STRATEGIES = ("none", "rlrop", "unstuck")


def _setup() -> Any:
    os.environ["KERAS_BACKEND"] = "torch"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import logging

    logging.getLogger("unstuck").setLevel(logging.WARNING)
    import keras

    return keras


def _data(seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    x_tr, x_ev, y_tr, y_ev = train_test_split(x, y, test_size=360, stratify=y, random_state=seed)
    return x_tr, y_tr, x_ev, y_ev


def _build(keras: Any, lr: float, seed: int) -> Any:
    """The 64-64-10 ReLU MLP under plain SGD at ``lr``, initialised from ``seed``."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.SGD(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(y.size), y].mean())


def run(strategy: str, seed: int, lr: float = FAULT_LR, budget: int = BUDGET) -> dict[str, Any]:
    """One run; plain data back. ``lr`` other than the fault's is the reference."""
    keras = _setup()
    x_tr, y_tr, x_ev, y_ev = _data(seed)
    steps_per_epoch = math.ceil(x_tr.shape[0] / BATCH)
    epochs = math.ceil(budget / steps_per_epoch)
    model = _build(keras, lr, seed)
    unstuck_cb = None
    if strategy == "unstuck":
        from unstuck.integrations.keras import UnstuckCallback

        unstuck_cb = UnstuckCallback("rescue", console=False)

    class Evaluate(keras.callbacks.Callback):  # type: ignore[misc]
        """Every EVAL_EVERY steps: the evaluation loss; stops the run at the budget."""

        def __init__(self) -> None:
            super().__init__()
            self.steps = 0
            self.points: list[tuple[int, float, bool]] = []  # (step, loss, measuring)
            self.cuts: list[int] = []
            self.lr = float(np.float32(lr))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.steps += 1
            if self.steps % EVAL_EVERY == 0:
                logits = keras.ops.convert_to_numpy(model(x_ev, training=False))
                measuring = unstuck_cb is not None and unstuck_cb.probing
                self.points.append((self.steps, _cross_entropy(logits, y_ev), measuring))
            if self.steps >= budget:
                model.stop_training = True

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            # After the previous epoch's ReduceLROnPlateau; unstuck's multiplier is not in the
            # variable between batches, so this is the LR the callback itself set.
            now = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            if now < 0.999 * self.lr:
                self.cuts.append(self.steps)
            self.lr = now

    evaluate = Evaluate()
    callbacks: list[Any] = [evaluate]
    if strategy == "rlrop":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="loss", verbose=0))
    if unstuck_cb is not None:
        callbacks.append(unstuck_cb)  # last: it wraps each batch's LR
    start = time.perf_counter()
    model.fit(
        x_tr, y_tr, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=True, callbacks=callbacks
    )
    wall = time.perf_counter() - start
    result: dict[str, Any] = {
        "strategy": strategy,
        "seed": seed,
        "lr": lr,
        "steps": evaluate.steps,
        "curve": [(s, v) for s, v, _ in evaluate.points],
        "measuring_at": [s for s, _, m in evaluate.points if m],
        "final_loss": evaluate.points[-1][1],
        "wall_s": wall,
        "ms_per_step": 1000.0 * wall / max(evaluate.steps, 1),
    }
    if strategy == "rlrop":
        result["lr_cuts_at"] = evaluate.cuts
    if unstuck_cb is not None:
        result["actions"] = [
            {
                "name": a.name,
                "step": a.step,
                "outcome": a.outcome,
                "factor": a.params.get("factor"),
                "reason": a.reason,
            }
            for a in unstuck_cb.actions
        ]
        result["plateaus"] = [p.to_dict() for p in unstuck_cb.plateaus]
        result["findings"] = [
            {"cause": f.cause, "step": f.step, "confidence": round(f.confidence, 3)}
            for f in unstuck_cb.findings
        ]
        result["lr_multiplier"] = unstuck_cb.lr_multiplier
    return result


def overhead(steps: int = 600, repeats: int = 3) -> dict[str, Any]:
    """The callback's cost per step: ``fit`` on the faulty task for ``steps`` steps with no
    callback and with ``UnstuckCallback()``, interleaved in one process, ``repeats`` times
    each; the median seconds of each (the unstuck runs act, so the LR wrap is on)."""
    keras = _setup()
    from unstuck.integrations.keras import UnstuckCallback

    x_tr, y_tr, _, _ = _data(0)
    epochs = max(1, steps // math.ceil(x_tr.shape[0] / BATCH))
    done = epochs * math.ceil(x_tr.shape[0] / BATCH)
    times: dict[str, list[float]] = {"none": [], "unstuck": []}
    for _ in range(repeats):
        for name in times:
            model = _build(keras, FAULT_LR, 0)
            callbacks = [UnstuckCallback("rescue", console=False)] if name == "unstuck" else []
            start = time.perf_counter()
            model.fit(x_tr, y_tr, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
            times[name].append(time.perf_counter() - start)
    none, unstuck = statistics.median(times["none"]), statistics.median(times["unstuck"])
    return {
        "steps": done,
        "none_s": none,
        "unstuck_s": unstuck,
        "ms_per_step_added": 1000.0 * (unstuck - none) / done,
        "ratio": unstuck / none,
    }


def _job(job: tuple[str, int, float, int]) -> dict[str, Any]:
    strategy, seed, lr, budget = job
    return run(strategy, seed, lr, budget)


def round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant figures (0.01234 -> 0.013)."""
    e = math.floor(math.log10(x)) - digits + 1
    step = 10.0**e
    return round(math.ceil(x / step - 1e-9) * step, max(0, -e))


def steps_to(run_: dict[str, Any], target: float, budget: int) -> int:
    measuring = set(run_["measuring_at"])
    return next(
        (s for s, v in run_["curve"] if v <= target and s not in measuring),
        NOT_REACHED * budget,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=BUDGET)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    seeds = list(range(args.seeds))
    work = [("none", s, REFERENCE_LR, args.budget) for s in seeds]
    work += [(name, s, FAULT_LR, args.budget) for name in STRATEGIES for s in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(_job, work, chunksize=1))
    else:
        runs = [_job(w) for w in work]
    cost = overhead()
    reference, faulty = runs[: len(seeds)], runs[len(seeds) :]
    half = [dict(r["curve"])[args.budget // 2] for r in reference]
    target = round_up(max(half))
    cells: dict[str, dict[str, Any]] = {}
    for name in STRATEGIES:
        mine = [r for r in faulty if r["strategy"] == name]
        steps = [steps_to(r, target, args.budget) for r in mine]
        cells[name] = {
            "steps_to_target": statistics.median(steps),
            "reached": sum(s < NOT_REACHED * args.budget for s in steps),
            "seeds": len(mine),
            "final_loss": statistics.median(r["final_loss"] for r in mine),
            "ms_per_step": statistics.median(r["ms_per_step"] for r in mine),
            "per_seed": {
                "steps_to_target": steps,
                "final_loss": [r["final_loss"] for r in mine],
                **{
                    k: [r.get(k) for r in mine]
                    for k in ("lr_cuts_at", "actions", "findings", "lr_multiplier")
                    if any(k in r for r in mine)
                },
            },
        }
    unstuck, rlrop = cells["unstuck"]["steps_to_target"], cells["rlrop"]["steps_to_target"]
    summary = {
        "task": TASK,
        "target": target,
        "reference_eval_loss_at_half_budget": half,
        "reference_steps_to_target": [steps_to(r, target, args.budget) for r in reference],
        "unstuck_over_rlrop_steps": unstuck / rlrop,
        "unstuck_over_none_steps": unstuck / cells["none"]["steps_to_target"],
        "unstuck_beats_rlrop": unstuck < rlrop,
        "overhead": cost,
        "seconds": time.perf_counter() - start,
    }
    lines = [
        f"task {TASK}: digits MLP, SGD lr={FAULT_LR:g}, batch {BATCH}, budget {args.budget}; "
        f"target {target:g} (reference lr={REFERENCE_LR:g}: eval loss at step "
        f"{args.budget // 2} = {', '.join(f'{v:.4g}' for v in half)}; worst, rounded up)",
        "",
        "| strategy | steps to target (median) | reached | final eval loss | ms/step |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in cells.items():
        lines.append(
            f"| {name} | {c['steps_to_target']:.0f} | {c['reached']}/{c['seeds']} | "
            f"{c['final_loss']:.4g} | {c['ms_per_step']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"unstuck / rlrop steps: {summary['unstuck_over_rlrop_steps']:.3f}; callback cost "
        f"{cost['ms_per_step_added']:.2f} ms/step (×{cost['ratio']:.3f} of a bare fit, "
        f"{cost['steps']} steps, interleaved, median of 3); {summary['seconds']:.0f} s"
    )
    print("\n".join(lines))
    result = {
        "summary": summary,
        "strategies": cells,
        "meta": {
            "seeds": args.seeds,
            "budget": args.budget,
            "eval_every": EVAL_EVERY,
            "batch_size": BATCH,
            "fault_lr": FAULT_LR,
            "reference_lr": REFERENCE_LR,
            "not_reached": f"{NOT_REACHED} x budget",
            "keras_backend": "torch",
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
