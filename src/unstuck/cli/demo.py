"""``unstuck demo``: a real plateau on a bundled dataset, caught, explained and rescued.

The default task: a 2-hidden-layer ReLU MLP on scikit-learn's handwritten digits (1,797 8×8
images, bundled with scikit-learn, no download), trained with plain SGD at lr=3e-4 — a learning
rate two decades too small, the commonest stall there is. The loss sits near chance level,
ln 10 ≈ 2.303, and creeps: ReduceLROnPlateau's relative threshold sees "progress" and never fires
(REFERENCE.md §1b), and it could only cut the LR anyway. The second task is the classic sigmoid
saddle (Saad & Solla 1995): a sigmoid MLP at lr=0.01 that sits at ln 10 for thousands of steps.
The demo trains the same model twice from the same seed, without and with unstuck
(``policy="rescue"``), and compares.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import unstuck

__all__ = ["DEFAULT_TASK", "TASKS", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class Task:
    description: str
    lr: float
    steps: int
    quick_steps: int
    batch_size: int = 64
    hidden: int = 64
    depth: int = 2
    activation: str = "relu"


TASKS: dict[str, Task] = {
    "digits-low-lr": Task(
        description="2-hidden-layer ReLU MLP on scikit-learn digits, SGD lr=3e-4 (far too low)",
        lr=3e-4,
        steps=4000,
        quick_steps=1500,
    ),
    "digits-sigmoid": Task(
        description="2-hidden-layer sigmoid MLP on scikit-learn digits, SGD lr=0.01",
        lr=0.01,
        steps=4000,
        quick_steps=1500,
        activation="sigmoid",
    ),
}
ACTIVATIONS = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}
DEFAULT_TASK = "digits-low-lr"


@dataclass
class RunResult:
    train_loss: float
    val_loss: float
    val_accuracy: float
    wall_s: float


@dataclass
class DemoResult:
    task: str
    steps: int
    seed: int
    without: RunResult
    with_unstuck: RunResult
    plateaus: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    run_dir: str | None = None
    report: str | None = None  # the HTML report written into run_dir, if any
    report_note: str = ""  # why there is no report, when run_dir is set

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "steps": self.steps,
            "seed": self.seed,
            "without": self.without.__dict__,
            "with_unstuck": self.with_unstuck.__dict__,
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
) -> tuple[RunResult, unstuck.Guard | None]:
    _, _, x_val, y_val = data
    model = _model(task, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr)
    guard = guard_factory(model, optimizer) if guard_factory is not None else None
    batches = torch.Generator().manual_seed(seed + 1)
    bar = _progress(steps, label, progress)
    start = time.perf_counter()
    recent: list[torch.Tensor] = []
    val_every = max(steps // 20, 1)
    with _log_above(bar):
        _loop(task, steps, data, model, optimizer, guard, batches, bar, recent, val_every)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    if guard is not None:
        guard.close()
    val_loss, accuracy = _evaluate(model, x_val, y_val)
    train_loss = float(torch.stack(recent[-100:]).mean())
    return RunResult(train_loss, val_loss, accuracy, wall), guard


def _log_above(bar: Any) -> contextlib.AbstractContextManager[Any]:
    """Print unstuck's console lines above the progress bar instead of through it."""
    if bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    redirect: contextlib.AbstractContextManager[Any] = logging_redirect_tqdm(
        loggers=[logging.getLogger("unstuck")]
    )
    return redirect


def _loop(
    task: Task,
    steps: int,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    guard: unstuck.Guard | None,
    batches: torch.Generator,
    bar: Any,
    recent: list[torch.Tensor],
    val_every: int,
) -> None:
    x_train, y_train, x_val, y_val = data
    for step in range(steps):
        index = torch.randint(0, len(x_train), (task.batch_size,), generator=batches)
        x, y = x_train[index], y_train[index]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent.append(loss.detach())
        if guard is not None:
            guard.step(loss, batch=(x, y))  # a batch to keep, for the curvature probe
        if (step + 1) % val_every == 0:
            val_loss, _ = _evaluate(model, x_val, y_val)
            if guard is not None:
                guard.validate(val_loss)
            if bar is not None:
                bar.set_postfix(loss=f"{float(torch.stack(recent[-100:]).mean()):.3f}")
                bar.update(val_every)


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
    ``run_dir/report.html`` (when plotly is installed; otherwise ``report_note`` says why not).
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown demo task {task_name!r}; known: {', '.join(TASKS)}")
    task = TASKS[task_name]
    n_steps = steps if steps is not None else (task.quick_steps if quick else task.steps)
    if n_steps < 100:
        raise ValueError(f"--steps must be at least 100 for a plateau to show, got {n_steps}")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    data = _load_digits(seed)
    without, _ = _train(
        task, n_steps, seed, data, "without unstuck", guard_factory=None, progress=progress
    )

    def factory(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> unstuck.Guard:
        return unstuck.Guard(
            model,
            optimizer,
            policy="rescue",
            run_dir=run_dir,
            meta={"demo_task": task_name},
            loss_fn=torch.nn.functional.cross_entropy,
        )

    with_unstuck, guard = _train(
        task, n_steps, seed, data, "with unstuck   ", guard_factory=factory, progress=progress
    )
    assert guard is not None
    result = DemoResult(
        task=task_name,
        steps=n_steps,
        seed=seed,
        without=without,
        with_unstuck=with_unstuck,
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
        yield f"           because {a['reason']}"
    yield ""
    w, u = result.without, result.with_unstuck
    yield f"  {'':14} {'train loss':>10} {'val loss':>9} {'val acc':>8} {'time':>7}"
    for name, r in (("without", w), ("with unstuck", u)):
        yield (
            f"  {name:14} {r.train_loss:10.3f} {r.val_loss:9.3f} {r.val_accuracy:8.1%} "
            f"{r.wall_s:6.1f}s"
        )
    if math.isfinite(w.val_loss) and math.isfinite(u.val_loss):
        yield ""
        yield f"  validation loss {w.val_loss:.3f} → {u.val_loss:.3f} with unstuck"
    if result.run_dir:
        yield f"  run store: {Path(result.run_dir) / 'unstuck.sqlite'}"
    if result.report:
        yield f"  report:    {result.report}  (open it in a browser)"
    elif result.run_dir and result.report_note:
        yield f"  report:    {result.report_note}"
    if result.findings:
        yield "  (unstuck.explain('<cause>') tells more about each finding)"
