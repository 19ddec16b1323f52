"""Gradient clipping: how often the gradient norm is cut, and by how much.

``Guard.clip_grad_norm_(max_norm)`` calls torch's ``clip_grad_norm_`` on the optimizer's
parameters and hands the pre-clip total norm (a device tensor) and the threshold to
:meth:`ClipTap.record`; nothing is read on the host until the flush. At each flush the tap
reports the share of recorded steps whose pre-clip norm exceeded the threshold (the clip rate),
the median pre-clip norm and the threshold.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from unstuck.signals.base import CostTier, Packet, Tap
from unstuck.signals.host import Series

__all__ = ["ClipTap"]


class ClipTap(Tap):
    """Pre-clip total norms and the clip threshold, recorded by ``Guard.clip_grad_norm_``."""

    name: ClassVar[str] = "clipping"
    tier: ClassVar[CostTier] = "always"
    provides: ClassVar[frozenset[str]] = frozenset(
        {"clip_rate", "clip_pre_norm", "clip_threshold", "clip_steps"}
    )

    def __init__(self) -> None:
        self._norms: list[torch.Tensor] = []
        self._steps: list[int] = []
        self._max_norms: list[float] = []

    def record(self, step: int, total_norm: torch.Tensor, max_norm: float) -> None:
        """Keep the pre-clip norm on the device; no host sync."""
        # Under FSDP2 torch returns the norm as a DTensor of partial sums: its full value is one
        # all-reduce, made here on every rank (each clips at the same call), never a host sync.
        full = getattr(total_norm, "full_tensor", None)
        value = full() if callable(full) else total_norm
        self._norms.append(value.detach().reshape(()).float())
        self._steps.append(int(step))
        self._max_norms.append(float(max_norm))

    def collect(self) -> Packet:
        if not self._norms:
            return Packet()
        home = self._norms[0].device
        packet = Packet(
            tensors={"clip_norms": torch.stack([n.to(home) for n in self._norms])},
            host={"steps": self._steps, "max_norms": self._max_norms},
        )
        self._norms, self._steps, self._max_norms = [], [], []
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        if "clip_norms" not in host:
            return {}
        norms = np.asarray(host["clip_norms"], dtype=np.float64)
        limits = np.asarray(host["max_norms"], dtype=np.float64)
        finite = np.isfinite(norms)
        if not finite.any():
            return {}
        step = int(host["steps"][-1])
        clipped = norms[finite] > limits[finite]
        return {
            "clip_rate": Series([step], [float(clipped.mean())]),
            "clip_pre_norm": Series([step], [float(np.median(norms[finite]))]),
            "clip_threshold": Series([step], [float(limits[-1])]),
            "clip_steps": Series([step], [float(finite.sum())]),
        }
