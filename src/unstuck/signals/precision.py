"""Mixed precision: loss scale, skipped steps, gradient entries flushed to zero, dtypes.

float16 represents magnitudes down to 2⁻²⁴ ≈ 6e-8 (subnormals below 2⁻¹⁴ ≈ 6.1e-5 keep fewer
bits); smaller gradient values become exactly zero (Micikevicius et al. 2018, "Mixed Precision
Training"). A ``GradScaler`` multiplies the loss to lift them, halves its scale and *skips the
optimizer step* whenever a gradient overflows, and grows it again after ``growth_interval``
clean steps. The tap reads:

* the scaler's scale once per flush (``scaler._scale``, a device tensor, cloned; no sync);
* skipped steps: Guard steps minus optimizer steps in each flush window (a skipped
  ``scaler.step`` never calls ``optimizer.step``, so the hub's step hooks do not run);
* on every ``every``-th optimizer step, the share of gradient entries exactly zero and, for
  16-bit gradients, the share that is subnormal (non-zero but below the dtype's smallest normal);
* for 16-bit parameters, on the same sampled steps, the share of weights an optimizer step
  left bit-for-bit unchanged (updates below half a unit in the last place round away);
* the parameter dtypes once, and the dtype of the model's output (autocast shows there).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import torch

from unstuck.signals.base import CostTier, Packet, StepContext, Tap, local_shard
from unstuck.signals.host import Series

__all__ = ["LOW_PRECISION", "PrecisionTap"]

LOW_PRECISION = frozenset({"float16", "bfloat16"})


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _first_tensor(v)
            if found is not None:
                return found
    if isinstance(value, dict):
        for v in value.values():
            found = _first_tensor(v)
            if found is not None:
                return found
    return None


class PrecisionTap(Tap):
    """GradScaler scale and skipped steps, and the share of gradient entries exactly zero."""

    name: ClassVar[str] = "precision"
    tier: ClassVar[CostTier] = "sampled"
    provides: ClassVar[frozenset[str]] = frozenset(
        {
            "param_dtypes",
            "output_dtype",
            "grad_scaler",
            "loss_scale",
            "skipped_steps",
            "skipped_step_share",
            "zero_grad_fraction",
            "subnormal_grad_fraction",
            "unchanged_weight_fraction",
        }
    )

    def __init__(self, every: int = 32, scaler: Any = None) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"precision_every must be a positive int, got {every!r}")
        self.every = every
        self.scaler = scaler
        self._ctx: StepContext | None = None
        self._steps_mark = 0  # Guard steps at the last collect
        self._opt_mark = 0  # optimizer steps at the last collect
        self._last_step = 0
        self._zero_rows: list[torch.Tensor] = []  # per sampled step: [zeros, subnormals]
        self._zero_steps: list[int] = []
        self._numel = 0
        self._param_dtypes: dict[str, float] = {}
        self._output_dtypes: Counter[str] = Counter()
        self._hook: Any = None
        self._model: torch.nn.Module | None = None
        self._low: list[int] = []  # indices of 16-bit parameters
        self._before: list[torch.Tensor] | None = None
        self._unchanged: list[torch.Tensor] = []  # per sampled step: [entries unchanged, total]
        self._unchanged_steps: list[int] = []
        self.current_step = 0

    def bind(self, ctx: StepContext) -> None:
        self._ctx = ctx
        self._steps_mark, self._opt_mark = self._intended(ctx), ctx.opt_steps
        sizes: Counter[str] = Counter()
        for p in ctx.params:
            sizes[_dtype_name(p.dtype)] += p.numel()
        total = sum(sizes.values())
        self._numel = total
        self._param_dtypes = {k: v / total for k, v in sizes.items()} if total else {}
        self._low = [
            i for i, p in enumerate(ctx.params) if p.dtype in (torch.float16, torch.bfloat16)
        ]
        self._model = ctx.model
        self._arm()

    def _arm(self) -> None:
        # The output dtype (autocast shows only there) is read on sampled steps only: the hook is
        # registered before a sampled step's forward and removes itself once it ran.
        if self._model is not None and self._hook is None:
            self._hook = self._model.register_forward_hook(self._on_forward)

    def _on_forward(self, module: Any, args: Any, output: Any) -> None:
        out = _first_tensor(output)
        if out is not None and out.is_floating_point():
            self._output_dtypes[_dtype_name(out.dtype)] += 1
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_loss(
        self, step: int, loss: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor | None
    ) -> None:
        self._last_step = step
        if (step + 1) % self.every == 0:
            self._arm()

    def on_post_step(self, ctx: StepContext, opt_step: int) -> None:
        before = self._before
        if before is None:
            return
        self._before = None
        params = [local_shard(ctx.params[i].detach()) for i in self._low]
        same = torch.stack([(p == b).sum() for p, b in zip(params, before)]).sum().float()
        total = float(sum(p.numel() for p in params))
        self._unchanged.append(torch.stack([same, torch.tensor(total, device=same.device)]))
        self._unchanged_steps.append(self.current_step)

    def on_pre_step(self, ctx: StepContext, opt_step: int) -> None:
        if opt_step % self.every:
            return
        if self._low:
            # 16-bit weights: an update below half the weight's last bit rounds away entirely.
            self._before = [local_shard(ctx.params[i].detach()).clone() for i in self._low]
        counts = []
        for p in ctx.params:
            g = None if p.grad is None else local_shard(p.grad)
            if g is None or g.is_sparse:
                continue
            zeros = (g == 0).sum()
            if g.dtype in (torch.float16, torch.bfloat16):
                tiny = torch.finfo(g.dtype).tiny
                sub = ((g != 0) & (g.abs() < tiny)).sum()
            else:
                sub = torch.zeros((), dtype=zeros.dtype, device=zeros.device)
            counts.append(torch.stack([zeros, sub]).float())
        if not counts:
            return
        home = counts[0].device
        row = torch.stack([c.to(home) for c in counts]).sum(0)
        numel = sum(local_shard(p.grad).numel() for p in ctx.params if p.grad is not None)
        self._zero_rows.append(torch.cat([row, torch.tensor([float(numel)], device=home)]))
        self._zero_steps.append(self.current_step)

    def collect(self) -> Packet:
        ctx = self._ctx
        steps = self._intended(ctx) if ctx is not None else 0
        opt_steps = ctx.opt_steps if ctx is not None else 0
        packet = Packet(
            host={
                "guard_steps": steps - self._steps_mark,
                "opt_steps": opt_steps - self._opt_mark,
                "last_step": self._last_step,
                "param_dtypes": dict(self._param_dtypes),
                "output_dtypes": dict(self._output_dtypes),
            }
        )
        scale = self._scale_tensor()
        if scale is not None:
            packet.tensors["loss_scale"] = scale
        if self._zero_rows:
            packet.tensors["zero_counts"] = torch.stack(self._zero_rows)
            packet.host["zero_steps"] = list(self._zero_steps)
        if self._unchanged:
            packet.tensors["unchanged"] = torch.stack(self._unchanged)
            packet.host["unchanged_steps"] = list(self._unchanged_steps)
        self._unchanged, self._unchanged_steps = [], []
        self._steps_mark, self._opt_mark = steps, opt_steps
        self._zero_rows, self._zero_steps = [], []
        self._output_dtypes = Counter()
        return packet

    @staticmethod
    def _intended(ctx: StepContext) -> int:
        """Optimizer steps the loop meant to take (Guard steps unless accumulation is owned)."""
        return ctx.steps if ctx.intended_opt_steps is None else ctx.intended_opt_steps

    def _scale_tensor(self) -> torch.Tensor | None:
        scaler = self.scaler
        if scaler is None:
            return None
        enabled = getattr(scaler, "is_enabled", None)
        if callable(enabled) and not enabled():
            return None
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            return scale.detach().reshape(()).float().clone()
        return None

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"param_dtypes": host["param_dtypes"]}
        step = int(host["last_step"])
        if host["output_dtypes"]:
            out["output_dtype"] = max(host["output_dtypes"].items(), key=lambda kv: kv[1])[0]
        out["grad_scaler"] = self.scaler is not None and "loss_scale" in host
        if "loss_scale" in host:
            out["loss_scale"] = Series([step], [float(host["loss_scale"][0])])
        guard_steps = int(host["guard_steps"])
        if guard_steps > 0:
            skipped = max(guard_steps - int(host["opt_steps"]), 0)
            out["skipped_steps"] = Series([step], [float(skipped)])
            out["skipped_step_share"] = Series([step], [skipped / guard_steps])
        if "zero_counts" in host:
            steps: list[int] = host["zero_steps"]
            rows = [host["zero_counts"][3 * i : 3 * i + 3] for i in range(len(steps))]
            out["zero_grad_fraction"] = Series(steps, [r[0] / max(r[2], 1.0) for r in rows])
            out["subnormal_grad_fraction"] = Series(steps, [r[1] / max(r[2], 1.0) for r in rows])
        if "unchanged" in host:
            steps = host["unchanged_steps"]
            pairs = [host["unchanged"][2 * i : 2 * i + 2] for i in range(len(steps))]
            out["unchanged_weight_fraction"] = Series(steps, [a / max(b, 1.0) for a, b in pairs])
        return out

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
