"""What the model hands the loss, and the float targets it is compared with, on sampled forwards.

A wrong output activation (a softmax fed to ``F.cross_entropy``, a sigmoid output on regression
targets of 3 to 103) shows in the model's *output*, which the activation tap's per-module hooks
miss when the squashing is functional (``torch.softmax(self.inner(x), -1)`` in a wrapper's
``forward``). This tap hooks the root module instead, on the same sampled forwards as
:class:`~unstuck.signals.activations.ActivationTap` (step 0, then every ``every``-th Guard step),
and removes the hook as soon as that forward ran. Statistics stay on the device until the flush;
the name of the output's last autograd op is read from ``grad_fn`` (host metadata, no sync).

Evidence (docs/signals.md):

* ``output_stats`` — the latest sampled output: ``units`` (its last dim; 1 for a ``(N,)``
  output), ``min``, ``max``, ``row_sum_error`` (the largest |row sum − 1| over the last dim),
  ``probability_rows`` (every element ≥ −:data:`ROW_SUM_TOLERANCE` and every row sums to 1
  within it), ``constant`` (max − min ≤ :data:`CONSTANT_TOLERANCE` × max(1, |max|, |min|)),
  ``last_op`` (``Softmax``, ``Sigmoid``, ``Tanh``, ... from ``grad_fn``, views and casts
  skipped; ``""`` when unknown) and ``step``.
* ``target_stats`` — float targets of the same sampled step (``batch=(inputs, targets)`` or
  ``targets=``): ``min``, ``max``, ``units`` (last dim), ``row_sum_max`` (the largest row sum
  over the last dim, for ``(N, K)`` targets: above 1 means multi-label), ``source`` and ``step``.
  Integer class labels are not recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from unstuck.signals.base import CostTier, Packet, StepContext, Tap
from unstuck.signals.host import CONSTANT_TOLERANCE, ROW_SUM_TOLERANCE

__all__ = ["CONSTANT_TOLERANCE", "ROW_SUM_TOLERANCE", "OutputTap"]

# grad_fn names skipped on the way back to the op that made the output (shape and dtype changes).
_PASS_THROUGH = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "UnsqueezeBackward0",
        "ToCopyBackward0",
        "CloneBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "ExpandBackward0",
        "SelectBackward0",
        "SliceBackward0",
    }
)
_MAX_HOPS = 6


def _output_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a loss would receive: the value, the first of a tuple, ``logits`` of a dict."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        logits = value.get("logits")
        return logits if isinstance(logits, torch.Tensor) else None
    if isinstance(value, (tuple, list)) and value:
        return _output_tensor(value[0])
    return None


def last_op(tensor: torch.Tensor) -> str:
    """The autograd op that produced ``tensor`` (``Softmax``, ``Sigmoid``, ...), skipping views
    and casts; ``""`` without a graph."""
    fn = tensor.grad_fn
    for _ in range(_MAX_HOPS):
        if fn is None:
            return ""
        name = type(fn).__name__
        if name not in _PASS_THROUGH:
            return name.removesuffix("Backward0").removesuffix("Backward1")
        nxt = fn.next_functions
        fn = nxt[0][0] if nxt else None
    return ""


@dataclass
class _Sample:
    step: int
    stats: torch.Tensor  # min, max, max |row sum - 1|: on the device
    units: int
    op: str
    targets: torch.Tensor | None = None  # min, max, max row sum
    target_units: int = 0
    target_source: str = ""


class OutputTap(Tap):
    """The model's output (what the loss receives) and float targets, on sampled forwards."""

    name: ClassVar[str] = "outputs"
    tier: ClassVar[CostTier] = "sampled"
    provides: ClassVar[frozenset[str]] = frozenset({"output_stats", "target_stats"})

    def __init__(self, every: int = 32) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"activation_every must be a positive int, got {every!r}")
        self.every = every
        self._model: nn.Module | None = None
        self._handle: Any = None
        self._arm_step = 0
        self._pending: list[_Sample] = []

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def bind(self, ctx: StepContext) -> None:
        self._model = ctx.model
        self._arm(0)

    def _arm(self, step: int) -> None:
        if self._model is None or self._handle is not None:
            return
        self._arm_step = step
        self._handle = self._model.register_forward_hook(self._hook)

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def close(self) -> None:
        self._disarm()

    # -- hot path -------------------------------------------------------------------------------
    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return  # validation / inference: not the forward the training loss reads
        self._disarm()
        y = _output_tensor(output)
        if y is None or y.ndim == 0 or y.numel() == 0 or not y.is_floating_point():
            return
        units = int(y.shape[-1]) if y.ndim >= 2 else 1
        with torch.no_grad():
            f = y.detach().float()
            rows = f.reshape(-1, units).sum(-1)
            stats = torch.stack([f.min(), f.max(), (rows - 1.0).abs().max()])
        self._pending.append(_Sample(self._arm_step, stats, units, last_op(y)))

    def _sampled(self, step: int) -> _Sample | None:
        """This step's sample, when it was sampled and has no targets yet."""
        if self._pending and self._pending[-1].step == step and self._pending[-1].targets is None:
            return self._pending[-1]
        return None

    def _record_targets(self, sample: _Sample, targets: Any, source: str) -> None:
        if not isinstance(targets, torch.Tensor) or not targets.is_floating_point():
            return
        if targets.numel() == 0:
            return
        units = int(targets.shape[-1]) if targets.ndim >= 2 else 1
        with torch.no_grad():
            t = targets.detach().float()
            row_sum = t.reshape(-1, units).sum(-1).max()
            sample.targets = torch.stack([t.min(), t.max(), row_sum])
        sample.target_units, sample.target_source = units, source

    def record_batch(self, step: int, batch: Any) -> None:
        """``guard.step(..., batch=(inputs, targets))``: the targets of a sampled step."""
        sample = self._sampled(step)
        if sample is None or not isinstance(batch, (tuple, list)) or len(batch) < 2:
            return
        self._record_targets(sample, batch[1], "batch")

    def on_loss(
        self, step: int, loss: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor | None
    ) -> None:
        sample = self._sampled(step)
        if sample is not None and targets is not None:
            self._record_targets(sample, targets, "targets")
        self._disarm()  # a sampled step that ran no training forward samples nothing
        if (step + 1) % self.every == 0:
            self._arm(step + 1)

    # -- flush ----------------------------------------------------------------------------------
    def collect(self) -> Packet:
        if not self._pending:
            return Packet()
        tensors: dict[str, torch.Tensor] = {}
        meta: list[dict[str, Any]] = []
        for k, s in enumerate(self._pending):
            entry: dict[str, Any] = {"step": s.step, "units": s.units, "op": s.op}
            tensors[f"{k}.out"] = s.stats
            if s.targets is not None:
                tensors[f"{k}.targets"] = s.targets
                entry["target_units"], entry["target_source"] = s.target_units, s.target_source
            meta.append(entry)
        self._pending = []
        return Packet(tensors=tensors, host={"samples": meta})

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, entry in enumerate(host.get("samples", [])):
            values = host.get(f"{k}.out")
            if values is not None:
                lo, hi, row_err = (float(v) for v in values)
                scale = max(1.0, abs(lo), abs(hi))
                out["output_stats"] = {
                    "units": int(entry["units"]),
                    "min": lo,
                    "max": hi,
                    "row_sum_error": row_err,
                    "probability_rows": bool(
                        lo >= -ROW_SUM_TOLERANCE and row_err <= ROW_SUM_TOLERANCE
                    ),
                    "constant": bool(hi - lo <= CONSTANT_TOLERANCE * scale),
                    "last_op": str(entry["op"]),
                    "step": int(entry["step"]),
                }
            targets = host.get(f"{k}.targets")
            if targets is not None:
                t_lo, t_hi, t_row = (float(v) for v in targets)
                out["target_stats"] = {
                    "min": t_lo,
                    "max": t_hi,
                    "units": int(entry["target_units"]),
                    "row_sum_max": t_row,
                    "source": str(entry["target_source"]),
                    "step": int(entry["step"]),
                }
        return out
