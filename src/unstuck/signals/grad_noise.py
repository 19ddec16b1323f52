"""Gradient signal-to-noise ratio: is the gradient still above its own minibatch noise?

A run near convergence has a mean gradient smaller than the noise of a single minibatch
gradient (Mahsereci et al. 2017 stop there; McCandlish et al. 2018 call the ratio the gradient
noise scale). With ``k`` sampled minibatch gradients ``g_i`` in a flush window,

    E‖g_i‖² = ‖G‖² + tr Σ        E‖ḡ‖² = ‖G‖² + tr Σ / k

so ``tr Σ = k/(k−1) · (mean ‖g_i‖² − ‖ḡ‖²)`` and ``‖G‖² = ‖ḡ‖² − tr Σ / k``; the tap reports
``grad_snr = ‖G‖² / tr Σ`` (signal over one minibatch's noise) at each flush. The parameters move
a little within the window, which biases the estimate towards noise; near a plateau they barely
move. It keeps one float32 running sum of the sampled gradient coordinates (at most
``max_elements``, as the distance tap does) and adds to it on every ``every``-th optimizer step.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from unstuck.signals.base import CostTier, Packet, Reduction, StepContext, Tap, local_grads
from unstuck.signals.host import Series
from unstuck.signals.sampling import DEFAULT_MAX_ELEMENTS, CoordinateSample

__all__ = ["GradNoiseTap"]

DEFAULT_EVERY = 16  # a multiple of the grad-norm cadence: the same steps carry the sampled work


class GradNoiseTap(Tap):
    """``grad_snr`` per flush window from the sum and the squared norms of sampled gradients."""

    name: ClassVar[str] = "grad_noise"
    tier: ClassVar[CostTier] = "sampled"
    # A detector input: rank 0's on every rank, so every rank's detectors agree (equal on ranks
    # in sync; a desync is the rank_desync rule's business, not a reason to disagree).
    reduction: ClassVar[Reduction] = "lead"
    provides: ClassVar[frozenset[str]] = frozenset({"grad_snr"})

    def __init__(
        self, every: int = DEFAULT_EVERY, max_elements: int = DEFAULT_MAX_ELEMENTS, seed: int = 1
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"grad_noise_every must be a positive int, got {every!r}")
        self.every = every
        self.max_elements = max_elements
        self.seed = seed
        self._params: list[torch.Tensor] = []
        self._sample: CoordinateSample | None = None
        self._sum: list[torch.Tensor] | None = None
        self._squares: torch.Tensor | None = None
        self._count = 0
        self.current_step = 0

    def bind(self, ctx: StepContext) -> None:
        self._params = list(ctx.params)
        self._sample = CoordinateSample(self._params, self.max_elements, self.seed)

    def on_pre_step(self, ctx: StepContext, opt_step: int) -> None:
        if opt_step % self.every or self._sample is None:
            return
        grads = local_grads(self._params)
        if any(g is None for g in grads):
            return  # a step where some tensor got no gradient: skip rather than mix supports
        view = [v.float() for v in self._sample.view(grads)]  # type: ignore[arg-type]
        norms = torch._foreach_norm(view)
        square = torch.stack(norms).pow(2).sum()
        if self._sum is None:
            self._sum = [v.clone() for v in view]
            self._squares = square
        else:
            torch._foreach_add_(self._sum, view)
            assert self._squares is not None
            self._squares = self._squares + square
        self._count += 1

    def collect(self) -> Packet:
        if self._sum is None or self._count < 2:
            return Packet()
        assert self._squares is not None
        sum_norm = torch.stack(torch._foreach_norm(self._sum)).pow(2).sum()
        packet = Packet(
            tensors={"grad_noise": torch.stack([sum_norm, self._squares]).reshape(2)},
            host={"count": self._count, "step": self.current_step},
        )
        self._sum, self._squares, self._count = None, None, 0
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        if "grad_noise" not in host:
            return {}
        sum_norm, squares = (float(v) for v in host["grad_noise"])
        k = int(host["count"])
        mean_square = squares / k
        mean_vector = sum_norm / (k * k)  # ‖ḡ‖²
        noise = k / (k - 1) * (mean_square - mean_vector)  # tr Σ (subset scale cancels)
        signal = mean_vector - noise / k  # ‖G‖²
        if not (math.isfinite(noise) and math.isfinite(signal)) or noise <= 0:
            return {}
        return {"grad_snr": Series([int(host["step"])], [max(signal, 0.0) / noise])}
