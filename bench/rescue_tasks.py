"""Tasks for ``bench/rescue.py``: plateau-prone training setups, healthy controls, a loss spike.

Each :class:`Task` is a training setup as a user wrote it, fault included: data, model, optimizer
and LR, batch size, step budget, the evaluation (the loss on the held-out split, or for label
noise the error on a clean held-out split) and a target. ``why`` says in one line why it stalls.
Plateau tasks count in the benchmark's geometric means; the healthy controls only in its check
that rescue does not hurt (final loss within 2 % of constant LR's). A spike task is a healthy run
that the loop knocks off course for a stretch (``Spike``); each strategy's final loss is compared
with the spike-free reference's of the same seed, and its loop asks ``guard.skip_batch()``.

How targets and budgets were set (the rule, fixed before any strategy ran against it):

* the target is the evaluation loss that the task's fault-free *reference* configuration
  (``reference``: the task with ``fix`` applied — the LR fixed, the init fixed, clean labels,
  a warm-up; a healthy control is its own reference) reaches at half the task's budget in its
  worst seed of 0, 1 and 2, rounded up to 2 significant figures: every reference seed gets
  there by half the budget. (The first version took the median over seeds; then a reference
  seed could miss its own task's target, and most plateau cells read "not reached" for every
  strategy, which measures nothing. The rule was changed once, for all tasks at once, after
  the first benchmark run showed this — before any change to unstuck that the run suggested.)
* ``python bench/rescue.py --calibrate`` runs the references and prints those values; it was
  run once and its output is pasted below; the targets in the task list are copied from it;
* budgets were picked, before calibrating, so that the reference gets there at half the budget
  and the whole benchmark fits in about 30 minutes on 2 CPU cores; nothing was tuned on unstuck
  runs.

``--calibrate`` output (torch 2.13 CPU, one thread per process)::

    deep_sigmoid_digits: target = 0.26  (reference: Glorot & Bengio's normalized (Xavier) init
        with zero biases; eval at step 2000: 0.211, 0.1992, 0.2538; reaches it at [1020, 1120,
        1680] of 4000)
    deep_linear_small_init: target = 0.00021  (reference: PyTorch's default init; eval at step
        1000: 0.0001929, 0.0002087, 0.0001495; reaches it at [980, 1000, 920] of 2000)
    lr_too_low_sgd: target = 0.1  (reference: lr=0.1; eval at step 1000: 0.07153, 0.09909,
        0.08607; reaches it at [340, 520, 560] of 2000)
    lr_too_high_adamw: target = 0.12  (reference: lr=1e-3 (AdamW's default); eval at step 1000:
        0.06283, 0.1158, 0.09633; reaches it at [220, 300, 420] of 2000)
    label_noise_adamw: target = 0.034  (reference: clean training labels; eval at step 1000:
        0.01671, 0.03343, 0.03343; reaches it at [220, 220, 320] of 2000)
    transformer_no_warmup: target = 0.47  (reference: 200 steps of linear warm-up; eval at step
        1000: 0.1013, 0.05086, 0.4682; reaches it at [780, 580, 940] of 2000)
    committee_machine: target = 0.00094  (reference: init at the teacher's scale (std 1); eval
        at step 1500: 0.0002888, 0.0009364, 2.453e-05; reaches it at [1320, 1500, 1020] of
        3000)
    healthy_mlp_adam: target = 0.12  (reference: the task itself; eval at step 800: 0.07186,
        0.1109, 0.09854; reaches it at [220, 300, 420] of 1600)
    healthy_cnn_momentum: target = 0.12  (reference: the task itself; eval at step 800:
        0.05729, 0.1135, 0.05163; reaches it at [200, 180, 180] of 1600)
    healthy_regression_adamw: target = 0.089  (reference: the task itself; eval at step 800:
        0.04503, 0.07817, 0.08883; reaches it at [140, 720, 800] of 1600)

    calibrated in 31 s

The spike task was added later and calibrated alone (``--calibrate --tasks gpt_lr_spike``); for a
spike task ``--calibrate`` also prints the reference's final losses and the tolerance of "no
worse than the reference": their spread over the seeds, (max − min) / min, rounded up to 2
significant figures::

    gpt_lr_spike: target = 0.85  (reference: the same run without the spike; eval at step 600:
        0.834, 0.8242, 0.8481; reaches it at [540, 560, 600] of 1200); final: 0.7734, 0.769,
        0.7777; spike tolerance = 0.012

Design notes: models are tiny (CPU). ``deep_sigmoid_digits`` has 4 hidden sigmoid layers as in
Glorot & Bengio (2010): with 10 layers neither momentum SGD (LR 0.05 to 2) nor Adam left the
plateau within 2,000 steps, whatever the init, so such a task would measure nothing.
``committee_machine`` is noiseless, as in Saad & Solla (1995), so its loss keeps falling after
the plateau.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from scenarios._common import Data, digits, mlp, regression, sequences, teacher_student
from scenarios._data import TransformerNet, flip_labels
from scenarios._h4 import low_rank_teacher
from scenarios._h5 import SmallCNN

__all__ = ["KINDS", "TASKS", "Spike", "Task", "reference_task"]

Params = Iterable[torch.Tensor]
OptimizerFactory = Callable[[Params, float], torch.optim.Optimizer]

EVAL_EVERY = 20  # steps between evaluations: the resolution of steps_to_target


KINDS = ("plateau", "healthy", "spike")


@dataclass(frozen=True)
class Spike:
    """The LR ×``peak`` on the loop's steps ``start`` to ``stop - 1`` (a mis-set LR pushed for a
    stretch, a scheduler restarted by mistake): applied around ``optimizer.step()`` on top of
    whatever LR the strategy set, by the loop's step, so a loop that skips the batches a
    rewind asks it to skip steps past it."""

    start: int
    stop: int
    peak: float

    def factor(self, step: int) -> float:
        return self.peak if self.start <= step < self.stop else 1.0


@dataclass(frozen=True)
class Task:
    """One training setup as a user wrote it (fault included), and how it is judged."""

    name: str
    kind: str  # "plateau" (counts in the geomeans), "healthy" (only the 2 % final-loss check) or
    # "spike" (a healthy run the loop knocks off course: judged against its spike-free reference)
    why: str  # one line: the fault and why the run stalls (healthy: why it should not)
    data: Callable[[int], Data]  # seed -> training split + fixed evaluation split
    model: Callable[[], nn.Module]  # built right after torch.manual_seed(seed)
    optimizer: OptimizerFactory  # (params, lr) -> the user's optimizer
    lr: float  # the user's LR (the fault, for the LR tasks)
    batch_size: int
    budget: int  # optimizer steps, probes and sweeps included
    target: float  # evaluation loss to reach: from ``--calibrate`` (see the module docstring)
    reference: str  # one line: the fault-free configuration the target comes from
    fix: Mapping[str, Any] = field(default_factory=dict)  # Task fields the reference replaces
    metric: str = "loss"  # evaluation: "loss" (the task's loss) or "error" (1 - accuracy)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = functional.cross_entropy
    warmup: int = 0  # linear LR warm-up steps the user configured (0: none)
    cosine: bool = False  # after the warm-up, a cosine decay to 0 at the end of the budget
    spike: Spike | None = None  # an LR spike the loop induces, by its own step counter
    spike_tolerance: float = 0.0  # spike tasks: "no worse" = final ≤ reference × (1 + this)
    eval_every: int = EVAL_EVERY
    quick: bool = False  # part of ``--quick``

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, not {self.kind!r}")
        if (self.kind == "spike") != (self.spike is not None):
            raise ValueError(f"{self.name}: a spike task, and only one, has a spike")
        if self.metric not in ("loss", "error"):
            raise ValueError(f"{self.name}: metric must be 'loss' or 'error', not {self.metric!r}")
        if self.budget % (2 * self.eval_every):
            raise ValueError(
                f"{self.name}: budget {self.budget} must be a multiple of 2 × eval_every "
                f"({2 * self.eval_every}): the target is read at budget / 2"
            )


def reference_task(task: Task) -> Task:
    """The fault-free configuration of ``task`` that its target is calibrated on."""
    return replace(task, **dict(task.fix))


# ------------------------------------------------------------------------------- builders


def _adam(params: Params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


def _adamw(params: Params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def _sgd(params: Params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr)


def _momentum(params: Params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _momentum_wd(params: Params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


def _digits_mlp() -> nn.Module:
    return mlp(64, 64, 10)


def _regression_mlp() -> nn.Module:
    return mlp(16, 64, 1)


def _deep_sigmoid(init: bool) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = mlp(64, 64, 10, depth=SIGMOID_DEPTH, activation=nn.Sigmoid)
        if init:  # Glorot & Bengio's variance 2 / (fan_in + fan_out), drawn normal; zero biases
            for layer in model:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_normal_(layer.weight)
                    nn.init.zeros_(layer.bias)
        return model

    return build


SIGMOID_DEPTH = 4  # hidden layers, as Glorot & Bengio (2010); 6-10 stayed stuck under momentum SGD


def _deep_linear(std: float | None) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Linear(32, 8, bias=False))
        if std is not None:
            for layer in model.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=std)
        return model

    return build


class SoftCommittee(nn.Module):
    """A soft committee machine (Saad & Solla 1995): y = Σ_k erf(w_k·x / √(2d)), output
    weights fixed to one, as the teacher in ``teacher_student``."""

    def __init__(self, d: int, k: int, std: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(k, d) * std)
        self.scale = 1.0 / math.sqrt(2 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x @ self.w.T * self.scale).sum(1, keepdim=True)


def _committee(std: float) -> Callable[[], nn.Module]:
    return lambda: SoftCommittee(COMMITTEE_D, COMMITTEE_K, std)


COMMITTEE_D = 20
COMMITTEE_K = 3


def _committee_data(seed: int) -> Data:
    return teacher_student(seed, n=4000, d=COMMITTEE_D, k=COMMITTEE_K)


def _noisy_digits(seed: int) -> Data:
    data = digits(seed)
    flip_labels(data, 0.2, seed)  # training labels only: the evaluation split stays clean
    return data


SEQUENCE_LENGTH = 6


def _sequences(seed: int) -> Data:
    return sequences(seed, n=4000, length=SEQUENCE_LENGTH)


def _transformer() -> nn.Module:
    return TransformerNet(length=SEQUENCE_LENGTH)


MARKOV_VOCAB = 16
MARKOV_LENGTH = 16  # tokens a model sees per sequence (it predicts the next 16)


def markov_tokens(seed: int, n: int = 8400) -> Data:
    """Sequences of a fixed sparse order-2 Markov chain: each pair of tokens has two equally
    likely successors, so predicting the next token needs two positions of context and the
    loss has a floor at the chain's entropy, ln 2 (after the first two, unpredictable,
    positions). ``y`` is ``x`` shifted by one: next-token targets at every position."""
    rng = np.random.default_rng(7)  # the chain is the same for every seed
    nxt = rng.integers(0, MARKOV_VOCAB, size=(MARKOV_VOCAB, MARKOV_VOCAB, 2))
    r = np.random.default_rng(3200 + seed)
    seq = np.empty((n, MARKOV_LENGTH + 1), dtype=np.int64)
    seq[:, :2] = r.integers(0, MARKOV_VOCAB, (n, 2))
    for t in range(2, MARKOV_LENGTH + 1):
        seq[:, t] = nxt[seq[:, t - 2], seq[:, t - 1], r.integers(0, 2, n)]
    seqs = torch.from_numpy(seq[r.permutation(n)])
    n_val = 400  # the evaluation split: 6,400 next-token targets
    val, train = seqs[:n_val], seqs[n_val:]
    return Data(train[:, :-1], train[:, 1:], val[:, :-1], val[:, 1:])


class GPT(nn.Module):
    """A GPT-style decoder: token and learned position embeddings, pre-LN blocks of causal
    self-attention and a GELU MLP (torch's TransformerEncoderLayer with ``norm_first`` and a
    causal mask), a final LayerNorm and next-token logits at every position."""

    def __init__(self, d: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(MARKOV_VOCAB, d)
        self.pos = nn.Parameter(torch.randn(MARKOV_LENGTH, d) * 0.02)
        block = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, MARKOV_VOCAB)
        self.mask: torch.Tensor
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(MARKOV_LENGTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.blocks(self.tok(x) + self.pos[:t], mask=self.mask[:t, :t], is_causal=True)
        logits: torch.Tensor = self.head(self.norm(h))
        return logits


def next_token_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over every position of every sequence."""
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


# ---------------------------------------------------------------------------------- tasks

_TASKS = [
    Task(
        name="deep_sigmoid_digits",
        kind="plateau",
        why="four sigmoid hidden layers with PyTorch's default init: the units saturate, the "
        "top layer's output collapses to the class prior and the loss sits at ln 10 for "
        "thousands of steps (Glorot & Bengio 2010)",
        data=digits,
        model=_deep_sigmoid(init=False),
        optimizer=_momentum,
        lr=0.05,
        batch_size=32,
        budget=4000,
        target=0.26,  # from --calibrate
        reference="Glorot & Bengio's normalized (Xavier) init with zero biases",
        fix={"model": _deep_sigmoid(init=True)},
    ),
    Task(
        name="deep_linear_small_init",
        kind="plateau",
        why="a two-layer linear net initialised at std 1e-4 on a rank-3 linear teacher: the origin "
        "is a saddle and each mode waits ~ln(1/init)/(lr*strength) steps (Saxe et al. 2014)",
        data=low_rank_teacher,
        model=_deep_linear(1e-4),
        optimizer=_sgd,
        lr=0.02,
        batch_size=32,
        budget=2000,
        target=0.00021,  # from --calibrate
        reference="PyTorch's default init",
        fix={"model": _deep_linear(None)},
        loss=functional.mse_loss,
        quick=True,
    ),
    Task(
        name="lr_too_low_sgd",
        kind="plateau",
        why="plain SGD at lr=1e-4 on a ReLU MLP over digits: each step moves the weights by "
        "~1e-5 of their size and the loss creeps",
        data=digits,
        model=_digits_mlp,
        optimizer=_sgd,
        lr=1e-4,
        batch_size=32,
        budget=2000,
        target=0.1,  # from --calibrate
        reference="lr=0.1",
        fix={"lr": 0.1},
        quick=True,
    ),
    Task(
        name="lr_too_high_adamw",
        kind="plateau",
        why="AdamW at lr=0.05 (an SGD learning rate) on a ReLU MLP over digits: every "
        "coordinate moves ~0.05 per step and the loss bounces well above Adam's usual level",
        data=digits,
        model=_digits_mlp,
        optimizer=_adamw,
        lr=0.05,
        batch_size=32,
        budget=2000,
        target=0.12,  # from --calibrate
        reference="lr=1e-3 (AdamW's default)",
        fix={"lr": 1e-3},
        quick=True,
    ),
    Task(
        name="label_noise_adamw",
        kind="plateau",
        why="20 % of the training labels are a random wrong class: the training loss floors "
        "high and the net goes on to memorise the wrong labels; judged by the error on a "
        "clean held-out set",
        data=_noisy_digits,
        model=_digits_mlp,
        optimizer=_adamw,
        lr=1e-3,
        batch_size=32,
        budget=2000,
        target=0.034,  # from --calibrate
        reference="clean training labels",
        fix={"data": digits},
        metric="error",
    ),
    Task(
        name="transformer_no_warmup",
        kind="plateau",
        why="a post-norm 2-layer Transformer with AdamW at lr=1e-2 and no warm-up: the first "
        "large Adam steps wreck the attention and the loss stays at chance (ln 10)",
        data=_sequences,
        model=_transformer,
        optimizer=_adamw,
        lr=1e-2,
        batch_size=32,
        budget=2000,
        target=0.47,  # from --calibrate
        reference="200 steps of linear warm-up",
        fix={"warmup": 200},
    ),
    Task(
        name="committee_machine",
        kind="plateau",
        why="a 3-unit soft committee machine student initialised near the origin learns the "
        "teacher's mean direction first and waits on the symmetric plateau before its units "
        "specialise (Saad & Solla 1995)",
        data=_committee_data,
        model=_committee(1e-3),
        optimizer=_sgd,
        lr=1.0,
        batch_size=32,
        budget=3000,
        target=0.00094,  # from --calibrate
        reference="init at the teacher's scale (std 1)",
        fix={"model": _committee(1.0)},
        loss=functional.mse_loss,
        quick=True,
    ),
    Task(
        name="healthy_mlp_adam",
        kind="healthy",
        why="Adam at lr=1e-3 on a ReLU MLP over standardised digits: trains well",
        data=digits,
        model=_digits_mlp,
        optimizer=_adam,
        lr=1e-3,
        batch_size=32,
        budget=1600,
        target=0.12,  # from --calibrate
        reference="the task itself",
        quick=True,
    ),
    Task(
        name="healthy_cnn_momentum",
        kind="healthy",
        why="SGD with momentum 0.9 at lr=0.01 on a small CNN over digits images: trains well",
        data=digits,
        model=SmallCNN,
        optimizer=_momentum_wd,
        lr=0.01,
        batch_size=32,
        budget=1600,
        target=0.12,  # from --calibrate
        reference="the task itself",
    ),
    Task(
        name="healthy_regression_adamw",
        kind="healthy",
        why="AdamW at lr=1e-3 on a ReLU MLP regressing a smooth target with MSE: trains well",
        data=regression,
        model=_regression_mlp,
        optimizer=_adamw,
        lr=1e-3,
        batch_size=32,
        budget=1600,
        target=0.089,  # from --calibrate
        reference="the task itself",
        loss=functional.mse_loss,
    ),
    Task(
        name="gpt_lr_spike",
        kind="spike",
        why="a GPT-style decoder learning a Markov chain under AdamW with warm-up and cosine "
        "takes the LR ×50 for 40 steps mid-run (a mis-set LR pushed for a stretch): the "
        "weights are thrown far off and the loss jumps to chance and stays high",
        data=markov_tokens,
        model=GPT,
        optimizer=_adamw,
        lr=3e-3,
        batch_size=32,
        budget=1200,
        target=0.85,  # from --calibrate
        reference="the same run without the spike",
        fix={"spike": None, "kind": "healthy"},
        loss=next_token_loss,
        warmup=100,
        cosine=True,
        spike=Spike(480, 520, 50.0),
        spike_tolerance=0.012,  # from --calibrate: the reference's spread over seeds
    ),
]

TASKS: dict[str, Task] = {t.name: t for t in _TASKS}
