"""Fault mutation operators: each edits a copy of a healthy spec into one fault at one severity.

An operator names the cause it seeds (a catalog code, ``docs/diagnosis.md``), the severity range
it samples from (log-uniform where ``log``), which specs it applies to, and the reference a
mutant is compared with in the hurt check (the unmutated program, unless the fault's honest
counterfactual differs: a resumed run is compared with the same resume and a fresh optimizer).

Modelled on DeepCrime's mutation operators (Humbatova et al. 2021: change the LR, activation,
initialisation, loss, labels, batch size, …) and on the seeded faults of our own scenarios.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from zoo._spec import Spec

__all__ = ["NOT_IN_ZOO", "OPERATORS", "Operator"]

ADAPTIVE = frozenset({"adam", "adamw", "rmsprop", "adagrad"})
SGD_FAMILY = frozenset({"sgd", "momentum", "nesterov"})
SADDLE_LR = 0.05  # plain SGD on the deep linear net; its default-init reference trains at it

# Causes with no operator, and why (reported as such, not silently missing).
NOT_IN_ZOO: dict[str, str] = {
    "rank_desync": "not in the zoo (needs 2 processes: ranks whose parameters drift apart)",
    "flat_region": "no operator since issue 24: its two (softmax outputs under MSE or "
    "F.cross_entropy) seed output_activation, the wrong output activation they are",
}


@dataclass(frozen=True)
class Operator:
    """One fault mutation. ``apply(spec, severity, seed)`` returns the mutant (a new spec)."""

    name: str
    cause: str
    description: str
    low: float  # severity range
    high: float
    log: bool
    applies: Callable[[Spec], bool]
    apply: Callable[[Spec, float, int], Spec]
    reference: Callable[[Spec, float, int], Spec] | None = None  # default: the base program
    hurt_required: bool = True  # False for an end state (converged): nothing to hurt
    low_is_worse: bool = False  # the fault is worse at the low end (a share kept, a tiny std)

    def worse(self, u: float) -> float:
        """The severity ``u`` of the way from the mild end of the range to the bad end."""
        return self.severity(1.0 - u if self.low_is_worse else u)

    def severity(self, u: float) -> float:
        """The severity at quantile ``u`` of the range."""
        if self.log:
            return float(
                math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
            )
        return float(self.low + u * (self.high - self.low))


# -------------------------------------------------------------------------------- helpers


def _classification(s: Spec) -> bool:
    return s.data.task == "classification"


def _float_inputs(s: Spec) -> bool:
    return s.data.x.is_floating_point()


def _knob(*names: str) -> Callable[[Spec], bool]:
    return lambda s: set(names) <= s.knobs


def _relu(s: Spec) -> bool:
    return "activation" in s.knobs and s.activation == "relu"


def _mutant(s: Spec) -> Spec:
    return s.copy()


def _per_sample_indices(s: Spec, pool: torch.Tensor, per_epoch_batches: int) -> Spec:
    """Batches cycle through ``pool`` in a fixed order (a data pipeline without reshuffling)."""
    m = _mutant(s)
    b = m.batch_size
    m.per_sample = True

    def indices(step: int, gen: torch.Generator) -> torch.Tensor:
        start = (step % per_epoch_batches) * b
        return pool[start : start + b]

    m.indices = indices
    return m


# ------------------------------------------------------------------------------ operators


def _lr_high(s: Spec, k: float, seed: int) -> Spec:
    return replace(_mutant(s), lr=s.lr * 10**k)


def _lr_low(s: Spec, k: float, seed: int) -> Spec:
    return replace(_mutant(s), lr=s.lr / 10**k)


def _saturate(s: Spec, std: float, seed: int) -> Spec:
    m = _mutant(s)
    m.activation = "sigmoid" if s.activation != "sigmoid" else "tanh"
    m.init_std = std
    return m


def _vanish(s: Spec, depth: float, seed: int) -> Spec:
    m = _mutant(s)
    m.activation, m.depth, m.norm = "sigmoid", round(depth), False
    return m


def _explode(s: Spec, gain: float, seed: int) -> Spec:
    m = _mutant(s)
    m.norm = False if "norm" in s.knobs else m.norm
    if s.family == "rnn":
        m.activation = "relu"  # a ReLU RNN: the recurrent gain compounds over time
    m.weight_gain = gain
    return m


def _dead(s: Spec, bias: float, seed: int) -> Spec:
    m = _mutant(s)
    m.bias_init = -bias
    return m


def _poor_init(s: Spec, std: float, seed: int) -> Spec:
    m = _mutant(s)
    m.init_std = std
    return m


def _saddle(s: Spec, std: float, seed: int) -> Spec:
    """A deep linear net (three bias-free layers) at a tiny init (Saxe et al. 2014)."""
    m = _mutant(s)
    n_in, n_out = s.data.x.shape[1], s.data.y.shape[1]

    def build(_: Spec) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(n_in, 32, bias=False),
            torch.nn.Linear(32, 32, bias=False),
            torch.nn.Linear(32, n_out, bias=False),
        )

    # plain SGD, as Saxe et al.: an adaptive optimizer rescales the tiny gradients away
    m.build, m.init_std, m.family = build, std, "linear"
    m.optimizer, m.lr, m.schedule, m.weight_decay = "sgd", SADDLE_LR, None, 0.0
    return m


def _saddle_ref(s: Spec, std: float, seed: int) -> Spec:
    m = _saddle(s, std, seed)
    m.init_std = None  # the same deep linear net at torch's default init
    return m


def _flat(s: Spec, gain: float, seed: int) -> Spec:
    m = _mutant(s)
    m.out_act, m.loss, m.head_gain = "softmax", "mse_onehot", gain
    return m


def _capacity(s: Spec, width: float, seed: int) -> Spec:
    m = _mutant(s)
    m.hidden = round(width)
    return m


def _label_noise(s: Spec, share: float, seed: int) -> Spec:
    m = _mutant(s)
    rng = np.random.default_rng(4000 + seed)
    n, k = m.data.y.shape[0], m.data.n_classes
    idx = rng.choice(n, size=int(share * n), replace=False)
    shift = torch.as_tensor(rng.integers(1, k, size=idx.size))
    m.data.y[idx] = (m.data.y[idx] + shift) % k
    return m


def _imbalance(s: Spec, keep: float, seed: int) -> Spec:
    """Starve a third of the classes (at least one) to ``keep`` of their training samples."""
    m = _mutant(s)
    rng = np.random.default_rng(5000 + seed)
    y = m.data.y.numpy()
    counts = np.bincount(y, minlength=m.data.n_classes)
    present = np.flatnonzero(counts >= 20)  # classes with samples to starve
    starved = rng.choice(present, size=max(1, len(present) // 3), replace=False)
    mask = np.ones(y.size, dtype=bool)
    for c in starved:
        where = np.flatnonzero(y == c)
        drop = rng.choice(where, size=where.size - max(1, int(keep * where.size)), replace=False)
        mask[drop] = False
    sel = torch.as_tensor(np.flatnonzero(mask))
    m.data.x, m.data.y = m.data.x[sel], m.data.y[sel]
    m.per_sample = True
    return m


def _hard_subset(s: Spec, share: float, seed: int) -> Spec:
    """A share of the training inputs comes from a noisy source (noise 3× the input scale)."""
    m = _mutant(s)
    g = torch.Generator().manual_seed(6000 + seed)
    n = m.data.x.shape[0]
    idx = torch.randperm(n, generator=g)[: int(share * n)]
    m.data.x[idx] = m.data.x[idx] + 3.0 * torch.randn(m.data.x[idx].shape, generator=g)
    m.per_sample = True
    return m


def _clip(s: Spec, fraction: float, seed: int) -> Spec:
    return replace(_mutant(s), clip_fraction=fraction)


def _weight_decay(s: Spec, wd: float, seed: int) -> Spec:
    # coupled L2 (SGD, Adam, RMSprop, Adagrad) needs less than AdamW's decoupled decay
    return replace(_mutant(s), weight_decay=wd * (30.0 if s.optimizer == "adamw" else 1.0))


def _freeze(s: Spec, share: float, seed: int) -> Spec:
    m = _mutant(s)
    m.freeze_share = share
    m.freeze_mode = "left_out" if seed % 2 else "requires_grad"
    return m


def _truncate(s: Spec, share: float, seed: int) -> Spec:
    """A sampler left with a fixed shard (a DistributedSampler copied from a multi-GPU job)."""
    n = s.data.x.shape[0]
    pool = torch.randperm(n, generator=torch.Generator().manual_seed(0))[
        : max(int(share * n), s.batch_size)
    ]
    return _per_sample_indices(s, pool, max(pool.numel() // s.batch_size, 1))


def _repeat(s: Spec, batches: float, seed: int) -> Spec:
    """``next(iter(loader))`` inside the loop: the same first ``batches`` batches, again."""
    k = round(batches)
    return _per_sample_indices(s, torch.arange(k * s.batch_size), k)


def _half(s: Spec, lr_factor: float, seed: int) -> Spec:
    """Pure bfloat16 training (``model.bfloat16()``, no fp32 master weights): 8 bits of
    mantissa, so an update below ~0.2 % of its weight rounds away; the LR × ``lr_factor``."""
    return replace(_mutant(s), half="bfloat16", lr=s.lr * lr_factor)


def _half_ref(s: Spec, lr_factor: float, seed: int) -> Spec:
    return replace(_mutant(s), lr=s.lr * lr_factor)  # the same LR in float32


def _input_scale(s: Spec, k: float, seed: int) -> Spec:
    m = _mutant(s)
    factor = 10 ** (k if seed % 2 == 0 else -k)  # unnormalised inputs, ×10^k or ×10^-k
    m.data.x, m.data.x_val = m.data.x * factor, m.data.x_val * factor
    if m.data.task == "regression" and s.family == "autoencoder":
        m.data.y, m.data.y_val = m.data.y.clone(), m.data.y_val.clone()
    return m


def _stale(s: Spec, scale: float, seed: int) -> Spec:
    return replace(_mutant(s), pretrain_steps=100, pretrain_scale=scale)


def _stale_ref(s: Spec, scale: float, seed: int) -> Spec:
    return replace(_mutant(s), pretrain_steps=100, pretrain_scale=scale, pretrain_reset=True)


def _no_warmup(s: Spec, factor: float, seed: int) -> Spec:
    return replace(_mutant(s), norm_first=False, schedule=None, warmup=0, lr=s.lr * factor)


def _batch(s: Spec, size: float, seed: int) -> Spec:
    # BatchNorm refuses a batch of 1 in training (an error, not a stall): 2 is the least there
    return replace(_mutant(s), batch_size=max(round(size), 2 if s.norm else 1))


def _nonfinite(s: Spec, inv_t: float, seed: int) -> Spec:
    """A hand-written torch.log(torch.softmax(logits / T)) at a sharp temperature T: once a
    logit gap exceeds ~104 a probability underflows to 0 and 0·log(0) is NaN."""
    return replace(_mutant(s), loss="naive_log_softmax", logit_scale=inv_t)


def _nonfinite_ref(s: Spec, inv_t: float, seed: int) -> Spec:
    return replace(_mutant(s), logit_scale=inv_t)  # the same temperature with F.cross_entropy


def _dominance(s: Spec, weight: float, seed: int) -> Spec:
    return replace(_mutant(s), aux_weight=weight)


def _overfit(s: Spec, n: float, seed: int) -> Spec:
    """Few, noisy training samples for a wider model trained longer."""
    m = _mutant(s)
    keep = round(n)
    m.data.x, m.data.y = m.data.x[:keep], m.data.y[:keep]
    g = torch.Generator().manual_seed(7000 + seed)
    if m.data.task == "regression":
        m.data.y = m.data.y + 0.5 * m.data.y.std() * torch.randn(m.data.y.shape, generator=g)
    else:  # a fifth of the few labels wrong
        wrong = torch.randperm(keep, generator=g)[: keep // 5]
        k = m.data.n_classes
        shift = torch.randint(1, k, (wrong.numel(),), generator=g)
        m.data.y[wrong] = (m.data.y[wrong] + shift) % k
    if "hidden" in s.knobs:
        m.hidden = 4 * s.hidden
    m.steps = 2 * s.steps
    m.batch_size = min(s.batch_size, keep // 4)
    return m


def _overfit_ref(s: Spec, n: float, seed: int) -> Spec:
    return replace(_mutant(s), steps=2 * s.steps)


def _converge(s: Spec, factor: float, seed: int) -> Spec:
    return replace(_mutant(s), steps=round(s.steps * factor))


def _early_decay(s: Spec, decades: float, seed: int) -> Spec:
    """The user's schedule replaced by one step cut of ``decades`` at 5 % of the run (a
    milestone meant for epoch 30 of 90 placed in the first epochs)."""
    m = _mutant(s)
    m.schedule, m.warmup = "early_decay", 0
    m.decay_at, m.decay_factor = max(s.steps // 20, 10), 10.0**-decades
    return m


def _double_softmax(s: Spec, gain: float, seed: int) -> Spec:
    """A softmax output fed to F.cross_entropy (which applies its own): gradients shrink."""
    m = _mutant(s)
    m.out_act, m.head_gain = "softmax", gain
    return m


def _sigmoid_regression(s: Spec, scale: float, seed: int) -> Spec:
    """A sigmoid on a regression output whose targets (× ``scale``) lie far beyond [0, 1]."""
    m = _sigmoid_ref(s, scale, seed)
    m.out_act = "sigmoid"
    return m


def _sigmoid_ref(s: Spec, scale: float, seed: int) -> Spec:
    m = _mutant(s)  # the same scaled targets with the program's linear output
    m.data.y, m.data.y_val = m.data.y * scale, m.data.y_val * scale
    return m


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("lr_x10k", "lr_too_high", "LR × 10^k", 1.3, 2.7, False, lambda s: True, _lr_high),
        Operator("lr_div10k", "lr_too_low", "LR ÷ 10^k", 2.0, 3.5, False, lambda s: True, _lr_low),
        Operator(
            "early_step_decay",
            "lr_decayed_early",
            "the LR cut ÷ 10^k at 5 % of the run",
            1.5,
            3.5,
            False,
            lambda s: True,
            _early_decay,
        ),
        Operator(
            "sigmoid_large_init",
            "saturated_activations",
            "activations swapped to sigmoid (tanh if already sigmoid), weights ~ N(0, std²)",
            1.0,
            4.0,
            True,
            _knob("activation"),
            _saturate,
        ),
        Operator(
            "deep_sigmoid",
            "vanishing_gradients",
            "a deep sigmoid stack without normalisation (depth = severity)",
            8,
            14,
            False,
            lambda s: {"activation", "depth"} <= s.knobs and s.family == "mlp",
            _vanish,
        ),
        Operator(
            "weight_gain",
            "exploding_gradients",
            "every weight matrix × gain at init, normalisation removed (ReLU RNN: recurrent ×gain)",
            2.0,
            6.0,
            True,
            lambda s: (
                (s.family in ("mlp", "cnn", "resnet") and "norm" in s.knobs)
                or (s.family == "rnn" and "activation" in s.knobs)
            ),
            _explode,
        ),
        Operator(
            "negative_bias",
            "dead_relu",
            "hidden biases initialised at -severity (ReLU networks)",
            1.0,
            5.0,
            True,
            _relu,
            _dead,
        ),
        Operator(
            "tiny_init",
            "poor_initialization",
            "every weight ~ N(0, std²) with a tiny std",
            1e-4,
            3e-3,
            True,
            # normalisation undoes a small init (it never hurt a BatchNorm/LayerNorm program)
            lambda s: s.family not in ("linear", "transformer") and not s.norm,
            _poor_init,
            low_is_worse=True,
        ),
        Operator(
            "deep_linear_small_init",
            "saddle_point",
            "the model replaced by a 3-layer linear net at a tiny init, plain SGD (regression)",
            1e-4,
            3e-3,
            True,
            lambda s: s.data.task == "regression",
            _saddle,
            low_is_worse=True,
            reference=_saddle_ref,
        ),
        Operator(
            "softmax_mse",
            "output_activation",
            "a softmax output trained with MSE against one-hot targets; head weights × gain",
            3.0,
            30.0,
            True,
            _classification,
            _flat,
        ),
        Operator(
            "softmax_into_cross_entropy",
            "output_activation",
            "a softmax output fed to F.cross_entropy (a double softmax); head weights × gain",
            3.0,
            30.0,
            True,
            _classification,
            _double_softmax,
        ),
        Operator(
            "narrow_model",
            "capacity_limit",
            "hidden width cut to severity units",
            1,
            3,
            False,
            _knob("hidden"),
            _capacity,
            low_is_worse=True,
        ),
        Operator(
            "label_noise",
            "label_noise",
            "a share of the training labels moved to another class",
            0.2,
            0.6,
            False,
            _classification,
            _label_noise,
        ),
        Operator(
            "starve_classes",
            "class_imbalance",
            "a third of the classes keep this share of their training samples",
            0.02,
            0.1,
            True,
            _classification,
            _imbalance,
            low_is_worse=True,
        ),
        Operator(
            "noisy_subset",
            "hard_subset",
            "a share of the training inputs drowned in noise (labels kept)",
            0.15,
            0.4,
            False,
            lambda s: _float_inputs(s) and s.data.task != "lm",
            _hard_subset,
        ),
        Operator(
            "user_clip_grad_norm",
            "over_clipping",
            "torch.nn.utils.clip_grad_norm_ at this fraction of the first step's norm",
            1e-3,
            3e-2,
            True,
            lambda s: s.optimizer in SGD_FAMILY,  # Adam-family steps are scale-invariant
            _clip,
        ),
        Operator(
            "weight_decay",
            "over_regularization",
            "weight decay (×30 under AdamW's decoupled decay)",
            0.1,
            1.0,
            True,
            lambda s: True,
            _weight_decay,
        ),
        Operator(
            "freeze_first_layers",
            "frozen_parameters",
            "the first share of parameter tensors frozen (odd seeds: left out of the optimizer)",
            0.5,
            0.85,
            False,
            lambda s: s.family != "linear",
            _freeze,
        ),
        Operator(
            "fixed_shard",
            "truncated_data",
            "the loop only ever sees a fixed share of the training set",
            0.1,
            0.35,
            True,
            lambda s: s.data.x.shape[0] >= 500,
            _truncate,
            low_is_worse=True,
        ),
        Operator(
            "same_batches",
            "repeated_data",
            "the same first k batches every epoch (k = severity)",
            1,
            2,
            False,
            lambda s: s.data.x.shape[0] >= 500,
            _repeat,
            low_is_worse=True,
        ),
        Operator(
            "pure_bf16",
            "precision_underflow",
            "model and inputs in bfloat16, no fp32 master weights, LR × s (SGD family, dense "
            "models)",
            0.01,
            0.1,
            True,
            # low-precision convolutions are too slow on CPU to be in the zoo: dense models only
            lambda s: s.optimizer in SGD_FAMILY and s.family in ("mlp", "linear"),
            _half,
            low_is_worse=True,
            reference=_half_ref,
        ),
        Operator(
            "input_scale",
            "input_scale",
            "inputs × 10^k (even seeds) or × 10^-k (odd seeds), not standardized",
            2.0,
            4.0,
            False,
            lambda s: _float_inputs(s) and s.family != "autoencoder" and not s.norm,
            _input_scale,
        ),
        Operator(
            "resume_summed_loss_state",
            "stale_optimizer_state",
            "resumed with the optimizer state of a job whose loss was × severity (reduction=sum)",
            16,
            256,
            True,
            lambda s: s.optimizer in ("adam", "adamw", "rmsprop"),
            _stale,
            reference=_stale_ref,
        ),
        Operator(
            "post_ln_no_warmup",
            "missing_warmup",
            "post-LN transformer, warm-up and schedule removed, LR × severity",
            2.0,
            6.0,
            True,
            _knob("norm_first"),
            _no_warmup,
        ),
        Operator(
            "batch_of_one",
            "batch_size",
            "batch size 1 or 2 with the LR of the original batch",
            1,
            2,
            False,
            lambda s: True,
            _batch,
            low_is_worse=True,
        ),
        Operator(
            "log_of_softmax",
            "nonfinite",
            "torch.log(torch.softmax(logits / T)) as the loss, 1 / T = s",
            30.0,
            300.0,
            True,
            _classification,
            _nonfinite,
            reference=_nonfinite_ref,
        ),
        Operator(
            "summed_aux_penalty",
            "loss_component_dominance",
            "an auxiliary logit penalty with reduction='sum', × severity, beside the task loss",
            0.1,
            3.0,
            True,
            lambda s: s.data.task != "lm",
            _dominance,
        ),
        Operator(
            "few_noisy_samples",
            "overfitting",
            "training set cut to s samples (a fifth of labels wrong, or targets noised), wider, "
            "2× longer",
            48,
            120,
            False,
            lambda s: s.data.task != "lm" and s.family != "autoencoder",
            _overfit,
            low_is_worse=True,
            reference=_overfit_ref,
        ),
        Operator(
            "train_long",
            "converged",
            "the healthy program trained severity × as long (an end state, not a fault)",
            4.0,
            8.0,
            False,
            lambda s: True,
            _converge,
            hurt_required=False,
        ),
        # Last, so that adding it moved no earlier operator's --quick programs (taken in turn).
        Operator(
            "sigmoid_regression",
            "output_activation",
            "a sigmoid appended to a regression output; targets × severity (standardized: "
            "they span about [-2s, 2s], far beyond [0, 1])",
            2.0,
            20.0,
            True,
            lambda s: s.data.task == "regression",
            _sigmoid_regression,
            reference=_sigmoid_ref,
        ),
    )
}
