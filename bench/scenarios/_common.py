"""What every diagnosis scenario shares: data on disk or generated, one training loop, results.

A scenario is one file in this folder defining ``SCENARIO = Scenario(...)``: a small training
setup with one seeded fault (``expected`` is its cause code) or none (``expected=None``: a
healthy control). ``run(seed, short)`` trains it under ``Guard(policy="observe")`` and returns
what unstuck found. ``short=True`` is the shortened form the test suite runs: fewer steps, the
same fault, the same expected cause.

Nothing here is tuned per scenario: the Guard runs with its defaults, except the cadences a
short run needs to have samples at all (documented where they are set).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional

import unstuck
from unstuck.types import Finding, Plateau

__all__ = [
    "Data",
    "RunResult",
    "Scenario",
    "blobs",
    "circles",
    "digits",
    "mlp",
    "regression",
    "sequences",
    "teacher_student",
    "train",
]


@dataclass(frozen=True)
class Scenario:
    """One seeded fault (or a healthy control) and how to run it."""

    name: str
    expected: str | None  # the cause code unstuck should name first; None for a healthy run
    arch: str  # mlp, cnn, transformer, rnn, linear
    optimizer: str  # sgd, momentum, adam, adamw, ...
    description: str  # one sentence: the fault and why it stalls the run
    run: Callable[[int, bool], RunResult]  # (seed, short) -> what unstuck found
    quick: bool = False  # part of the representative subset of ``bench/diagnosis.py --quick``


@dataclass
class RunResult:
    """What one scenario run produced."""

    findings: list[Finding]
    plateaus: list[Plateau]
    steps: int
    seconds: float
    final_loss: float
    extra: dict[str, Any] = field(default_factory=dict)

    def ranking(self) -> list[tuple[str, float]]:
        """Causes by their highest confidence over the run, most confident first."""
        best: dict[str, float] = {}
        for f in self.findings:
            best[f.cause] = max(best.get(f.cause, 0.0), f.confidence)
        return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))


# ----------------------------------------------------------------------------------- data


@dataclass
class Data:
    """Inputs and targets for training and validation, as tensors."""

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    task: str = "classification"  # or "regression"

    @property
    def n_classes(self) -> int:
        return int(self.y.max().item()) + 1 if self.task == "classification" else 0


def _split(x: np.ndarray, y: np.ndarray, seed: int, task: str, val_share: float = 0.2) -> Data:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = int(len(x) * val_share)
    val, tr = order[:n_val], order[n_val:]
    ydtype = torch.long if task == "classification" else torch.float32
    return Data(
        torch.tensor(x[tr], dtype=torch.float32),
        torch.tensor(y[tr], dtype=ydtype),
        torch.tensor(x[val], dtype=torch.float32),
        torch.tensor(y[val], dtype=ydtype),
        task,
    )


def digits(seed: int, *, standardize: bool = True) -> Data:
    """scikit-learn's 1,797 8×8 digits (bundled, no download), 10 classes."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float64)
    if standardize:
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return _split(x, y, seed, "classification")


def circles(seed: int, *, scale: float = 1.0) -> Data:
    """AUTOTRAINER's Circle data: make_circles(1000, noise=0.1, random_state=1), inputs × scale."""
    from sklearn.datasets import make_circles

    x, y = make_circles(1000, noise=0.1, random_state=1)
    return _split(x * scale, y, seed, "classification")


def blobs(seed: int, *, scale: float = 1.0) -> Data:
    """AUTOTRAINER's Blob data: make_blobs(1000, centers=3, n_features=2, cluster_std=2,
    random_state=2), inputs × scale."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(1000, centers=3, n_features=2, cluster_std=2, random_state=2)
    return _split(x * scale, y, seed, "classification")


def regression(seed: int, *, n: int = 2000, d: int = 16, noise: float = 0.1) -> Data:
    """A smooth nonlinear regression target with Gaussian noise (a floor at noise²)."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, 4)) / math.sqrt(d)
    y = np.tanh(x @ w).sum(1, keepdims=True) + noise * rng.standard_normal((n, 1))
    return _split(x, y, seed, "regression")


def teacher_student(seed: int, *, n: int = 2000, d: int = 20, k: int = 2) -> Data:
    """Soft committee machine teacher (Saad & Solla 1995): y = Σ_k erf(w_k·x/√(2d))."""
    rng = np.random.default_rng(2000 + seed)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((k, d))
    y = np.vectorize(math.erf)(x @ w.T / math.sqrt(2 * d)).sum(1, keepdims=True)
    return _split(x, y, seed, "regression")


def sequences(seed: int, *, n: int = 2000, length: int = 12, vocab: int = 10) -> Data:
    """Token sequences labelled by (first token + last token) mod vocab; inputs are token ids."""
    rng = np.random.default_rng(3000 + seed)
    x = rng.integers(0, vocab, size=(n, length))
    y = (x[:, 0] + x[:, -1]) % vocab
    data = _split(x.astype(np.float64), y, seed, "classification")
    data.x = data.x.long()
    data.x_val = data.x_val.long()
    return data


# --------------------------------------------------------------------------------- models


def mlp(
    n_in: int,
    hidden: int,
    n_out: int,
    depth: int = 2,
    activation: Callable[[], torch.nn.Module] = torch.nn.ReLU,
) -> torch.nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with the given activation module."""
    layers: list[torch.nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


# ---------------------------------------------------------------------------------- loop


def default_loss(data: Data) -> Callable[..., torch.Tensor]:
    if data.task == "classification":
        return functional.cross_entropy
    return functional.mse_loss


# Guard arguments every scenario run takes on top of its own: a test that needs the run store
# of scenario runs sets ``run_dir`` here (and clears it after).
GUARD_OVERRIDES: dict[str, Any] = {}


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    per_sample: bool = False,
    val_every: int = 50,
    clip: float | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    indices: Callable[[int, torch.Generator], torch.Tensor] | None = None,
    components: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], Any]
    | None = None,
    before_step: Callable[[int], None] | None = None,
    guard_kwargs: dict[str, Any] | None = None,
) -> RunResult:
    """Train under ``Guard(policy="observe")`` and return what it found.

    Batches are drawn from shuffled epochs of ``data.x`` (``indices(step, gen)`` overrides the
    draw, for data-pipeline faults). ``per_sample`` hands per-sample losses with ids and targets
    to the Guard. ``components(model, x, y, loss) -> (total, {name: term})`` replaces the loss
    with a sum of named terms. ``scaler`` (a GradScaler) is used for the backward pass.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loss_fn = loss_fn or default_loss(data)
    n = data.x.shape[0]
    kwargs: dict[str, Any] = {
        "policy": "observe",
        "console": False,
        "dataset_size": n if per_sample or indices is not None else None,
        "loss_fn": loss_fn,
        "scaler": scaler,
        "scheduler": scheduler,
    }
    kwargs.update(guard_kwargs or {})
    kwargs.update(GUARD_OVERRIDES)
    guard = unstuck.Guard(model, optimizer, **kwargs)
    order = torch.randperm(n, generator=gen)
    cursor = 0
    start = time.perf_counter()
    last = float("nan")
    for step in range(steps):
        if before_step is not None:
            before_step(step)
        if indices is not None:
            idx = indices(step, gen)
        else:
            if cursor + batch_size > n:
                order = torch.randperm(n, generator=gen)
                cursor = 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
        x, y = data.x[idx], data.y[idx]
        model.train()
        out = model(x)
        terms = None
        if components is not None:
            loss, terms = components(model, out, y, idx)
            per = None
        elif per_sample:
            per = loss_fn(out, y, reduction="none")
            per = per.reshape(per.shape[0], -1).mean(1)
            loss = per.mean()
        else:
            per = None
            loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(optimizer)
                guard.clip_grad_norm_(clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip is not None:
                guard.clip_grad_norm_(clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if per is not None:
            guard.step(
                per.detach(),
                ids=idx,
                targets=y if data.task == "classification" else None,
                batch=(x, y),
            )
        else:
            guard.step(loss, batch=(x, y), components=terms)
        if val_every and (step + 1) % val_every == 0:
            model.eval()
            with torch.no_grad():
                guard.validate(loss_fn(model(data.x_val), data.y_val))
        if step == steps - 1:
            last = float(loss.detach())
    guard.close()
    return RunResult(
        findings=guard.findings,
        plateaus=guard.plateaus,
        steps=steps,
        seconds=time.perf_counter() - start,
        final_loss=last,
    )
