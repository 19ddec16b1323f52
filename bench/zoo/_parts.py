"""Data sets and model builders the base programs share (each builder reads the spec's knobs)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from zoo._spec import Data, Spec, activation, mlp, split, standardize

__all__ = [
    "CNN",
    "GPT",
    "Autoencoder",
    "ResNet",
    "SeqNet",
    "TransformerClassifier",
    "digits",
    "markov_tokens",
    "mlp",
    "sklearn_set",
    "teacher_student",
    "token_task",
]


# ----------------------------------------------------------------------------------- data


def sklearn_set(name: str, seed: int) -> Data:
    """A scikit-learn set (bundled or generated, no download), inputs standardized."""
    import sklearn.datasets as ds

    task = "classification"
    if name == "digits":
        x, y = ds.load_digits(return_X_y=True)
    elif name == "breast_cancer":
        x, y = ds.load_breast_cancer(return_X_y=True)
    elif name == "wine":
        x, y = ds.load_wine(return_X_y=True)
    elif name == "iris":
        x, y = ds.load_iris(return_X_y=True)
    elif name == "diabetes":
        x, y = ds.load_diabetes(return_X_y=True)
        y = (y - y.mean()) / y.std()
        task = "regression"
    elif name == "moons":
        x, y = ds.make_moons(1000, noise=0.2, random_state=3)
    elif name == "circles":
        x, y = ds.make_circles(1000, noise=0.08, factor=0.5, random_state=4)
    elif name == "classification":
        x, y = ds.make_classification(
            2000, n_features=20, n_informative=8, n_classes=4, class_sep=1.5, random_state=5
        )
    else:
        raise ValueError(name)
    return split(standardize(x.astype(np.float64)), y, seed, task)


def digits(seed: int) -> Data:
    return sklearn_set("digits", seed)


def teacher_student(seed: int, n: int = 2000, d: int = 20, k: int = 3) -> Data:
    """Soft committee machine teacher (Saad & Solla 1995): y = Σ_k erf(w_k·x/√(2d)) + noise."""
    rng = np.random.default_rng(2000 + seed)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((k, d))
    y = np.vectorize(math.erf)(x @ w.T / math.sqrt(2 * d)).sum(1) + 0.05 * rng.standard_normal(n)
    return split(x, y, seed, "regression")


def token_task(seed: int, rule: str, n: int = 2000, length: int = 8, vocab: int = 10) -> Data:
    """Token sequences labelled by ``rule``: first_plus_last, max, mode, or first (memory)."""
    rng = np.random.default_rng(3000 + seed)
    x = rng.integers(0, vocab, size=(n, length))
    if rule == "first_plus_last":
        y = (x[:, 0] + x[:, -1]) % vocab
    elif rule == "max":
        y = x.max(1)
    elif rule == "first":
        y = x[:, 0]
    elif rule == "mode":  # the most frequent token, the smallest on a tie
        y = np.array([np.bincount(row, minlength=vocab).argmax() for row in x])
    else:
        raise ValueError(rule)
    return split(x, y, seed, "classification")


def markov_tokens(seed: int, n: int = 2000, length: int = 17, vocab: int = 16) -> Data:
    """Sequences from a fixed sparse order-2 Markov chain (each pair of tokens has 2 likely
    successors): a next-token task that needs two positions of context, with a floor at the
    chain's entropy (about ln 2, a token error rate about 0.5)."""
    rng = np.random.default_rng(7)  # the chain is the same for every seed
    nxt = rng.integers(0, vocab, size=(vocab, vocab, 2))
    r = np.random.default_rng(3100 + seed)
    seq = np.empty((n, length), dtype=np.int64)
    seq[:, :2] = r.integers(0, vocab, (n, 2))
    for t in range(2, length):
        seq[:, t] = nxt[seq[:, t - 2], seq[:, t - 1], r.integers(0, 2, n)]
    return split(seq[:, :-1], seq[:, 1:], seed, "lm")


# --------------------------------------------------------------------------------- models


class CNN(nn.Module):
    """Two 3×3 conv layers (BatchNorm when ``spec.norm``), max-pool, a linear head; 8×8 inputs."""

    def __init__(self, spec: Spec, n_out: int) -> None:
        super().__init__()
        c = max(spec.hidden // 4, 1)  # 16 channels at the default hidden=64

        def norm(ch: int) -> nn.Module:
            return nn.BatchNorm2d(ch) if spec.norm else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            norm(c),
            activation(spec.activation),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            norm(2 * c),
            activation(spec.activation),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * c * 16, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)))


class _Block(nn.Module):
    def __init__(self, ch: int, spec: Spec) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=not spec.norm)
        self.bn1 = nn.BatchNorm2d(ch) if spec.norm else nn.Identity()
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=not spec.norm)
        self.bn2 = nn.BatchNorm2d(ch) if spec.norm else nn.Identity()
        self.act = activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        return self.act(x + self.bn2(self.conv2(h)))


class ResNet(nn.Module):
    """A stem conv and ``spec.depth`` residual blocks (He et al. 2016), global pool, head."""

    def __init__(self, spec: Spec, n_out: int) -> None:
        super().__init__()
        ch = max(spec.hidden // 4, 1)
        self.stem = nn.Sequential(nn.Conv2d(1, ch, 3, padding=1), activation(spec.activation))
        self.blocks = nn.Sequential(*[_Block(ch, spec) for _ in range(spec.depth)])
        self.head = nn.Linear(ch, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x.view(-1, 1, 8, 8)))
        return self.head(h.mean((2, 3)))


class SeqNet(nn.Module):
    """Token embeddings -> one recurrent layer (gru, lstm or rnn) -> last state -> logits."""

    def __init__(self, spec: Spec, cell: str, vocab: int, n_out: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        if cell == "gru":
            self.rnn: nn.RNNBase = nn.GRU(16, spec.hidden, batch_first=True)
        elif cell == "lstm":
            self.rnn = nn.LSTM(16, spec.hidden, batch_first=True)
        else:
            act = "relu" if spec.activation == "relu" else "tanh"
            self.rnn = nn.RNN(16, spec.hidden, batch_first=True, nonlinearity=act)
        self.head = nn.Linear(spec.hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


def _encoder(spec: Spec, d: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d,
        nhead=4,
        dim_feedforward=2 * d,
        dropout=0.0,
        batch_first=True,
        norm_first=spec.norm_first,
        activation=spec.activation if spec.activation in ("relu", "gelu") else "relu",
    )
    return nn.TransformerEncoder(layer, spec.depth, enable_nested_tensor=False)


class TransformerClassifier(nn.Module):
    """Token + learned positions, a TransformerEncoder, mean pool, linear head."""

    def __init__(self, spec: Spec, vocab: int, length: int, n_out: int) -> None:
        super().__init__()
        d = max(4, spec.hidden // 8 * 4)  # 32 at hidden=64; a multiple of the 4 heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        self.encoder = _encoder(spec, d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.tok(x) + self.pos[: x.shape[1]])
        return self.head(h.mean(1))


class GPT(nn.Module):
    """A GPT-style decoder: causal self-attention blocks, next-token logits at every position."""

    def __init__(self, spec: Spec, vocab: int, length: int) -> None:
        super().__init__()
        d = max(4, spec.hidden // 8 * 4)  # 32 at hidden=64; a multiple of the 4 heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        self.encoder = _encoder(spec, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.encoder(self.tok(x) + self.pos[:t], mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


class Autoencoder(nn.Module):
    """An MLP encoder to a ``spec.hidden // 4`` bottleneck and back (reconstruction MSE)."""

    def __init__(self, spec: Spec, n_in: int) -> None:
        super().__init__()
        z = max(spec.hidden // 4, 1)
        act = spec.activation
        self.encoder = nn.Sequential(
            nn.Linear(n_in, spec.hidden), activation(act), nn.Linear(spec.hidden, z)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z, spec.hidden), activation(act), nn.Linear(spec.hidden, n_in)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
