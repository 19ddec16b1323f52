"""Adaptive optimizer state against the gradients it scales, and state missing at step > 0.

Adam-family optimizers divide each step by √v̂, a running mean of squared gradients over the
last ~1/(1−β₂) steps (1,000 for torch's default β₂ = 0.999). When v̂ is far larger than the
squared gradients the run makes now (a past gradient spike, or state carried over from a run
whose loss had another scale), every step is shrunk by √(v̂/g²) until v̂ decays. On every
``every``-th optimizer step, in the step pre-hook (the state holds the previous step's moments,
the gradients are final), the tap computes per tensor ``Σ v̂ / Σ g²`` with one fused norm per
list, on the device. It also counts parameters that get a gradient but have no optimizer state
although optimizer steps were taken, and the lag between the Guard's optimizer-step count (kept
across ``Guard.load_state_dict``) and the optimizer's own step count: a run resumed without
``optimizer.load_state_dict`` shows both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from unstuck.signals.base import CostTier, Packet, StepContext, Tap, local_shard
from unstuck.signals.host import Series

__all__ = ["OptimizerStateTap", "second_moment_key"]

DEFAULT_EVERY = 32
# Optimizers whose per-parameter state exists after their first step; SGD only with momentum.
_STATEFUL = frozenset(
    {"Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop", "Adagrad", "Adadelta", "SparseAdam"}
)
_TINY = 1e-30  # keeps a ratio finite where a gradient is exactly zero


def second_moment_key(optimizer: torch.optim.Optimizer) -> tuple[str, bool] | None:
    """The state key of the squared-gradient average and whether it is bias-corrected."""
    name = type(optimizer).__name__
    if name in ("Adam", "AdamW", "NAdam", "RAdam"):
        return "exp_avg_sq", True
    if name == "Adamax":
        return "exp_inf", True  # an infinity norm: squared below, bias-corrected by β₁ only
    if name == "RMSprop":
        return "square_avg", False
    return None


def _expects_state(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    name = type(optimizer).__name__
    if name in _STATEFUL:
        return True
    return name == "SGD" and float(group.get("momentum", 0.0) or 0.0) > 0.0


class OptimizerStateTap(Tap):
    """Adam-family second moments against squared gradients; state missing at step > 0."""

    name: ClassVar[str] = "optimizer_state"
    tier: ClassVar[CostTier] = "sampled"
    provides: ClassVar[frozenset[str]] = frozenset(
        {
            "second_moment_ratio",
            "second_moment_ratio_global",
            "second_moment_sum",
            "second_moment_beta",
            "optimizer_state_step",
            "optimizer_step_lag",
            "optimizer_state_empty",
        }
    )

    def __init__(self, every: int = DEFAULT_EVERY) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"optimizer_state_every must be a positive int, got {every!r}")
        self.every = every
        self._rows: list[torch.Tensor] = []  # per sampled step: [Σv̂_i..., Σg²_i...]
        self._ratio_steps: list[int] = []
        self._empty: list[tuple[int, int, int]] = []  # (step, tensors without state, with grad)
        self._lags: list[tuple[int, int, torch.Tensor]] = []  # (step, guard opt step, min step)
        self._beta: float | None = None  # the averaging factor of the second moment (β₂)
        self.current_step = 0

    def on_pre_step(self, ctx: StepContext, opt_step: int) -> None:
        if opt_step % self.every:
            return
        # The steps the optimizer's state should count: those a restore undid are not missing.
        opt_step -= ctx.undone_opt_steps
        if opt_step <= 0:
            return  # at the first optimizer step no state exists yet, rightly
        optimizer = ctx.optimizer
        groups = optimizer.param_groups
        key = second_moment_key(optimizer)
        moments: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        corrections: list[torch.Tensor] = []
        steps: list[torch.Tensor] = []
        empty = with_grad = 0
        for p, g in zip(ctx.params, ctx.group_index):
            grad = None if p.grad is None else local_shard(p.grad)
            if grad is None:
                continue
            with_grad += 1
            state = optimizer.state.get(p)
            if not state:
                if _expects_state(optimizer, groups[g]):
                    empty += 1
                continue
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                steps.append(local_shard(step.detach()).reshape(()).float())
            elif isinstance(step, (int, float)):
                steps.append(torch.tensor(float(step)))
            if key is None or grad.is_sparse:
                continue
            moment = state.get(key[0])
            if isinstance(moment, torch.Tensor):
                moment = local_shard(moment)
            if not isinstance(moment, torch.Tensor) or moment.shape != grad.shape:
                continue
            if key[0] == "exp_inf":
                moment = moment * moment
            moments.append(moment)
            grads.append(grad)
            if key[1] and isinstance(step, (torch.Tensor, int, float)):
                betas = groups[g].get("betas", (0.9, 0.999))
                beta = float(betas[0] if key[0] == "exp_inf" else betas[1])
                self._beta = float(betas[1])
                t = torch.as_tensor(step, dtype=torch.float32).detach().reshape(())
                corrections.append(1.0 - torch.pow(torch.tensor(beta, device=t.device), t))
            else:
                self._beta = float(groups[g].get("alpha", 0.99))  # RMSprop's smoothing
                corrections.append(torch.ones(()))
        if with_grad and _expects_state(optimizer, groups[0]):
            self._empty.append((self.current_step, empty, with_grad))
        if steps:
            self._lags.append((self.current_step, opt_step, torch.stack(steps).min()))
        if moments:
            home = grads[0].device
            v_sums = torch.stack(
                [n.to(home, torch.float32) for n in torch._foreach_norm(moments, 1)]
            )
            g_norms = torch.stack([n.to(home, torch.float32) for n in torch._foreach_norm(grads)])
            corr = torch.stack([c.to(home, torch.float32) for c in corrections])
            v_hat = v_sums / corr.clamp_min(_TINY)
            self._rows.append(torch.cat([v_hat, g_norms.pow(2)]))
            self._ratio_steps.append(self.current_step)

    def collect(self) -> Packet:
        packet = Packet()
        if self._rows and all(r.numel() == self._rows[0].numel() for r in self._rows):
            home = self._rows[0].device
            packet.tensors["second_moment"] = torch.stack([r.to(home) for r in self._rows])
            packet.host["ratio_steps"] = list(self._ratio_steps)
        if self._lags:
            packet.tensors["state_steps"] = torch.stack([m.float() for _, _, m in self._lags])
            packet.host["lag_steps"] = [s for s, _, _ in self._lags]
            packet.host["guard_opt_steps"] = [o for _, o, _ in self._lags]
        if self._empty:
            packet.host["empty"] = list(self._empty)
        packet.host["beta2"] = self._beta
        self._rows, self._ratio_steps, self._empty, self._lags = [], [], [], []
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "second_moment" in host:
            steps: list[int] = host["ratio_steps"]
            table = np.asarray(host["second_moment"], dtype=np.float64).reshape(len(steps), 2, -1)
            v_hat, g2 = table[:, 0, :], table[:, 1, :]
            with np.errstate(divide="ignore", invalid="ignore"):
                per_tensor = v_hat / np.maximum(g2, _TINY)
                total = v_hat.sum(axis=1) / np.maximum(g2.sum(axis=1), _TINY)
            out["second_moment_ratio"] = Series(steps, np.median(per_tensor, axis=1).tolist())
            out["second_moment_ratio_global"] = Series(steps, total.tolist())
            out["second_moment_sum"] = Series(steps, v_hat.sum(axis=1).tolist())
        if "state_steps" in host:
            own = np.asarray(host["state_steps"], dtype=np.float64)
            guard = np.asarray(host["guard_opt_steps"], dtype=np.float64)
            out["optimizer_state_step"] = Series(host["lag_steps"], own.tolist())
            out["optimizer_step_lag"] = Series(host["lag_steps"], (guard - own).tolist())
        if host.get("beta2") is not None:
            out["second_moment_beta"] = float(host["beta2"])
        if "empty" in host:
            rows = host["empty"]
            out["optimizer_state_empty"] = Series(
                [int(s) for s, _, _ in rows],
                [float(e) / max(int(n), 1) for _, e, n in rows],
            )
        return out
