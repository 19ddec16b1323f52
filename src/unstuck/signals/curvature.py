"""Curvature probe: extreme Hessian eigenvalues from Hessian-vector products (STUB)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CurvatureProbe"]


class CurvatureProbe:
    """Estimates the largest and the most negative Hessian eigenvalue on one probe batch."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: list[torch.Tensor],
        *,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        probe_fn: Callable[[torch.nn.Module], torch.Tensor] | None = None,
        max_hvps: int = 40,
    ) -> None:
        self.model = model
        self.params = params
        self.loss_fn = loss_fn
        self.probe_fn = probe_fn
        self.max_hvps = max_hvps

    def run(self, batch: Any = None) -> dict[str, Any]:
        return {"status": "skipped", "reason": "not implemented yet"}
