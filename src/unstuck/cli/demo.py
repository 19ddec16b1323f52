"""``unstuck demo``: a real plateau on a bundled dataset, caught, explained and rescued.

The default task: a 2-hidden-layer ReLU MLP on scikit-learn's handwritten digits (1,797 8×8
images, bundled with scikit-learn, no download), trained with plain SGD at lr=3e-4 — a learning
rate two decades too small, the commonest stall there is. The loss sits near chance level,
ln 10 ≈ 2.303, and creeps: ReduceLROnPlateau's relative threshold (1e-4 of the best loss) sees
"progress" and rarely fires, and it could only cut the LR anyway. The second task is the
classic sigmoid saddle (Saad & Solla 1995): a sigmoid MLP at lr=0.01 that sits at ln 10 for
thousands of steps.
The demo trains the same model three times from the same seed — as written, with torch's
``ReduceLROnPlateau`` stepped on the validation loss once per epoch (what a user would add
first), and with unstuck (``policy="rescue"``) — and compares. Each run times its own steps, so
unstuck's per-step cost is measured side by side in the same process, not guessed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import unstuck
from unstuck.cli.demo_tasks import DEFAULT_TASK, TASKS, Task
from unstuck.record.console import console_above_progress_bars
from unstuck.record.rundata import reference_curves_meta

__all__ = ["DEFAULT_TASK", "TASKS", "DemoResult", "run_demo"]


ACTIVATIONS = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}


@dataclass
class RunResult:
    train_loss: float
    val_loss: float
    val_accuracy: float
    wall_s: float
    step_ms: float  # median wall time of one training step (forward, backward, step, guard)
    guard_s: float = 0.0  # wall time spent inside guard.step() / guard.validate()


@dataclass
class Curves:
    """A run's per-step training losses and its validation losses, for the comparison."""

    steps: list[int] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)


@dataclass
class DemoResult:
    task: str
    steps: int
    seed: int
    without: RunResult
    with_unstuck: RunResult
    rlrop: RunResult | None = None  # torch's ReduceLROnPlateau on the validation loss, per epoch
    plateaus: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    run_dir: str | None = None
    report: str | None = None  # the HTML report written into run_dir, if any
    report_note: str = ""  # why there is no report, when run_dir is set

    def overhead(self) -> dict[str, float]:
        """unstuck's cost measured in this run: the median step's time against the unguarded
        run's (a ratio side by side in one process), and the share of the guarded run's time
        spent inside the Guard's own calls (flushes, diagnosis, probes)."""
        w, u = self.without, self.with_unstuck
        return {
            "median_step_ratio": u.step_ms / w.step_ms if w.step_ms > 0 else math.nan,
            "guard_share": u.guard_s / u.wall_s if u.wall_s > 0 else math.nan,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "steps": self.steps,
            "seed": self.seed,
            "without": self.without.__dict__,
            "with_unstuck": self.with_unstuck.__dict__,
            "rlrop": None if self.rlrop is None else self.rlrop.__dict__,
            "overhead": self.overhead(),
            "plateaus": self.plateaus,
            "findings": self.findings,
            "actions": self.actions,
            "run_dir": self.run_dir,
            "report": self.report,
        }


def _load_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "unstuck demo needs scikit-learn for its bundled digits data: "
            "pip install 'unstuck[demo]'"
        ) from exc
    x, y = load_digits(return_X_y=True)
    features = torch.tensor(x, dtype=torch.float32) / 16.0
    labels = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    features, labels = features[order], labels[order]
    split = int(0.8 * len(features))
    return features[:split], labels[:split], features[split:], labels[split:]


def _model(task: Task, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = 64
    for _ in range(task.depth):
        layers += [torch.nn.Linear(width, task.hidden), ACTIVATIONS[task.activation]()]
        width = task.hidden
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def _progress(total: int, label: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, unit="step", leave=True, file=sys.stderr)


def _train(
    task: Task,
    steps: int,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    label: str,
    *,
    guard_factory: Callable[[torch.nn.Module, torch.optim.Optimizer], unstuck.Guard] | None,
    progress: bool,
    plateau_scheduler: bool = False,
) -> tuple[RunResult, unstuck.Guard | None, Curves]:
    x_train, _, x_val, y_val = data
    model = _model(task, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr)
    guard = guard_factory(model, optimizer) if guard_factory is not None else None
    scheduler = None
    val_every = max(steps // 20, 1)
    if plateau_scheduler:
        # What a user adds first: torch's ReduceLROnPlateau at its defaults, stepped once per
        # epoch on the validation loss, as its documentation shows.
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        val_every = max(math.ceil(len(x_train) / task.batch_size), 1)
    batches = torch.Generator().manual_seed(seed + 1)
    bar = _progress(steps, label, progress)
    curves = Curves()
    timing = _Timing()
    start = time.perf_counter()
    with _log_above(bar):
        _loop(
            task,
            steps,
            data,
            model,
            optimizer,
            guard,
            scheduler,
            batches,
            bar,
            curves,
            val_every,
            timing,
        )
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    if guard is not None:
        closed = time.perf_counter()
        guard.close()
        timing.guard_s += time.perf_counter() - closed
        wall += time.perf_counter() - closed
    val_loss, accuracy = _evaluate(model, x_val, y_val)
    train_loss = float(torch.stack(curves.losses[-100:]).mean())
    step_ms = 1000.0 * statistics.median(timing.steps) if timing.steps else math.nan
    return RunResult(train_loss, val_loss, accuracy, wall, step_ms, timing.guard_s), guard, curves


@dataclass
class _Timing:
    steps: list[float] = field(default_factory=list)  # seconds per training step
    guard_s: float = 0.0


def _log_above(bar: Any) -> contextlib.AbstractContextManager[Any]:
    """Print unstuck's console lines above the progress bar instead of through it."""
    if bar is None:
        return contextlib.nullcontext()
    return console_above_progress_bars()


def _loop(
    task: Task,
    steps: int,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    guard: unstuck.Guard | None,
    scheduler: Any,
    batches: torch.Generator,
    bar: Any,
    curves: Curves,
    val_every: int,
    timing: _Timing,
) -> None:
    x_train, y_train, x_val, y_val = data
    clock = time.perf_counter
    for step in range(steps):
        began = clock()
        index = torch.randint(0, len(x_train), (task.batch_size,), generator=batches)
        x, y = x_train[index], y_train[index]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if guard is not None:
            guarded = clock()
            guard.step(loss, batch=(x, y))  # a batch to keep, for the curvature probe
            timing.guard_s += clock() - guarded
        timing.steps.append(clock() - began)
        curves.steps.append(step)
        curves.losses.append(loss.detach())
        if (step + 1) % val_every == 0:
            val_loss, _ = _evaluate(model, x_val, y_val)
            curves.val_steps.append(step)
            curves.val_losses.append(val_loss)
            if guard is not None:
                guarded = clock()
                guard.validate(val_loss)
                timing.guard_s += clock() - guarded
            if scheduler is not None:
                scheduler.step(val_loss)
        if bar is not None and ((step + 1) % 50 == 0 or step + 1 == steps):
            bar.set_postfix(loss=f"{float(torch.stack(curves.losses[-100:]).mean()):.3f}")
            bar.update(step + 1 - bar.n)


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy


def run_demo(
    task_name: str = DEFAULT_TASK,
    *,
    steps: int | None = None,
    seed: int = 0,
    run_dir: str | Path | None = "unstuck-demo",
    quick: bool = False,
    progress: bool = True,
    report: bool = True,
) -> DemoResult:
    """Train the task without and with unstuck and return what happened.

    With a ``run_dir`` and ``report=True`` the guarded run's HTML report is written to
    ``run_dir/report.html`` (``report_note`` says why when it could not be written).
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown demo task {task_name!r}; known: {', '.join(TASKS)}")
    task = TASKS[task_name]
    n_steps = steps if steps is not None else (task.quick_steps if quick else task.steps)
    if n_steps < 100:
        raise ValueError(f"--steps must be at least 100 for a plateau to show, got {n_steps}")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    data = _load_digits(seed)
    without, _, plain = _train(
        task, n_steps, seed, data, "without unstuck", guard_factory=None, progress=progress
    )
    rlrop, _, _ = _train(
        task,
        n_steps,
        seed,
        data,
        "ReduceLROnPlat.",
        guard_factory=None,
        progress=progress,
        plateau_scheduler=True,
    )
    reference = reference_curves_meta(
        {
            "compare/loss": (plain.steps, torch.stack(plain.losses).tolist()),
            "compare/val_loss": (plain.val_steps, plain.val_losses),
        }
    )

    def factory(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> unstuck.Guard:
        return unstuck.Guard(
            model,
            optimizer,
            policy="rescue",
            run_dir=run_dir,
            meta={"demo_task": task_name, **reference},
            loss_fn=torch.nn.functional.cross_entropy,
            report=False,  # written below, once the run is closed
        )

    with_unstuck, guard, _ = _train(
        task, n_steps, seed, data, "with unstuck   ", guard_factory=factory, progress=progress
    )
    assert guard is not None
    result = DemoResult(
        task=task_name,
        steps=n_steps,
        seed=seed,
        without=without,
        with_unstuck=with_unstuck,
        rlrop=rlrop,
        plateaus=[p.to_dict() for p in guard.plateaus],
        findings=[f.to_dict() for f in guard.findings],
        actions=[a.to_dict() for a in guard.actions],
        run_dir=str(guard.run_dir) if guard.run_dir is not None else None,
    )
    if report and guard.run_dir is not None:
        result.report, result.report_note = _write_report(guard.run_dir)
    return result


def _write_report(run_dir: Path) -> tuple[str | None, str]:
    """The demo's report: written after the run, never a reason for the demo to fail."""
    from unstuck.record.report import REPORT_FILENAME, write_report
    from unstuck.record.rundata import load_run

    try:
        path = write_report(load_run(run_dir), run_dir / REPORT_FILENAME)
    except ImportError as exc:
        return None, str(exc)
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).warning("unstuck demo: no report written: %s", exc)
        return None, f"not written ({exc})"
    return str(path), ""


_FINDING_REASON = re.compile(r"^(?P<cause>[a-z_]+) (?P<conf>[0-9.]+): ")


def _plain_reason(reason: str) -> str:
    """An action's reason without the finding's summary repeated word for word."""
    match = _FINDING_REASON.match(reason)
    if match:
        return f"to answer the {match['cause']} finding ({match['conf']}) above"
    return reason


def format_demo(result: DemoResult) -> Iterator[str]:
    """The human summary the CLI prints."""
    task = TASKS[result.task]
    yield ""
    yield f"unstuck demo: {task.description}, {result.steps} steps, seed {result.seed}"
    yield ""
    yield "What unstuck saw and did:"
    if not (result.plateaus or result.findings or result.actions):
        yield "  nothing: no plateau was detected in this run"
    for p in result.plateaus:
        end = "open" if p["end"] is None else str(p["end"])
        yield f"  plateau  steps {p['start']}–{end} ({p['kind']}, {p['series']} loss)"
    for f in result.findings:
        yield f"  finding  step {f['step']}: {f['cause']} ({f['confidence']:.2f}) — {f['summary']}"
    for a in result.actions:
        label = a["params"].get("label", a["name"])
        yield f"  action   step {a['step']}: {label} → {a['outcome'].replace('_', ' ')}"
        yield f"           {_plain_reason(a['reason'])}"
    yield ""
    rows = [("without unstuck", result.without)]
    if result.rlrop is not None:
        rows.append(("ReduceLROnPlateau", result.rlrop))
    rows.append(("with unstuck", result.with_unstuck))
    yield f"  {'':18} {'train loss':>10} {'val loss':>9} {'val acc':>8} {'ms/step':>8}"
    for name, r in rows:
        yield (
            f"  {name:18} {r.train_loss:10.3f} {r.val_loss:9.3f} {r.val_accuracy:8.1%} "
            f"{r.step_ms:8.2f}"
        )
    w, u = result.without, result.with_unstuck
    if math.isfinite(w.val_loss) and math.isfinite(u.val_loss):
        yield ""
        yield f"  validation loss {w.val_loss:.3f} → {u.val_loss:.3f} with unstuck"
    cost = result.overhead()
    if math.isfinite(cost["median_step_ratio"]):
        added = u.step_ms - w.step_ms
        yield (
            f"  unstuck's cost: {added:+.2f} ms on the median step ({w.step_ms:.2f} → "
            f"{u.step_ms:.2f} ms, timed side by side in this run), and "
            f"{cost['guard_share']:.0%} of the run spent in its flushes, diagnoses and probes"
        )
    if result.run_dir:
        yield f"  run store: {Path(result.run_dir) / 'unstuck.sqlite'}"
    if result.report:
        yield f"  report:    {result.report}  (open it in a browser)"
    elif result.run_dir and result.report_note:
        yield f"  report:    {result.report_note}"
    causes = list(dict.fromkeys(f["cause"] for f in result.findings))
    if causes:
        yield f"  `unstuck explain {causes[0]}` tells more about a finding"
