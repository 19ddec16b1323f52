"""A fixed random subset of parameter coordinates, for signals that keep a copy of the weights.

Below ``max_elements`` coordinates in all, the subset is everything (exact). Above, each tensor
keeps a share proportional to its size, chosen once with a seeded generator, and squared norms
measured on the subset are scaled by ``total / sampled``: an unbiased estimate of the full
squared norm with memory bounded whatever the model's size.
"""

from __future__ import annotations

import math

import torch

from unstuck.signals.base import local_shard

__all__ = ["DEFAULT_MAX_ELEMENTS", "CoordinateSample"]

DEFAULT_MAX_ELEMENTS = 1 << 20  # 4 MiB of float32 at most; exact below that size


class CoordinateSample:
    """Which coordinates of each parameter tensor a signal looks at."""

    def __init__(
        self, params: list[torch.Tensor], max_elements: int = DEFAULT_MAX_ELEMENTS, seed: int = 0
    ) -> None:
        if max_elements < 1:
            raise ValueError(f"max_elements must be >= 1, got {max_elements!r}")
        params = [local_shard(p) for p in params]  # a rank samples its own shards (FSDP2)
        total = sum(p.numel() for p in params)
        generator = torch.Generator().manual_seed(seed)
        self.index: list[torch.Tensor | None] = []
        sampled = 0
        for p in params:
            if total <= max_elements:
                self.index.append(None)
                sampled += p.numel()
                continue
            k = max(1, round(p.numel() * max_elements / total))
            self.index.append(torch.randperm(p.numel(), generator=generator)[:k].to(p.device))
            sampled += k
        self.scale = math.sqrt(total / max(sampled, 1))  # multiplies a norm on the subset

    def view(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The sampled coordinates of each tensor, flattened (views when exact)."""
        local = [local_shard(t.detach()) for t in tensors]
        return [
            t.reshape(-1) if i is None else t.reshape(-1).index_select(0, i)
            for t, i in zip(local, self.index)
        ]
