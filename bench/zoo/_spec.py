"""What a zoo run is: a ``Spec`` (a base program with its knobs), the data, the models, the loop.

A base program (``bench/zoo/programs/<name>.py``) returns a healthy ``Spec`` for a seed. A
mutation operator (``bench/zoo/operators.py``) edits a copy of that spec at one severity. The
loop below (``execute``) trains the spec with or without a ``Guard(policy="observe")`` and
measures the run with the program's clean metric (validation error rate for a classifier,
validation MSE for a regression), so a mutant can be checked to hurt training without unstuck.

Self-contained on purpose: the zoo does not import ``bench/scenarios`` (its loop mirrors
``scenarios._common.train``), so the scenarios can change without moving the zoo's baseline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

__all__ = ["Data", "Outcome", "Program", "Spec", "execute"]

VAL_EVERY = 50  # steps between guard.validate calls, as scenarios._common.train
EVAL_POINTS = 10  # clean-metric checkpoints per run, for steps-to-target in the hurt check


# ----------------------------------------------------------------------------------- data


@dataclass
class Data:
    """Inputs and targets for training and validation (tensors)."""

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    task: str  # classification, regression, lm (next-token: y is a (n, length) token grid)
    n_classes: int = 0  # classes (classification) or vocabulary size (lm)

    def copy(self) -> Data:
        return replace(self, x=self.x.clone(), y=self.y.clone())


def split(x: np.ndarray, y: np.ndarray, seed: int, task: str, val_share: float = 0.2) -> Data:
    """Shuffle with the run seed and hold out ``val_share`` for validation."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = int(len(x) * val_share)
    val, tr = order[:n_val], order[n_val:]
    long_y = task in ("classification", "lm")
    x_t = torch.tensor(x, dtype=torch.long if x.dtype.kind in "iu" else torch.float32)
    y_t = torch.tensor(y, dtype=torch.long if long_y else torch.float32)
    if not long_y and y_t.ndim == 1:
        y_t = y_t[:, None]
    n_classes = int(y_t.max()) + 1 if long_y else 0
    return Data(x_t[tr], y_t[tr], x_t[val], y_t[val], task, n_classes)


def standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


# --------------------------------------------------------------------------------- spec


@dataclass
class Spec:
    """One runnable training setup. Builders read the model knobs; ``execute`` the rest."""

    program: str
    family: str  # mlp, cnn, resnet, rnn, transformer, linear, autoencoder
    data: Data
    build: Callable[[Spec], nn.Module]
    optimizer: str  # sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad
    lr: float
    steps: int
    batch_size: int
    weight_decay: float = 0.0
    schedule: str | None = None  # warmup_cosine, step, onecycle, early_decay
    warmup: int = 0  # warm-up steps of warmup_cosine
    decay_at: int = 0  # early_decay: the step the LR is cut at ...
    decay_factor: float = 1.0  # ... and by how much (×)
    # model knobs the builders honour (a builder ignores what it has no use for)
    activation: str = "relu"  # relu, tanh, sigmoid, gelu
    hidden: int = 64
    depth: int = 2
    norm: bool = False  # BatchNorm/LayerNorm where the builder has a slot for one
    norm_first: bool = True  # transformers: pre-LN (True) or post-LN (False)
    knobs: frozenset[str] = frozenset()  # which of the knobs above this program's builder reads
    # faults the loop applies
    init_std: float | None = None  # every weight matrix ~ N(0, init_std²)
    weight_gain: float | None = None  # every weight matrix (recurrent ones for RNNs) × gain
    bias_init: float | None = None  # every hidden bias = this constant
    head_gain: float | None = None  # the output layer's weights × gain
    out_act: str | None = None  # softmax or sigmoid appended to the model
    loss: str = "default"  # default, mse_onehot, naive_log_softmax
    # per-sample losses with ids (and class targets) to the Guard, on every run, healthy ones
    # included: a data fault must not be told by the path it takes (label_noise, hard_subset,
    # class_imbalance, truncated_data and repeated_data read per-sample groups)
    per_sample: bool = True
    indices: Callable[[int, torch.Generator], torch.Tensor] | None = None  # data pipeline
    clip_fraction: float | None = None  # the user's clip_grad_norm_ at this × the first norm
    freeze_share: float = 0.0  # share of the parameter tensors (first ones) never updated
    freeze_mode: str = "requires_grad"  # or "left_out" (not in the optimizer)
    half: str | None = None  # model and inputs in float16 or bfloat16 (no fp32 master weights)
    pretrain_steps: int = 0  # a first job before the Guard attaches (resume)
    pretrain_scale: float = 1.0  # that job's loss × this (reduction="sum")
    pretrain_reset: bool = False  # resume with a fresh optimizer (the fix of a stale state)
    aux_weight: float = 0.0  # an auxiliary logit penalty, reduction="sum", × this
    logit_scale: float = 1.0  # logits × this inside the loss (a softmax temperature 1 / this)
    extra: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> Spec:
        return replace(self, data=self.data.copy(), extra=dict(self.extra))


@dataclass(frozen=True)
class Program:
    """A healthy, tuned base program: ``make(seed)`` returns its spec."""

    name: str
    family: str  # mlp, cnn, resnet, rnn, transformer, linear, autoencoder
    description: str
    make: Callable[[int], Spec]


# ------------------------------------------------------------------------------- models


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}[name]()


def mlp(spec: Spec, n_in: int, n_out: int) -> nn.Sequential:
    """``spec.depth`` hidden layers of ``spec.hidden`` units, optional BatchNorm, the head last."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(spec.depth):
        layers.append(nn.Linear(width, spec.hidden))
        if spec.norm:
            layers.append(nn.BatchNorm1d(spec.hidden))
        layers.append(activation(spec.activation))
        width = spec.hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class SoftmaxOut(nn.Module):
    """A model with a softmax appended (an output activation the loss does not expect)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.inner(x), dim=-1)


class SigmoidOut(nn.Module):
    """A model with a sigmoid appended (a bounded output on unbounded regression targets)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.inner(x))


def _output_layer(model: nn.Module) -> nn.Module | None:
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = m
    return last


def apply_init(model: nn.Module, spec: Spec) -> None:
    """The initialisation faults: weight std, weight gain, hidden bias, output-layer gain."""
    head = _output_layer(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                if spec.init_std is not None:
                    nn.init.normal_(m.weight, std=spec.init_std)
                if spec.weight_gain is not None and spec.family != "rnn":
                    m.weight.mul_(spec.weight_gain)
                if spec.bias_init is not None and m is not head and m.bias is not None:
                    m.bias.fill_(spec.bias_init)
            if isinstance(m, nn.RNNBase):
                for name, p in m.named_parameters():
                    if spec.init_std is not None and name.startswith("weight"):
                        nn.init.normal_(p, std=spec.init_std)
                    if spec.weight_gain is not None and name.startswith("weight_hh"):
                        p.mul_(spec.weight_gain)
                    if spec.bias_init is not None and name.startswith("bias"):
                        p.fill_(spec.bias_init)
        if spec.head_gain is not None and head is not None:
            head.weight.mul_(spec.head_gain)


# --------------------------------------------------------------------------------- loss


def loss_function(spec: Spec) -> Callable[..., torch.Tensor]:
    """``loss(out, y, reduction="mean")`` for the spec's task and loss fault."""
    task, k = spec.data.task, spec.data.n_classes

    t = spec.logit_scale

    def default(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        out = out.float() * t if task != "regression" else out.float()
        if task == "classification":
            return functional.cross_entropy(out, y, reduction=reduction)
        if task == "lm":
            per = functional.cross_entropy(out.transpose(1, 2), y, reduction="none")
            return per.mean() if reduction == "mean" else per.mean(1)
        per = functional.mse_loss(out, y, reduction="none").reshape(out.shape[0], -1).mean(1)
        return per.mean() if reduction == "mean" else per

    def mse_onehot(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        per = ((out.float() - functional.one_hot(y, k).float()) ** 2).mean(1)
        return per.mean() if reduction == "mean" else per

    def naive_log_softmax(
        out: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        probs = torch.softmax(out.float() * t, dim=1)
        per = -(functional.one_hot(y, k) * torch.log(probs)).sum(1)  # 0·log(0) = NaN
        return per.mean() if reduction == "mean" else per

    return {"default": default, "mse_onehot": mse_onehot, "naive_log_softmax": naive_log_softmax}[
        spec.loss
    ]


def clean_metric(spec: Spec, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The program's own yardstick, whatever the fault: error rate, or MSE for a regression."""
    model.eval()
    with torch.no_grad():
        out = model(x).float()
    if not torch.isfinite(out).all():
        return math.inf
    if spec.data.task == "regression":
        return float(((out - y) ** 2).mean())
    return float((out.argmax(-1) != y).float().mean())


# ------------------------------------------------------------------------------ optimizer


def make_optimizer(spec: Spec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    o, lr, wd = spec.optimizer, spec.lr, spec.weight_decay
    if o == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if o == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if o == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    if o == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if o == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if o == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if o == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {o!r}")


def make_scheduler(spec: Spec, opt: torch.optim.Optimizer) -> Any:
    s, total = spec.schedule, spec.steps
    if s is None:
        return None
    if s == "warmup_cosine":
        w = max(spec.warmup, 0)

        def factor(step: int) -> float:
            if step < w:
                return (step + 1) / w
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(total - w, 1))))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(total // 3, 1), gamma=0.3)
    if s == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=total + 1)
    if s == "early_decay":
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[max(spec.decay_at, 1)], gamma=spec.decay_factor
        )
    raise ValueError(f"unknown schedule {s!r}")


# ---------------------------------------------------------------------------------- loop


@dataclass
class Outcome:
    """One run: the clean metric along the way and at the end, and unstuck's findings."""

    final_train: float  # clean metric on (up to 1,000) training samples at the end
    final_val: float  # clean metric on the validation set at the end
    checkpoints: list[tuple[int, float]]  # (step, validation clean metric)
    final_loss: float  # the last training loss (the spec's own loss)
    seconds: float
    ranking: list[tuple[str, float]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)


def _pretrain(spec: Spec, model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    """The first job of a resumed run: the loss summed over the batch (× pretrain_scale)."""
    loss_fn = loss_function(spec)
    gen = torch.Generator().manual_seed(10_000 + seed)
    n = spec.data.x.shape[0]
    for _ in range(spec.pretrain_steps):
        idx = torch.randint(0, n, (spec.batch_size,), generator=gen)
        loss = loss_fn(model(spec.data.x[idx]), spec.data.y[idx]) * spec.pretrain_scale
        model.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def execute(spec: Spec, seed: int, *, guard: bool) -> Outcome:
    """Train ``spec`` (under ``Guard(policy="observe")`` with its defaults when ``guard``)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = spec.data
    x_all, x_val = data.x, data.x_val
    model = spec.build(spec)
    apply_init(model, spec)
    if spec.out_act == "softmax":
        model = SoftmaxOut(model)
    elif spec.out_act == "sigmoid":
        model = SigmoidOut(model)
    if spec.half:
        dtype = getattr(torch, spec.half)
        model = model.to(dtype)
        if x_all.is_floating_point():
            x_all, x_val = x_all.to(dtype), x_val.to(dtype)
    params = list(model.parameters())
    n_frozen = round(spec.freeze_share * len(params))
    frozen, trained = params[:n_frozen], params[n_frozen:]
    if spec.freeze_mode == "requires_grad":
        for p in frozen:
            p.requires_grad_(False)
    opt = make_optimizer(spec, trained)
    if spec.pretrain_steps:
        _pretrain(replace(spec, data=replace(data, x=x_all)), model, opt, seed)
        if spec.pretrain_reset:
            opt = make_optimizer(spec, trained)
    scheduler = make_scheduler(spec, opt)
    loss_fn = loss_function(spec)
    n = x_all.shape[0]
    g = None
    if guard:
        import unstuck

        g = unstuck.Guard(
            model,
            opt,
            policy="observe",
            console=False,
            dataset_size=n if spec.per_sample or spec.indices is not None else None,
            loss_fn=loss_fn,
            scheduler=scheduler,
        )
    eval_every = max(spec.steps // EVAL_POINTS, 1)
    checkpoints: list[tuple[int, float]] = []
    order = torch.randperm(n, generator=gen)
    cursor = 0
    clip_at: float | None = None
    last = math.nan
    start = time.perf_counter()
    for step in range(spec.steps):
        if spec.indices is not None:
            idx = spec.indices(step, gen)
        else:
            if cursor + spec.batch_size > n:
                order = torch.randperm(n, generator=gen)
                cursor = 0
            idx = order[cursor : cursor + spec.batch_size]
            cursor += spec.batch_size
        x, y = x_all[idx], data.y[idx]
        model.train()
        out = model(x)
        terms = None
        per = None
        if spec.aux_weight:
            task_loss = loss_fn(out, y)
            aux = spec.aux_weight * (out.float() ** 2).sum()  # the bug: reduction="sum"
            loss = task_loss + aux
            terms = {"task": task_loss.detach(), "aux": aux.detach()}
        elif spec.per_sample:
            per = loss_fn(out, y, reduction="none")
            loss = per.mean()
        else:
            loss = loss_fn(out, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if spec.clip_fraction is not None:
            if clip_at is None:  # the user picked max_norm from the first step's norm
                first = torch.nn.utils.clip_grad_norm_(trained, math.inf)
                clip_at = max(float(first) * spec.clip_fraction, 1e-12)
            torch.nn.utils.clip_grad_norm_(trained, clip_at)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if g is not None:
            if per is not None:
                g.step(
                    per.detach(),
                    ids=idx,
                    targets=y if data.task == "classification" else None,
                    batch=(x, y),
                )
            else:
                g.step(loss, batch=(x, y), components=terms)
            if (step + 1) % VAL_EVERY == 0:
                model.eval()
                with torch.no_grad():
                    g.validate(loss_fn(model(x_val), data.y_val))
        if (step + 1) % eval_every == 0:
            checkpoints.append((step + 1, clean_metric(spec, model, x_val, data.y_val)))
        last = float(loss.detach())
    seconds = time.perf_counter() - start
    ranking: list[tuple[str, float]] = []
    findings: list[dict[str, Any]] = []
    if g is not None:
        g.close()
        best: dict[str, float] = {}
        for f in g.findings:
            best[f.cause] = max(best.get(f.cause, 0.0), f.confidence)
            findings.append(
                {
                    "cause": f.cause,
                    "confidence": round(f.confidence, 3),
                    "step": f.step,
                    "reading": f.evidence.get("reading"),  # calibrate.py keys on it
                    "raw_confidence": f.evidence.get("raw_confidence", f.confidence),
                }
            )
        ranking = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
    return Outcome(
        final_train=clean_metric(spec, model, x_all[:1000], data.y[:1000]),
        final_val=clean_metric(spec, model, x_val, data.y_val),
        checkpoints=checkpoints,
        final_loss=last,
        seconds=seconds,
        ranking=ranking,
        findings=findings,
    )
