"""Curvature probe: extreme Hessian eigenvalues from Hessian-vector products, by Lanczos.

One forward pass builds the loss on the kept probe batch, one backward pass with
``create_graph=True`` gives the gradient ``g`` as a differentiable function of the weights, and
each Hessian-vector product is the gradient of ``g·v`` through that same graph
(reverse-over-reverse). ``torch.func``'s ``jvp(grad(f))`` is avoided on purpose: it fails with
``F.mse_loss(reduction="mean")`` (pytorch#123996, REFERENCE.md §5).

Lanczos with full reorthogonalisation (Golub & Van Loan, "Matrix Computations", §10.1) turns
``k`` products into a ``k × k`` tridiagonal matrix whose extreme eigenvalues (Ritz values)
converge to the Hessian's largest and most negative eigenvalues from the inside, both ends at
once (PyHessian, Yao et al. 2020, uses the same iteration for its spectral density).

Nothing the run depends on changes: the probe reads gradients with ``torch.autograd.grad``
(never ``.grad``), leaves parameters untouched, restores every buffer (BatchNorm running
statistics move in a forward pass in train mode), keeps the model's train/eval mode as it is
(dropout masks are drawn once, in the single forward pass, so every product sees the same
function) and runs inside ``torch.random.fork_rng`` so the run's random streams are unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from unstuck.signals.distributed import is_sharded
from unstuck.signals.host import (
    DIRECTION_SNR,
    FLAT_FELT_CURVATURE,
    NOISE_FLOOR_SHARE,
    SADDLE_RATIO,
    STALLED_PROGRESS,
    classify,
)

__all__ = [
    "DIRECTION_SNR",
    "FLAT_FELT_CURVATURE",
    "LANCZOS_MAX_BYTES",
    "NOISE_FLOOR_SHARE",
    "SADDLE_RATIO",
    "STALLED_PROGRESS",
    "CurvatureProbe",
    "classify",
]

LANCZOS_MAX_BYTES = 1 << 28  # Lanczos basis kept on the device: at most 256 MiB, fewer steps above


def _lanczos_extremes(
    matvec: Callable[[torch.Tensor], torch.Tensor], n: int, k: int, v0: torch.Tensor
) -> tuple[float, float, int]:
    """Largest and smallest Ritz values after at most ``k`` steps (full reorthogonalisation)."""
    basis = torch.empty((k, n), dtype=v0.dtype, device=v0.device)
    alphas: list[float] = []
    betas: list[float] = []
    v = v0 / v0.norm()
    used = 0
    for j in range(k):
        basis[j] = v
        w = matvec(v)
        used += 1
        alpha = float(torch.dot(w, v))
        alphas.append(alpha)
        # full reorthogonalisation against every kept vector (twice is enough: Kahan/Parlett)
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        if j == k - 1 or beta <= 1e-10 * max(abs(alpha), 1.0) or not math.isfinite(beta):
            break
        betas.append(beta)
        v = w / beta
    t = np.diag(np.asarray(alphas))
    if betas:
        off = np.asarray(betas[: len(alphas) - 1])
        t += np.diag(off, 1) + np.diag(off, -1)
    ritz = np.linalg.eigvalsh(t)
    return float(ritz[-1]), float(ritz[0]), used


class CurvatureProbe:
    """Estimates the largest and the most negative Hessian eigenvalue on one probe batch.

    ``run(batch)`` returns ``{"status": "ok", "lambda_max", "lambda_min", "grad_norm", "loss",
    "param_norm", "classification", "hvps", "seconds", ...}`` or ``{"status": "skipped",
    "reason": ...}``. It never raises on the user's model: an error becomes a skip.

    Args:
        model: the module being trained.
        params: the parameters the optimizer updates (the Hessian is taken over these).
        loss_fn: ``loss_fn(model(inputs), targets)`` on a kept ``(inputs, targets)`` batch.
        probe_fn: ``probe_fn(model) -> loss``; takes precedence over ``loss_fn``.
        max_hvps: Hessian-vector products per probe (Lanczos steps), each ~2 backward passes.
        lr: the effective step size η, a float or a callable returning it; used only to call a
            region flat (η·|λ| below ``FLAT_FELT_CURVATURE``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        params: list[torch.Tensor],
        *,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        probe_fn: Callable[[torch.nn.Module], torch.Tensor] | None = None,
        max_hvps: int = 40,
        lr: float | Callable[[], float] | None = None,
    ) -> None:
        if max_hvps < 2:
            raise ValueError(f"CurvatureProbe: max_hvps must be >= 2, got {max_hvps!r}")
        self.model = model
        self.params = params
        self.loss_fn = loss_fn
        self.probe_fn = probe_fn
        self.max_hvps = max_hvps
        self.lr = lr
        # Under FSDP the probe's forward pass gathers parameters with every rank, but the probe
        # runs where the rules run (rank 0 alone): it would wait for the other ranks forever.
        self.sharded = is_sharded(model, params)

    # -- the loss -----------------------------------------------------------------------------
    @property
    def needs_batch(self) -> bool:
        """Whether ``run`` reads the batch it is given (loss_fn without probe_fn)."""
        return self.probe_fn is None and self.loss_fn is not None

    def _loss(self, batch: Any) -> torch.Tensor | str:
        if self.probe_fn is not None:
            return self.probe_fn(self.model)
        if self.loss_fn is None:
            return "no probe_fn or loss_fn: pass Guard(loss_fn=...) or Guard(probe_fn=...)"
        if batch is None:
            return "no kept batch: pass guard.step(loss, batch=(inputs, targets))"
        if not (isinstance(batch, Sequence) and len(batch) == 2):
            return "the kept batch is not an (inputs, targets) pair; use probe_fn"
        inputs, targets = batch
        out = self.model(*inputs) if isinstance(inputs, (tuple, list)) else self.model(inputs)
        return self.loss_fn(out, targets)

    def _step_size(self) -> float | None:
        lr = self.lr() if callable(self.lr) else self.lr
        if lr is None:
            return None
        value = float(lr)
        return value if math.isfinite(value) and value > 0 else None

    # -- the probe ----------------------------------------------------------------------------
    def run(self, batch: Any = None) -> dict[str, Any]:
        start = time.perf_counter()
        params = [p for p in self.params if p.requires_grad]
        if not params:
            return {"status": "skipped", "reason": "no trainable parameters"}
        if self.sharded:
            return {
                "status": "skipped",
                "reason": "sharded parameters (FSDP): the probe would need every rank's shards",
            }
        buffers = [b.detach().clone() for b in self.model.buffers()]
        try:
            # The math kernel of scaled_dot_product_attention: the fused (flash, efficient)
            # kernels have no double backward, so the probe would fail on every Transformer.
            with (
                torch.random.fork_rng(devices=self._devices(params)),
                sdpa_kernel(SDPBackend.MATH),
            ):
                result = self._measure(batch, params)
        except Exception as exc:  # the user's model or loss failed: a skip, never a crash
            result = {"status": "skipped", "reason": f"probe failed: {type(exc).__name__}: {exc}"}
        finally:
            with torch.no_grad():
                for saved, buf in zip(buffers, self.model.buffers()):
                    buf.copy_(saved)
        result["seconds"] = round(time.perf_counter() - start, 4)
        return result

    @staticmethod
    def _devices(params: list[torch.Tensor]) -> list[int]:
        return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})

    def _measure(self, batch: Any, params: list[torch.Tensor]) -> dict[str, Any]:
        with torch.enable_grad():
            loss = self._loss(batch)
            if isinstance(loss, str):
                return {"status": "skipped", "reason": loss}
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                return {"status": "skipped", "reason": "the probe loss is not a scalar tensor"}
            loss = loss.reshape(())
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                return {"status": "skipped", "reason": f"non-finite probe loss ({loss_value})"}
            if not loss.requires_grad:
                return {"status": "skipped", "reason": "the loss does not depend on the parameters"}
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            used = [(p, g) for p, g in zip(params, grads) if g is not None]
            if not used:
                return {"status": "skipped", "reason": "the loss does not depend on the parameters"}
            ps = [p for p, _ in used]
            flat_g = torch.cat([g.reshape(-1) for _, g in used])
            grad_norm = float(flat_g.detach().norm())
            if not math.isfinite(grad_norm):
                return {"status": "skipped", "reason": "non-finite gradient on the probe batch"}
            n = flat_g.numel()
            itemsize = flat_g.element_size()
            k = min(self.max_hvps, n, max(2, LANCZOS_MAX_BYTES // max(n * itemsize, 1)))
            hvps = 0

            def matvec(v: torch.Tensor) -> torch.Tensor:
                nonlocal hvps
                hvps += 1
                hv = torch.autograd.grad(
                    flat_g, ps, grad_outputs=v, retain_graph=True, allow_unused=True
                )
                return torch.cat(
                    [
                        (h if h is not None else torch.zeros_like(p)).reshape(-1)
                        for h, p in zip(hv, ps)
                    ]
                ).detach()

            if not flat_g.requires_grad:  # the loss is linear in the parameters: H = 0
                lam_max, lam_min = 0.0, 0.0
            else:
                gen = torch.Generator(device=flat_g.device).manual_seed(0)
                v0 = torch.randn(n, generator=gen, device=flat_g.device, dtype=flat_g.dtype)
                lam_max, lam_min, _ = _lanczos_extremes(matvec, n, k, v0)
            with torch.no_grad():
                param_norm = float(torch.cat([p.detach().reshape(-1) for p in ps]).norm())
        if not (math.isfinite(lam_max) and math.isfinite(lam_min)):
            return {"status": "skipped", "reason": "non-finite Hessian-vector products"}
        step_size = self._step_size()
        return {
            "status": "ok",
            "lambda_max": lam_max,
            "lambda_min": lam_min,
            "grad_norm": grad_norm,
            "loss": loss_value,
            "param_norm": param_norm,
            "n_params": int(n),
            "step_size": step_size,
            "classification": classify(lam_max, lam_min, grad_norm, loss_value, step_size),
            "hvps": hvps,
            "method": "lanczos",
        }
