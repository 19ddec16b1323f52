"""Models and data helpers shared by the healthy controls (not a scenario: underscore)."""

from __future__ import annotations

import math

import torch
from torch import nn

from scenarios._common import Data

__all__ = ["GRUClassifier", "SmallCNN", "TinyTransformer", "standardized", "warmup"]


def standardized(data: Data) -> Data:
    """Inputs scaled to zero mean, unit variance with the training split's statistics."""
    mean, std = data.x.mean(0), data.x.std(0) + 1e-8
    data.x = (data.x - mean) / std
    data.x_val = (data.x_val - mean) / std
    return data


class SmallCNN(nn.Module):
    """Two 3×3 conv layers, max-pool and a linear head on 8×8 single-channel images."""

    def __init__(self, batch_norm: bool = False, n_out: int = 10) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=not batch_norm),
            norm(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=not batch_norm),
            norm(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(32 * 4 * 4, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)))


class TinyTransformer(nn.Module):
    """Token + learned position embeddings, a pre-norm TransformerEncoder, mean-pool, linear."""

    def __init__(self, vocab: int = 10, length: int = 12, d: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, nhead=4, dim_feedforward=4 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.tok(x) + self.pos[: x.shape[1]])
        return self.out(self.norm(h.mean(1)))


class GRUClassifier(nn.Module):
    """Embedding, a one-layer GRU, and a linear read-out of the last hidden state."""

    def __init__(self, vocab: int = 10, emb: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.emb(x))
        return self.out(h[-1])


def warmup(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``steps`` then constant, as HF's get_constant_schedule_with_warmup."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, steps)))


def cosine(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay from the base LR to zero over ``total`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
