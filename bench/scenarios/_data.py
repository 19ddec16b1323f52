"""Shared pieces of the data-and-loss scenarios (not a scenario: the name starts with _)."""

from __future__ import annotations

import math

import numpy as np
import torch

from scenarios._common import Data

__all__ = ["GRUNet", "TransformerNet", "flip_labels", "subsample_classes"]


class TransformerNet(torch.nn.Module):
    """Token embeddings + learned positions -> 2-layer TransformerEncoder -> mean pool -> logits."""

    def __init__(self, vocab: int = 10, length: int = 12, d: int = 32, n_out: int = 10) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.randn(length, d) / math.sqrt(d))
        layer = torch.nn.TransformerEncoderLayer(
            d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.pos[: x.shape[1]])
        return self.head(h.mean(1))


class GRUNet(torch.nn.Module):
    """Token embeddings -> one-layer GRU -> last hidden state -> logits."""

    def __init__(self, vocab: int = 10, d: int = 32, hidden: int = 64, n_out: int = 10) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.gru = torch.nn.GRU(d, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.embed(x))
        return self.head(h[-1])


def flip_labels(data: Data, share: float, seed: int) -> torch.Tensor:
    """Replace ``share`` of the training labels by a different class drawn uniformly (in place);
    returns the flipped indices."""
    rng = np.random.default_rng(4000 + seed)
    n = data.y.shape[0]
    k = data.n_classes
    idx = rng.choice(n, size=int(share * n), replace=False)
    shift = rng.integers(1, k, size=idx.size)
    y = data.y.clone()
    y[idx] = (y[idx] + torch.as_tensor(shift)) % k
    data.y = y
    return torch.as_tensor(idx)


def subsample_classes(data: Data, classes: list[int], keep: float, seed: int) -> Data:
    """Keep only ``keep`` of the training samples of ``classes`` (validation untouched)."""
    rng = np.random.default_rng(5000 + seed)
    y = data.y.numpy()
    mask = np.ones(y.size, dtype=bool)
    for c in classes:
        where = np.flatnonzero(y == c)
        drop = rng.choice(where, size=where.size - max(1, int(keep * where.size)), replace=False)
        mask[drop] = False
    sel = torch.as_tensor(np.flatnonzero(mask))
    return Data(data.x[sel], data.y[sel], data.x_val, data.y_val, data.task)
