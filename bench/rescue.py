"""Rescue benchmark: steps to a target loss, unstuck against the LR schedules people use.

    python bench/rescue.py [--quick] [--seeds N] [--tasks A,B] [--strategies A,B] [--jobs N]
                           [--out PATH] [--curves]
    python bench/rescue.py --calibrate [--tasks A,B]

Every task in ``bench/rescue_tasks.py`` (a user's setup with its fault, or a healthy control) is
trained under every strategy with the same data split, initial weights and batch order per seed
(batches are drawn with a ``torch.Generator`` of the loop's own, which nothing else touches:
unstuck's snapshots restore the global RNGs, never this one). Strategies:

* ``constant``: the task's optimizer at the task's LR.
* ``rlrop_epoch``: torch ``ReduceLROnPlateau`` with its defaults, stepped once per epoch (one
  pass over the training set at the task's batch size) on the epoch's mean training loss.
* ``rlrop_mean50``: the same, stepped every 50 steps on the mean of those 50 training losses.
* ``cosine_wr``: ``CosineAnnealingWarmRestarts(T_0=budget // 8, T_mult=1)``, stepped per step.
* ``onecycle``: ``OneCycleLR(max_lr=the task's LR, total_steps=budget)``, torch defaults
  otherwise (so it also cycles momentum / beta1 between 0.85 and 0.95, plain SGD included).
* ``lrf_on_plateau``: keras_find_lr_on_plateau's ``LRFOnPlateau`` (REFERENCE.md §1) re-implemented
  with a full restore: a ReduceLROnPlateau-per-epoch trigger (patience 10) starts an exponential
  LR sweep over the loop's next 100 batches from LR×1e-3 to LR×1e3; a bias-corrected EMA
  (β = 0.98) of the batch loss stops it early on divergence (EMA > 4× its minimum) or NaN; the
  new LR is the one at the steepest drop of the EMA against log LR (first 10 and last 5 points
  skipped); then model, optimizer and RNG states go back to their pre-sweep copies and the new
  LR is set. Sweep steps count as steps.
* ``schedulefree``: ``schedulefree.AdamWScheduleFree`` at its default LR with
  ``warmup_steps=0`` (what a user switching optimizer runs); ``optimizer.train()`` / ``.eval()``
  around evaluations, as its docs require.
* ``prodigy``: ``prodigyopt.Prodigy`` at its defaults (it estimates its own step size).
* ``dog``: ``dog.DoG`` at its defaults, evaluated at its ``PolynomialDecayAverager`` average
  (the iterate averaging its authors call necessary), trained on the iterate.
* ``mechanic``: the task's own optimizer and LR wrapped by ``mechanic_pytorch.mechanize``
  (a learned global scale on its updates).
* ``unstuck``: the task's optimizer and LR under ``Guard(policy="rescue", loss_fn=...)`` with
  default settings; ``guard.step(loss, batch=(x, y))`` every step, ``guard.validate`` with the
  evaluation split's loss at every evaluation; when ``guard.should_stop`` turns true the run
  ends and its last evaluation is carried forward (the remaining steps do not improve).

A task's own schedule (a linear warm-up, and for the spike task a cosine decay after it) runs
under ``constant`` and ``unstuck``; the other strategies replace the schedule.

A spike task's loop raises the LR by the task's ``Spike`` factor on a stretch of its own steps
(around ``optimizer.step()``, on top of whatever LR the strategy set), and under ``unstuck`` asks
``guard.skip_batch()`` before each batch, as docs/guard.md shows: a skipped batch still counts as
a step of the budget. The other tasks' loops do not ask (as when their figures were taken). Each
seed of a spike task also runs its spike-free reference (``constant``, the task's own schedule).

Metrics per (task, strategy), median over seeds:

* ``steps_to_target``: the first evaluation step (every ``eval_every`` steps) whose evaluation
  loss is at or below the task's target; a run that never gets there counts 2 × budget.
* ``final_loss``: the evaluation loss at the end of the budget; ``wall_s``: seconds of the loop
  (strategy set-up, steps and evaluations); ``cpu_s``: the same in process CPU time, which
  other processes on a shared machine disturb less.
* for ``unstuck``: ``first_action_loss``, the evaluation loss at the step its first action
  appears, and whether the run ends worse than that (``worse_than_first_action``).

Summary: ``geomean_ratio_vs[s]`` = geometric mean over the plateau tasks of unstuck's median
steps / strategy s's median steps (< 1: unstuck is faster), also split into the strategies told
the budget (``geomean_ratio_vs_budget_aware``: OneCycle, the warm restarts) and the rest
(``geomean_ratio_vs_budget_agnostic``); ``best_baseline_share`` = share of
plateau tasks where unstuck's median is ≤ the best baseline's (``best_baseline_strict_share``:
<; where every strategy's median is 2 × budget they all tie and count as ≤ —
``plateau_tasks_all_unreached`` lists those tasks); ``healthy_within_2pct``: per healthy
control, |final unstuck / final constant − 1| ≤ 0.02 (medians); ``worse_than_first_action``:
unstuck runs whose final evaluation loss is above the one at their first action;
``probe_nonfinite_steps``: range-test steps of unstuck runs whose loss was non-finite (goal: 0).

``spike``: per spike task, the reference's median final loss (``no_spike_final``) and per
strategy the median final loss and the seeds that end no worse than the reference of the same
seed, final ≤ reference × (1 + the task's ``spike_tolerance``, the reference's spread over seeds
from ``--calibrate``); ``unstuck_rewound_before_spike``: unstuck seeds with a kept rewind to a
state from before the spike. The reference runs are in the JSON's ``references``.

``--calibrate`` runs each task's fault-free reference configuration under ``constant`` and prints
the target rule's values (see ``bench/rescue_tasks.py``). ``--quick`` runs the tasks marked
``quick`` (4 plateau tasks and 1 healthy control) with all strategies and 3 seeds. Results go to
``bench/results/rescue.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rescue_tasks import TASKS, Task, reference_task  # noqa: E402
from scenarios._common import Data  # noqa: E402

__all__ = [
    "BASELINES",
    "STRATEGIES",
    "LRFOnPlateau",
    "calibrate",
    "geomean",
    "main",
    "round_up",
    "run",
    "summarize",
]

NOT_REACHED = 2  # steps_to_target of a run that never reaches the target: 2 × budget (the issue)
HEALTHY_TOLERANCE = 0.02  # |final unstuck / final constant − 1| allowed on a healthy control
MEAN_WINDOW = 50  # steps per ReduceLROnPlateau call in rlrop_mean50 (the issue)
COSINE_CYCLES = 8  # T_0 = budget // 8 (the issue)


# ----------------------------------------------------------------------------- strategies


class Strategy:
    """How one strategy drives a run: the optimizer it trains with and its per-step hooks."""

    name: ClassVar[str]

    def __init__(self, task: Task, model: torch.nn.Module, budget: int, steps_per_epoch: int):
        self.task = task
        self.model = model
        self.budget = budget
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        return self.task.optimizer(self.model.parameters(), self.task.lr)

    def before_step(self, step: int) -> None:
        """Before the forward pass of loop step ``step`` (0-based)."""

    def skip_batch(self) -> bool:
        """Whether the loop skips this step's batch (only a rewind asks for that)."""
        return False

    def after_step(self, step: int, loss: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> None:
        """After ``optimizer.step()`` of loop step ``step``."""

    def train_mode(self) -> None:
        self.model.train()

    def eval_mode(self) -> None:
        self.model.eval()

    def validate(self, val_loss: float) -> None:
        """The evaluation split's loss, at every evaluation."""

    @property
    def should_stop(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def extra(self) -> dict[str, Any]:
        """Per-run details worth keeping in the JSON."""
        return {}


def schedule_factor(task: Task, budget: int, step: int) -> float:
    """The task's own LR factor at optimizer step ``step``: a linear warm-up over
    ``task.warmup`` steps, then 1, or with ``task.cosine`` half a cosine from 1 to 0 at the
    end of the budget (as transformers' ``get_cosine_schedule_with_warmup``)."""
    if step < task.warmup:
        return (step + 1) / task.warmup
    if not task.cosine:
        return 1.0
    t = (step - task.warmup) / max(1, budget - task.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _schedule(task: Task, optimizer: torch.optim.Optimizer, budget: int) -> Any:
    """The task's own schedule as a ``LambdaLR`` (None without one)."""
    if task.warmup <= 0 and not task.cosine:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(task, budget, s))


class Constant(Strategy):
    name = "constant"

    def __init__(self, task: Task, model: torch.nn.Module, budget: int, steps_per_epoch: int):
        super().__init__(task, model, budget, steps_per_epoch)
        self.scheduler = _schedule(task, self.optimizer, budget)

    def after_step(self, step: int, loss: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> None:
        if self.scheduler is not None:
            self.scheduler.step()


class _MeanPlateau(Strategy):
    """torch ReduceLROnPlateau (defaults) stepped on the mean loss of every ``window`` steps."""

    def window(self) -> int:
        raise NotImplementedError

    def __init__(self, task: Task, model: torch.nn.Module, budget: int, steps_per_epoch: int):
        super().__init__(task, model, budget, steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer)
        self.losses: list[float] = []
        self.cuts: list[int] = []

    def after_step(self, step: int, loss: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> None:
        self.losses.append(float(loss.detach()))
        if len(self.losses) == self.window():
            before = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step(statistics.fmean(self.losses))
            self.losses = []
            if self.optimizer.param_groups[0]["lr"] < before:
                self.cuts.append(step + 1)

    def extra(self) -> dict[str, Any]:
        return {"lr_cuts_at": self.cuts}


class RLROPEpoch(_MeanPlateau):
    name = "rlrop_epoch"

    def window(self) -> int:
        return self.steps_per_epoch


class RLROPMean50(_MeanPlateau):
    name = "rlrop_mean50"

    def window(self) -> int:
        return MEAN_WINDOW


class CosineWR(Strategy):
    name = "cosine_wr"

    def __init__(self, task: Task, model: torch.nn.Module, budget: int, steps_per_epoch: int):
        super().__init__(task, model, budget, steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            self.optimizer, T_0=max(1, budget // COSINE_CYCLES), T_mult=1
        )

    def after_step(self, step: int, loss: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> None:
        self.scheduler.step()


class OneCycle(Strategy):
    name = "onecycle"

    def __init__(self, task: Task, model: torch.nn.Module, budget: int, steps_per_epoch: int):
        super().__init__(task, model, budget, steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=task.lr, total_steps=budget
        )

    def after_step(self, step: int, loss: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> None:
        if step + 1 < self.budget:  # OneCycleLR refuses a step past total_steps
            self.scheduler.step()


class LRFOnPlateau(Strategy):
    """keras_find_lr_on_plateau's LRFOnPlateau with a full restore (see the module docstring).

    The trigger is torch ReduceLROnPlateau's rule (relative threshold 1e-4, a cut when the
    count of bad epochs exceeds ``PATIENCE``) on the epoch's mean training loss; instead of
    cutting, it sweeps. ``sweeps`` records each sweep: where it started, how many points it
    took, the factor it picked.
    """

    name = "lrf_on_plateau"
    PATIENCE = 10  # the issue; LRFOnPlateau inherits Keras ReduceLROnPlateau's patience
    THRESHOLD = 1e-4  # torch ReduceLROnPlateau's default relative threshold
    SWEEP_STEPS = 100  # the issue
    SWEEP_LOW, SWEEP_HIGH = 1e-3, 1e3  # sweep factors over the current LR (the issue)
    BETA = 0.98  # LRFinder.get_best_lr_exp_weighted(beta=0.98)
    DIVERGE = 4.0  # stop when the EMA exceeds 4× its minimum (fastai's lr_find rule)
    SKIP_START, SKIP_END = 10, 5  # LRFinder's n_skip_beginning / n_skip_end

    def __init__(self, task: Task, model: torch.nn.Module, budget: int, steps_per_epoch: int):
        super().__init__(task, model, budget, steps_per_epoch)
        self.best = math.inf
        self.bad_epochs = 0
        self.epoch: list[float] = []
        self.sweep: dict[str, Any] | None = None
        self.sweeps: list[dict[str, Any]] = []

    # -- the trigger --------------------------------------------------------------------------
    def after_step(self, step: int, loss: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> None:
        value = float(loss.detach())
        if self.sweep is not None:
            self._sweep_point(value, step)
            return
        self.epoch.append(value)
        if len(self.epoch) < self.steps_per_epoch:
            return
        mean = statistics.fmean(self.epoch)
        self.epoch = []
        if mean < self.best * (1.0 - self.THRESHOLD):
            self.best, self.bad_epochs = mean, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.PATIENCE:
            self.bad_epochs = 0
            self.start_sweep(step + 1)

    # -- the sweep ----------------------------------------------------------------------------
    def start_sweep(self, step: int) -> None:
        """Snapshot everything and sweep the LR over the loop's next ``SWEEP_STEPS`` steps."""
        self.sweep = {
            "start": step,
            "base_lrs": [g["lr"] for g in self.optimizer.param_groups],
            "snapshot": {
                "model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
            },
            "factors": [],
            "ema": [],
            "avg": 0.0,
        }

    def factor(self, i: int) -> float:
        """The LR factor of sweep point ``i``: geometric from SWEEP_LOW to SWEEP_HIGH."""
        t = i / (self.SWEEP_STEPS - 1)
        return float(self.SWEEP_LOW * (self.SWEEP_HIGH / self.SWEEP_LOW) ** t)

    def before_step(self, step: int) -> None:
        if self.sweep is None:
            return
        f = self.factor(len(self.sweep["factors"]))
        for group, base in zip(self.optimizer.param_groups, self.sweep["base_lrs"]):
            group["lr"] = base * f

    def _sweep_point(self, value: float, step: int) -> None:
        sweep = self.sweep
        assert sweep is not None
        i = len(sweep["factors"])
        sweep["factors"].append(self.factor(i))
        sweep["avg"] = self.BETA * sweep["avg"] + (1.0 - self.BETA) * value
        smoothed = sweep["avg"] / (1.0 - self.BETA ** (i + 1))
        ema: list[float] = sweep["ema"]
        diverged = not math.isfinite(smoothed) or (
            len(ema) > 0 and smoothed > self.DIVERGE * min(ema)
        )
        if not diverged:
            ema.append(smoothed)
        if diverged or i + 1 == self.SWEEP_STEPS:
            self.finish_sweep(step + 1)

    @classmethod
    def pick(cls, factors: Sequence[float], ema: Sequence[float]) -> float:
        """The factor at the steepest drop of the EMA against log LR.

        The steps are uniform in log LR, so the drop is the difference of consecutive EMA
        values, as LRFinder.exp_weighted_derivatives (its first derivative is 0). When the sweep
        stopped too early to skip the first 10 and last 5 points, all points are used; with
        fewer than two points the LR stays as it was (factor 1).
        """
        n = len(ema)
        if n < 2:
            return 1.0
        drops = [0.0] + [ema[i] - ema[i - 1] for i in range(1, n)]
        lo, hi = cls.SKIP_START, n - cls.SKIP_END
        if hi <= lo:
            lo, hi = 1, n
        best = min(range(lo, hi), key=lambda i: drops[i])
        return float(factors[best])

    def finish_sweep(self, step: int) -> None:
        """Pick the factor, put model, optimizer and RNGs back as they were, set the new LR."""
        sweep = self.sweep
        assert sweep is not None
        f = self.pick(sweep["factors"], sweep["ema"])
        snap = sweep["snapshot"]
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        torch.set_rng_state(snap["torch_rng"])
        np.random.set_state(snap["numpy_rng"])
        random.setstate(snap["python_rng"])
        for group, base in zip(self.optimizer.param_groups, sweep["base_lrs"]):
            group["lr"] = base * f
        self.sweeps.append(
            {"start": sweep["start"], "end": step, "points": len(sweep["ema"]), "factor": f}
        )
        self.sweep = None
        self.epoch = []

    def extra(self) -> dict[str, Any]:
        return {"sweeps": self.sweeps}


class ScheduleFree(Strategy):
    name = "schedulefree"

    def make_optimizer(self) -> torch.optim.Optimizer:
        module: Any = importlib.import_module("schedulefree")  # optional: imported at use
        self.modes: Any = module.AdamWScheduleFree(self.model.parameters(), warmup_steps=0)
        optimizer: torch.optim.Optimizer = self.modes
        return optimizer

    def train_mode(self) -> None:
        self.model.train()
        self.modes.train()  # schedule-free keeps two iterates: train on y, evaluate at x

    def eval_mode(self) -> None:
        self.model.eval()
        self.modes.eval()


class Prodigy(Strategy):
    """``prodigyopt.Prodigy`` at its defaults (lr 1.0: it estimates the step size itself), what a
    user switching to a parameter-free optimizer runs (Mishchenko & Defazio 2024)."""

    name = "prodigy"

    def make_optimizer(self) -> torch.optim.Optimizer:
        module: Any = importlib.import_module("prodigyopt")  # optional: imported at use
        optimizer: torch.optim.Optimizer = module.Prodigy(self.model.parameters())
        return optimizer


class DoG(Strategy):
    """``dog.DoG`` at its defaults with the polynomial-decay iterate average its README calls
    necessary for good results (Ivgi, Hinder & Carmon 2023): trained on the iterate,
    evaluated at the average."""

    name = "dog"

    def make_optimizer(self) -> torch.optim.Optimizer:
        module: Any = importlib.import_module("dog")  # optional: imported at use
        self.averager: Any = module.PolynomialDecayAverager(self.model)
        self._iterate: dict[str, torch.Tensor] | None = None
        optimizer: torch.optim.Optimizer = module.DoG(self.model.parameters())
        return optimizer

    def after_step(self, step: int, loss: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> None:
        self.averager.step()

    def eval_mode(self) -> None:
        self.model.eval()
        self._iterate = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.averager.averaged_model.state_dict())

    def train_mode(self) -> None:
        if self._iterate is not None:  # back to the iterate the optimizer is training
            self.model.load_state_dict(self._iterate)
            self._iterate = None
        self.model.train()


class Mechanic(Strategy):
    """The task's own optimizer, at its own LR, wrapped by ``mechanic_pytorch.mechanize``, which
    learns a global scale for its updates (Cutkosky, Defazio & Mehta 2023)."""

    name = "mechanic"

    def make_optimizer(self) -> torch.optim.Optimizer:
        module: Any = importlib.import_module("mechanic_pytorch")  # optional: imported at use
        own = self.task.optimizer([torch.nn.Parameter(torch.zeros(1))], self.task.lr)
        # the user's settings, as far as the class's constructor takes them back (AdamW's
        # defaults hold a ``decoupled_weight_decay`` that AdamW's own __init__ does not accept)
        accepted = inspect.signature(type(own).__init__).parameters
        settings = {k: v for k, v in own.defaults.items() if k in accepted}
        optimizer: torch.optim.Optimizer = module.mechanize(type(own), log_every=0)(
            self.model.parameters(), **settings
        )
        return optimizer


class Unstuck(Strategy):
    name = "unstuck"
    policy = "rescue"  # a variant (bench/spike_lead.py's observer) sets its own

    def __init__(self, task: Task, model: torch.nn.Module, budget: int, steps_per_epoch: int):
        super().__init__(task, model, budget, steps_per_epoch)
        import unstuck

        self.scheduler = _schedule(task, self.optimizer, budget)
        self.guard = unstuck.Guard(
            model,
            self.optimizer,
            scheduler=self.scheduler,
            policy=self.policy,
            loss_fn=task.loss,
            console=False,
            **self.guard_options(),
        )

    def guard_options(self) -> dict[str, Any]:
        """Further Guard arguments: none for the benchmark itself, a variant's own."""
        return {}

    def after_step(self, step: int, loss: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        self.guard.step(loss, batch=batch)

    def skip_batch(self) -> bool:
        # The loop of a spike task asks, as docs/guard.md shows; the other tasks' loops do not,
        # as when their figures were taken.
        return self.task.kind == "spike" and self.guard.skip_batch()

    def validate(self, val_loss: float) -> None:
        self.guard.validate(val_loss)

    @property
    def should_stop(self) -> bool:
        return bool(getattr(self.guard, "should_stop", False))

    @property
    def n_actions(self) -> int:
        return len(self.guard.actions)

    @property
    def decides_next(self) -> bool:
        """Whether the Guard's next ``step`` flushes, i.e. may act."""
        return bool(self.guard._hub.step + 1 >= self.guard._next_flush)

    def close(self) -> None:
        self.guard.close()

    def extra(self) -> dict[str, Any]:
        engine = self.guard._engine
        return {
            "actions": [
                {
                    "name": a.name,
                    "step": a.step,
                    "outcome": a.outcome,
                    **(
                        {"restored_step": a.evidence["restored_last_good_step"]}
                        if "restored_last_good_step" in a.evidence
                        else {}
                    ),
                }
                for a in self.guard.actions
            ],
            "probe_steps": engine.probe_steps,
            "probe_nonfinite": engine.probe_nonfinite,
        }


STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        Constant,
        RLROPEpoch,
        RLROPMean50,
        CosineWR,
        OneCycle,
        LRFOnPlateau,
        ScheduleFree,
        Prodigy,
        DoG,
        Mechanic,
        Unstuck,
    )
}
STRATEGIES = tuple(STRATEGY_CLASSES)
BUDGET_AWARE = ("onecycle", "cosine_wr")  # the strategies given the run's budget
BASELINES = tuple(s for s in STRATEGIES if s != "unstuck")


# ----------------------------------------------------------------------------------- runs


def evaluate(task: Task, model: torch.nn.Module, data: Data) -> tuple[float, float]:
    """(evaluation loss, loss of the evaluation split) — equal unless ``task.metric`` is error."""
    with torch.no_grad():
        out = model(data.x_val)
        loss = float(task.loss(out, data.y_val))
        if task.metric == "error":
            return float((out.argmax(1) != data.y_val).float().mean()), loss
    return loss, loss


def run(
    task: Task,
    strategy: str | type[Strategy],
    seed: int,
    *,
    budget: int | None = None,
    curve: bool = False,
) -> dict[str, Any]:
    """Train ``task`` under ``strategy`` (a name, or a Strategy class: tests pass subclasses
    that look inside) for one seed; returns plain data. ``budget`` overrides the task's (smoke
    tests only: the targets are calibrated for the task's budget); ``curve`` keeps the
    evaluations."""
    cls = STRATEGY_CLASSES[strategy] if isinstance(strategy, str) else strategy
    budget = task.budget if budget is None else budget
    every = task.eval_every
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    data = task.data(seed)
    torch.manual_seed(seed)
    model = task.model()
    gen = torch.Generator().manual_seed(seed)  # the batch order: nothing else draws from it
    n = data.x.shape[0]
    steps_per_epoch = max(1, n // task.batch_size)

    start, cpu_start = time.perf_counter(), time.process_time()
    strat = cls(task, model, budget, steps_per_epoch)
    opt = strat.optimizer
    points: list[tuple[int, float]] = []
    first_action: tuple[int, float] | None = None
    stopped_at: int | None = None
    order = torch.randperm(n, generator=gen)
    cursor = 0
    skipped = 0  # steps whose batch the loop skipped (after a rewind)

    def measure() -> tuple[float, float]:
        strat.eval_mode()
        return evaluate(task, model, data)

    try:
        for step in range(budget):
            if cursor + task.batch_size > n:
                order = torch.randperm(n, generator=gen)
                cursor = 0
            idx = order[cursor : cursor + task.batch_size]
            cursor += task.batch_size
            x, y = data.x[idx], data.y[idx]
            if strat.skip_batch():
                skipped += 1
            else:
                strat.before_step(step)
                strat.train_mode()
                loss = task.loss(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                spike = task.spike.factor(step) if task.spike is not None else 1.0
                if spike != 1.0:  # on top of the LR the strategy set, for this step only
                    lrs = [g["lr"] for g in opt.param_groups]
                    for g in opt.param_groups:
                        g["lr"] = g["lr"] * spike
                opt.step()
                if spike != 1.0:
                    for g, lr in zip(opt.param_groups, lrs):
                        g["lr"] = lr
                # The state unstuck's first action finds: measured before the Guard's decision
                # (an early restart changes the weights inside it).
                found = (
                    measure()[0]
                    if first_action is None and isinstance(strat, Unstuck) and strat.decides_next
                    else None
                )
                strat.after_step(step, loss, (x, y))
                if first_action is None and isinstance(strat, Unstuck) and strat.n_actions > 0:
                    first_action = (step + 1, found if found is not None else measure()[0])
            if (step + 1) % every == 0:
                value, val_loss = measure()
                points.append((step + 1, value))
                strat.validate(val_loss)
            if strat.should_stop:
                stopped_at = step + 1
                if not points or points[-1][0] != step + 1:
                    points.append((step + 1, measure()[0]))
                break
    finally:
        strat.close()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    last = points[-1][1] if points else math.nan
    done = points[-1][0] if points else 0
    # a stopped run: the remaining evaluations repeat the last one
    points += [(s, last) for s in range((done // every + 1) * every, budget + 1, every)]
    reached = next((s for s, v in points if s % every == 0 and v <= task.target), None)
    result: dict[str, Any] = {
        "task": task.name,
        "strategy": cls.name,
        "seed": seed,
        "budget": budget,
        "eval_every": every,
        "steps_to_target": reached if reached is not None else NOT_REACHED * budget,
        "reached": reached is not None,
        "final_loss": last,
        "wall_s": wall,
        "cpu_s": cpu,
        "stopped_at": stopped_at,
        "skipped_batches": skipped,
        **strat.extra(),
    }
    if isinstance(strat, Unstuck):
        result["first_action_step"] = first_action[0] if first_action else None
        result["first_action_loss"] = first_action[1] if first_action else None
        result["worse_than_first_action"] = bool(
            first_action is not None and not (last <= first_action[1])
        )
    if curve:
        result["curve"] = [(s, v) for s, v in points if s % every == 0]
    return result


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import logging

    logging.getLogger("unstuck").setLevel(logging.WARNING)


Job = tuple[str, str, int, int | None, bool] | tuple[str, str, int, int | None, bool, bool]


def run_job(job: Job) -> dict[str, Any]:
    """One (task, strategy, seed) in a worker; an exception is recorded, not raised. A sixth
    element True runs the task's reference configuration instead (``"reference": True``)."""
    _init_worker()
    name, strategy, seed, budget, curve = job[:5]
    reference = len(job) > 5 and bool(job[5])
    task = reference_task(TASKS[name]) if reference else TASKS[name]
    try:
        result = run(task, strategy, seed, budget=budget, curve=curve)
    except Exception as exc:  # a crash in one run must not lose the other runs' results
        b = task.budget if budget is None else budget
        result = {
            "task": name,
            "strategy": strategy,
            "seed": seed,
            "budget": b,
            "eval_every": task.eval_every,
            "steps_to_target": NOT_REACHED * b,
            "reached": False,
            "final_loss": math.nan,
            "wall_s": math.nan,
            "error": f"{type(exc).__name__}: {exc}",
        }
    if reference:
        result["reference"] = True
    return result


# -------------------------------------------------------------------------------- scoring


def _median(values: Sequence[float]) -> float:
    """Median with NaN (a diverged run) ranked above every number."""
    if not values:
        return math.nan
    ranked = [math.inf if math.isnan(v) else v for v in values]
    m = statistics.median(ranked)
    return math.nan if math.isinf(m) else m


def geomean(values: Sequence[float]) -> float:
    """Geometric mean of positive numbers (NaN for none)."""
    if not values:
        return math.nan
    return math.exp(statistics.fmean(math.log(v) for v in values))


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task and strategy: medians over seeds and the per-seed values."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: (r["task"], r["strategy"], r["seed"])):
        cell = out.setdefault(r["task"], {}).setdefault(r["strategy"], {"runs": []})
        cell["runs"].append(r)
    for cells in out.values():
        for name, cell in cells.items():
            rs = cell.pop("runs")
            cell["steps_to_target"] = _median([r["steps_to_target"] for r in rs])
            cell["final_loss"] = _median([r["final_loss"] for r in rs])
            cell["wall_s"] = _median([r["wall_s"] for r in rs])
            cell["cpu_s"] = _median([r.get("cpu_s", math.nan) for r in rs])
            cell["reached"] = sum(r["reached"] for r in rs)
            cell["seeds"] = len(rs)
            cell["budget"] = rs[0]["budget"]
            cell["per_seed"] = {
                k: [r.get(k) for r in rs]
                for k in ("seed", "steps_to_target", "final_loss", "wall_s", "cpu_s", "stopped_at")
            }
            errors = [r["error"] for r in rs if "error" in r]
            if errors:
                cell["errors"] = errors
            if name == "unstuck":
                for k in (
                    "first_action_step",
                    "first_action_loss",
                    "worse_than_first_action",
                    "probe_steps",
                    "probe_nonfinite",
                ):
                    cell["per_seed"][k] = [r.get(k) for r in rs]
                cell["probe_nonfinite"] = sum(int(r.get("probe_nonfinite") or 0) for r in rs)
                cell["worse_than_first_action"] = sum(
                    bool(r.get("worse_than_first_action")) for r in rs
                )
                cell["per_seed"]["actions"] = [r.get("actions", []) for r in rs]
            elif name == "lrf_on_plateau":
                cell["per_seed"]["sweeps"] = [r.get("sweeps", []) for r in rs]
            elif name.startswith("rlrop"):
                cell["per_seed"]["lr_cuts_at"] = [r.get("lr_cuts_at", []) for r in rs]
            if any("curve" in r for r in rs):
                cell["per_seed"]["curve"] = [r.get("curve") for r in rs]
    return out


def spike_summary(
    cells: dict[str, dict[str, Any]], reference: dict[str, Any], tolerance: float, start: int
) -> dict[str, Any]:
    """A spike task's verdicts: per strategy, the median final loss and how many seeds end no
    worse than the spike-free reference of the same seed (final ≤ reference × (1 + tolerance));
    for unstuck, how many seeds kept a rewind to a state from before the spike (``start``)."""
    ref = dict(zip(reference["per_seed"]["seed"], reference["per_seed"]["final_loss"]))
    out: dict[str, Any] = {
        "no_spike_final": reference["final_loss"],
        "no_spike_per_seed": reference["per_seed"]["final_loss"],
        "tolerance": tolerance,
        "final": {},
        "no_worse_seeds": {},
        "no_worse": {},
    }
    for name, cell in cells.items():
        per_seed = cell["per_seed"]
        ok = [
            f is not None and math.isfinite(f) and f <= ref[seed] * (1.0 + tolerance)
            for seed, f in zip(per_seed["seed"], per_seed["final_loss"])
            if seed in ref
        ]
        out["final"][name] = cell["final_loss"]
        out["no_worse_seeds"][name] = sum(ok)
        out["no_worse"][name] = bool(ok) and all(ok)
        if name == "unstuck":
            out["unstuck_rewound_before_spike"] = sum(
                any(
                    a["name"] == "rewind"
                    and a["outcome"] == "kept"
                    and a.get("restored_step", start) < start
                    for a in actions
                )
                for actions in per_seed["actions"]
            )
    out["seeds"] = reference["seeds"]
    return out


def summarize(
    tasks: dict[str, dict[str, dict[str, Any]]],
    kinds: dict[str, str],
    references: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The headline numbers (see the module docstring) from :func:`aggregate`'s table.
    ``references``: per spike task, the aggregated cell of its spike-free reference run."""
    plateau = [t for t, cells in tasks.items() if kinds.get(t) == "plateau" and "unstuck" in cells]
    healthy = [t for t, cells in tasks.items() if kinds.get(t) == "healthy"]
    strategies = sorted({s for cells in tasks.values() for s in cells} - {"unstuck"})
    ratio_vs: dict[str, float | None] = {}
    for s in strategies:
        ratios = [
            tasks[t]["unstuck"]["steps_to_target"] / tasks[t][s]["steps_to_target"]
            for t in plateau
            if s in tasks[t]
        ]
        ratio_vs[s] = geomean(ratios) if ratios else None
    best_share = strict_share = None
    compared = [t for t in plateau if any(s in tasks[t] for s in strategies)]
    if compared:
        gaps = [
            tasks[t]["unstuck"]["steps_to_target"]
            - min(tasks[t][s]["steps_to_target"] for s in strategies if s in tasks[t])
            for t in compared
        ]
        best_share = sum(g <= 0 for g in gaps) / len(gaps)
        strict_share = sum(g < 0 for g in gaps) / len(gaps)
    within: dict[str, bool] = {}
    healthy_ratio: dict[str, float] = {}
    for t in healthy:
        cells = tasks[t]
        if "unstuck" in cells and "constant" in cells:
            ratio = cells["unstuck"]["final_loss"] / cells["constant"]["final_loss"]
            healthy_ratio[t] = ratio
            within[t] = abs(ratio - 1.0) <= HEALTHY_TOLERANCE
    unstuck_cells = [cells["unstuck"] for cells in tasks.values() if "unstuck" in cells]
    spike: dict[str, Any] = {}
    for t, ref in (references or {}).items():
        induced = TASKS[t].spike
        if kinds.get(t) == "spike" and t in tasks and induced is not None:
            spike[t] = spike_summary(tasks[t], ref, TASKS[t].spike_tolerance, induced.start)
    return {
        "geomean_ratio_vs": ratio_vs,
        # Told the budget (OneCycle's total_steps, the warm restarts' T_0 = budget // 8) or not:
        # a schedule that knows when the run ends can anneal into it, unstuck cannot.
        "geomean_ratio_vs_budget_aware": {s: r for s, r in ratio_vs.items() if s in BUDGET_AWARE},
        "geomean_ratio_vs_budget_agnostic": {
            s: r for s, r in ratio_vs.items() if s not in BUDGET_AWARE
        },
        "best_baseline_share": best_share,
        "best_baseline_strict_share": strict_share,
        # every median at 2 × budget: all tie, and the tie counts as "≤ the best baseline"
        "plateau_tasks_all_unreached": [
            t
            for t in plateau
            if all(c["steps_to_target"] >= NOT_REACHED * c["budget"] for c in tasks[t].values())
        ],
        "healthy_within_2pct": within,
        "healthy_final_ratio": healthy_ratio,
        "worse_than_first_action": sum(c["worse_than_first_action"] for c in unstuck_cells),
        # probe (range-test) steps whose loss was non-finite, over every unstuck run: the goal is 0
        "probe_nonfinite_steps": sum(c.get("probe_nonfinite", 0) for c in unstuck_cells),
        "unstuck_runs": sum(c["seeds"] for c in unstuck_cells),
        "unstuck_runs_with_action": sum(
            sum(s is not None for s in c["per_seed"]["first_action_step"]) for c in unstuck_cells
        ),
        "plateau_tasks": plateau,
        "healthy_tasks": healthy,
        "spike": spike,
    }


def table(tasks: dict[str, dict[str, dict[str, Any]]], strategies: Sequence[str]) -> str:
    """Markdown: tasks × strategies, median steps to target (reached seeds / seeds)."""
    lines = [
        "| task | " + " | ".join(strategies) + " |",
        "|---|" + "---:|" * len(strategies),
    ]
    for name, cells in tasks.items():
        row = []
        for s in strategies:
            c = cells.get(s)
            row.append(
                "" if c is None else f"{c['steps_to_target']:.0f} ({c['reached']}/{c['seeds']})"
            )
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def final_table(tasks: dict[str, dict[str, dict[str, Any]]], strategies: Sequence[str]) -> str:
    """Markdown: median final evaluation loss, and the strategies' summed median wall times."""
    lines = [
        "| task (final eval loss) | " + " | ".join(strategies) + " |",
        "|---|" + "---:|" * len(strategies),
    ]
    for name, cells in tasks.items():
        row = [f"{cells[s]['final_loss']:.4g}" if s in cells else "" for s in strategies]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    walls = [sum(c[s]["wall_s"] for c in tasks.values() if s in c) for s in strategies]
    lines.append("| wall s (sum of medians) | " + " | ".join(f"{w:.1f}" for w in walls) + " |")
    return "\n".join(lines)


def spike_table(spike: dict[str, dict[str, Any]], strategies: Sequence[str]) -> str:
    """Markdown: per spike task, the median final loss of the spike-free reference and of each
    strategy, with the seeds that end no worse than the reference (of the seeds)."""
    lines = [
        "| spike task (final eval loss) | no spike | " + " | ".join(strategies) + " |",
        "|---|---:|" + "---:|" * len(strategies),
    ]
    for name, s in spike.items():
        row = [
            f"{s['final'][k]:.4g} ({s['no_worse_seeds'][k]}/{s['seeds']})"
            if k in s["final"]
            else ""
            for k in strategies
        ]
        ref = s["no_spike_final"]
        lines.append(f"| {name} | {ref:.4g} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- calibration


def round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant figures (0.01234 -> 0.013)."""
    if not math.isfinite(x) or x <= 0:
        return x
    e = math.floor(math.log10(x)) - digits + 1
    step = 10.0**e
    return round(math.ceil(x / step - 1e-9) * step, max(0, -e))


def calibrate(names: Sequence[str], seeds: int = 3, jobs: int = 1) -> dict[str, dict[str, Any]]:
    """Run each task's reference configuration under ``constant``; the target rule's values."""
    work = [(n, s) for n in names for s in range(seeds)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, initializer=_init_worker) as pool:
            runs = list(pool.map(_calibration_run, work, chunksize=1))
    else:
        runs = [_calibration_run(w) for w in work]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        task = TASKS[name]
        mine = [r for r in runs if r["task"] == name]
        half = [dict(r["curve"])[task.budget // 2] for r in mine]
        target = round_up(max(half))  # every reference seed is there by half the budget
        first = [next((s for s, v in r["curve"] if v <= target), None) for r in mine]
        finals = [r["final_loss"] for r in mine]
        out[name] = {
            "reference": task.reference,
            "budget": task.budget,
            "at_half_budget": half,
            "target": target,
            "reference_steps_to_target": first,
            "reference_final": finals,
        }
        if task.kind == "spike":
            # "no worse than the reference": within the reference's own spread over seeds
            out[name]["spike_tolerance"] = round_up((max(finals) - min(finals)) / min(finals))
    return out


def _calibration_run(work: tuple[str, int]) -> dict[str, Any]:
    _init_worker()
    name, seed = work
    return run(reference_task(TASKS[name]), "constant", seed, curve=True)


# ----------------------------------------------------------------------------------- main


def _names(arg: str, known: Sequence[str], what: str, ap: argparse.ArgumentParser) -> list[str]:
    names = [n for n in arg.split(",") if n] or list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        ap.error(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return [n for n in known if n in names]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Rescue benchmark: steps to a target loss.")
    ap.add_argument("--quick", action="store_true", help="the quick subset of tasks, 3 seeds")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--tasks", default="", help="comma-separated task names")
    ap.add_argument("--strategies", default="", help="comma-separated strategy names")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--budget", type=int, default=None, help="override every budget (smoke tests)")
    ap.add_argument("--curves", action="store_true", help="keep every run's evaluation curve")
    ap.add_argument("--calibrate", action="store_true", help="print the reference targets")
    ap.add_argument(
        "--out", "--json", dest="out", type=Path, default=HERE / "results" / "rescue.json"
    )
    args = ap.parse_args(argv)

    _init_worker()
    names = _names(args.tasks, list(TASKS), "tasks", ap)
    if args.quick:
        names = [n for n in names if TASKS[n].quick]
    strategies = _names(args.strategies, STRATEGIES, "strategies", ap)
    t0 = time.perf_counter()

    if args.calibrate:
        cal = calibrate(names, args.seeds, args.jobs)
        for name, c in cal.items():
            half = ", ".join(f"{v:.4g}" for v in c["at_half_budget"])
            print(
                f"{name}: target = {c['target']:g}  (reference: {c['reference']}; eval at step "
                f"{c['budget'] // 2}: {half}; reaches it at {c['reference_steps_to_target']} of "
                f"{c['budget']})"
                + (
                    f"; final: {', '.join(f'{v:.4g}' for v in c['reference_final'])}; "
                    f"spike tolerance = {c['spike_tolerance']:g}"
                    if "spike_tolerance" in c
                    else ""
                )
            )
        print(f"\ncalibrated in {time.perf_counter() - t0:.0f} s")
        return {"calibration": cal}

    missing = [n for n in names if not math.isfinite(TASKS[n].target)]
    if missing:
        ap.error(f"tasks without a calibrated target: {missing}; run --calibrate")
    jobs: list[Job] = [
        (n, s, seed, args.budget, args.curves)
        for n in names
        for s in strategies
        for seed in range(args.seeds)
    ]
    # a spike task's bar: its spike-free reference under the task's own schedule, every seed
    jobs += [
        (n, "constant", seed, args.budget, args.curves, True)
        for n in names
        if TASKS[n].kind == "spike"
        for seed in range(args.seeds)
    ]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_init_worker) as pool:
            done = list(pool.map(run_job, jobs, chunksize=1))
    else:
        done = [run_job(j) for j in jobs]
    runs = [r for r in done if not r.get("reference")]
    references = {
        n: cells["constant"]
        for n, cells in aggregate([r for r in done if r.get("reference")]).items()
    }
    tasks = aggregate(runs)
    tasks = {n: {s: tasks[n][s] for s in strategies} for n in names}
    summary = summarize(tasks, {n: TASKS[n].kind for n in names}, references)
    seconds = time.perf_counter() - t0
    summary["seconds"] = seconds
    summary["runs"] = len(done)
    summary["errors"] = sum("error" in r for r in done)
    result = {
        "tasks": tasks,
        "references": references,
        "summary": summary,
        "meta": {
            "quick": args.quick,
            "seeds": args.seeds,
            "budget_override": args.budget,
            "targets": {n: TASKS[n].target for n in names},
            "budgets": {n: TASKS[n].budget for n in names},
            "kinds": {n: TASKS[n].kind for n in names},
            "torch": torch.__version__,
        },
    }
    print(table(tasks, strategies))
    print()
    print(final_table(tasks, strategies))
    print()
    if summary["spike"]:
        print(spike_table(summary["spike"], strategies))
        print()
    print(json.dumps(plain(summary), indent=1))
    print(f"\n{len(done)} runs in {seconds:.0f} s")
    for r in done:
        if "error" in r:
            print(f"error: {r['task']} / {r['strategy']} / seed {r['seed']}: {r['error']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(plain(result), indent=1, allow_nan=False))
    print(f"wrote {args.out}")
    return result


def plain(value: Any) -> Any:
    """``value`` with NaN and infinities as None and tuples as lists: strict JSON."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    main()
