"""Per-tensor and global gradient norms, computed with ``torch._foreach_norm``.

The norms are taken in the optimizer's step pre-hook, where the gradients are final: accumulated
over micro-batches and already clipped. One fused kernel per (device, dtype) group, as
``torch.nn.utils.clip_grad_norm_`` does; the result stays on the device.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

import numpy as np
import torch

from unstuck.signals.base import CostTier, Packet, StepContext, Tap, local_grads, local_shard
from unstuck.signals.host import Series

__all__ = ["GradNormTap", "NormPlan"]


class NormPlan:
    """Precomputed (device, dtype) groups of a fixed tensor list, for fast repeated norms.

    One ``_foreach_norm`` call per group; when a single group covers every tensor in order (the
    common case) the result needs no scatter.
    """

    def __init__(self, tensors: list[torch.Tensor], home: torch.device) -> None:
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
        for i, t in enumerate(tensors):
            groups[(t.device, t.dtype)].append(i)
        self.home = home
        self.size = len(tensors)
        self.groups = [
            (indices, torch.tensor(indices, device=home, dtype=torch.long))
            for indices in groups.values()
        ]
        self.single = len(self.groups) == 1 and self.groups[0][0] == list(range(self.size))

    def norms(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """L2 norm of each tensor as one float32 vector on ``home`` (0 where a tensor is None)."""
        if self.single and all(t is not None for t in tensors):
            norms = torch._foreach_norm(tensors)  # type: ignore[arg-type]
            return torch.stack(norms).to(device=self.home, dtype=torch.float32)
        out = torch.zeros(self.size, device=self.home, dtype=torch.float32)
        for indices, index_tensor in self.groups:
            present = [i for i in indices if tensors[i] is not None]
            if not present:
                continue
            norms = torch._foreach_norm([tensors[i] for i in present])  # type: ignore[misc]
            vec = torch.stack(norms).to(device=self.home, dtype=torch.float32, non_blocking=True)
            if len(present) == len(indices):
                out[index_tensor] = vec
            else:
                out[torch.tensor(present, device=self.home)] = vec
        return out


class GradNormTap(Tap):
    """Gradient norm of every parameter tensor every ``every`` optimizer steps.

    Reading it: the global norm shows spikes (exploding gradients) and collapse (vanishing or
    a flat region); the ratio of the first to the last layer's norm shows where the signal dies.
    """

    name: ClassVar[str] = "grad_norm"
    tier: ClassVar[CostTier] = "always"
    provides: ClassVar[frozenset[str]] = frozenset(
        {
            "grad_norm",
            "nonfinite_grad",
            "grad_norm_per_tensor",
            "grad_missing",
            "params_without_grad",
        }
    )

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"grad_norm_every must be >= 1, got {every!r}")
        self.every = every
        self._rows: list[torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]] = []
        self._steps: list[int] = []
        self._missing = 0  # optimizer parameters that had no gradient on a sampled step
        self._never: set[int] = set()  # tensors without a gradient on every sampled step so far
        self._sampled = 0  # sampled steps since the tap was bound
        self._plan: NormPlan | None = None
        self.current_step = 0  # set by the hub: the Guard step the next optimizer step belongs to

    def bind(self, ctx: StepContext) -> None:
        home = ctx.params[0].device if ctx.params else torch.device("cpu")
        self._plan = NormPlan([local_shard(p) for p in ctx.params], home)
        self._never = set(range(len(ctx.params)))
        self._sampled = 0

    def on_pre_step(self, ctx: StepContext, opt_step: int) -> None:
        if opt_step % self.every or self._plan is None:
            return
        grads = local_grads(ctx.params)
        missing = sum(g is None for g in grads)
        self._missing += missing
        self._sampled += 1
        if self._never:  # host checks (.grad, requires_grad): no device work
            # Frozen tensors (requires_grad=False) have no gradient by design: not counted.
            params = ctx.params
            self._never = {i for i in self._never if grads[i] is None and params[i].requires_grad}
        if self._plan.single and not missing:
            # The hot path: keep the per-tensor norms as they come and stack them all once at
            # the flush, so a step costs one _foreach_norm and nothing else.
            self._rows.append(torch._foreach_norm(grads))  # type: ignore[arg-type]
        else:
            self._rows.append(self._plan.norms(grads))
        self._steps.append(self.current_step)

    def collect(self) -> Packet:
        if not self._rows:
            return Packet()
        plan = self._plan
        assert plan is not None
        if all(isinstance(r, (tuple, list)) for r in self._rows):
            flat = torch.stack([n for row in self._rows for n in row])
            table = flat.to(device=plan.home, dtype=torch.float32).reshape(len(self._rows), -1)
        else:
            table = torch.stack(
                [
                    torch.stack(list(r)).to(device=plan.home, dtype=torch.float32)
                    if isinstance(r, (tuple, list))
                    else r
                    for r in self._rows
                ]
            )
        packet = Packet(
            tensors={"grad_norms": table},
            host={
                "steps": self._steps,
                "missing": self._missing,
                "never": sorted(self._never),
                "sampled": self._sampled,
            },
        )
        self._rows, self._steps, self._missing = [], [], 0
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        if "grad_norms" not in host:
            return {}
        per_tensor = np.asarray(host["grad_norms"], dtype=np.float64).reshape(
            len(host["steps"]), -1
        )
        total = np.sqrt(np.sum(per_tensor**2, axis=1))
        steps: list[int] = host["steps"]
        nonfinite = int(np.sum(~np.isfinite(total)))
        return {
            "grad_norm": Series(steps, total.tolist()),
            "nonfinite_grad": Series(steps[-1:], [float(nonfinite)]),
            "grad_norm_per_tensor": per_tensor,  # rows: sampled steps, columns: tensors
            "grad_missing": host["missing"],
            # Tensors in the optimizer that had no gradient on any sampled step since the
            # start: not in the graph (a detached path, an unused layer).
            "params_without_grad": {
                "indices": list(host.get("never", [])),
                "sampled_steps": int(host.get("sampled", 0)),
            },
        }
