"""Activation statistics from forward hooks armed on sampled steps only.

The hooks are registered at the end of the Guard step *before* a sampled step (``on_loss`` knows
the step index; the first forward, step 0, is armed at ``bind``) and removed as soon as that
sampled forward has run, so every other step runs the bare model. Forward hooks only (no full
backward hooks), so ``nn.ReLU(inplace=True)`` works (REFERENCE.md §5, pytorch#61519). Forwards
run with gradients disabled (validation, inference) are not sampled.

Everything is measured on the device and crosses to the host at the flush. Only modules can be
hooked: ``F.relu`` / ``torch.sigmoid`` in a ``forward`` are not seen, and the rules that read
these signals stay silent when a model has no such module.

Evidence (docs/signals.md):

* ``act_dead_fraction`` — series: the worst ReLU/ReLU6 layer's share of units with no positive
  output on any sample over the last :data:`DEAD_WINDOW` sampled batches (units: dim 1 of
  ``(N, C, ...)``, the last dim of ``(N, T, C)`` after a Linear/attention/recurrent layer);
  ``act_dead_overall`` the same over all units; ``act_dead_layers`` the latest per layer;
  ``act_dead_observations`` how many outputs per unit the worst layer's window holds (samples ×
  positions summed over the window's batches): a window of a few samples decides nothing.
* ``act_saturation`` — series: the worst Sigmoid/Tanh layer's share of pre-activations (the
  module's input) beyond ±:data:`SATURATION_BOUND`; ``act_saturation_overall`` over all elements;
  ``act_saturation_layers`` the latest per layer. A Sigmoid/Tanh whose output is the model's
  output is left out (confident predictions saturate it by design).
* ``act_scale`` — ``{"layers", "latest", "latest_signal", "step", "first_layers", "first",
  "first_signal", "first_weight_scale", "first_step"}``: the std of the output of every
  Linear/Conv/recurrent/attention layer in forward order, and its signal std
  (:func:`signal_std`: across the batch, RMS over units), at the latest sampled forward and at
  the first one; at the first, each layer's weight RMS over torch's default init's
  (:func:`default_init_scale`).
* ``input_stats`` — the first floating-point tensor handed to the model: ``mean``, ``std``,
  ``rms``, ``max_abs``, ``feature_std_min``, ``feature_std_max``, ``feature_rms_max``,
  ``features``, ``batch_size`` (leading dim) and ``step``. Integer inputs (token ids) are skipped.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from unstuck.signals.base import CostTier, Packet, StepContext, Tap, local_shard
from unstuck.signals.host import SATURATION_BOUND, Series

__all__ = ["DEAD_WINDOW", "SATURATION_BOUND", "ActivationTap"]

DEAD_WINDOW = 4  # sampled batches a unit must stay silent over to count as dead ("over a window")

_RELU = (nn.ReLU, nn.ReLU6)
_SATURATING = (nn.Sigmoid, nn.Tanh)
_SCALE = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.RNNBase, nn.MultiheadAttention)
_LAST_DIM = (nn.Linear, nn.Bilinear, nn.RNNBase, nn.MultiheadAttention)  # act on the last dim
_INPUT_FIELDS = (
    "mean",
    "std",
    "rms",
    "max_abs",
    "feature_std_min",
    "feature_std_max",
    "feature_rms_max",
)


@dataclass
class _Sample:
    """What one sampled forward measured, on the device."""

    step: int
    dead: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> alive units (bool)
    dead_obs: dict[str, int] = field(default_factory=dict)  # layer -> outputs per unit in window
    saturation: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)
    scale: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> output std
    inputs: torch.Tensor | None = None
    batch_size: int = 0
    features: int = 0
    calls: dict[int, int] = field(default_factory=dict)  # id(module) -> calls in this forward
    last_last_dim: bool = False  # the latest scale layer acts on the last dim (Linear, ...)
    last_saturating: tuple[str, torch.Tensor] | None = None
    output_layer: str | None = None


def signal_std(y: torch.Tensor) -> torch.Tensor:
    """How much a layer's output varies from sample to sample: the RMS over its units of the
    std across the batch (dim 0). The input-dependent part, which He et al. 2015's variance
    argument is about: a net whose weights are tiny passes on only its biases, whose spread
    across units a plain std would count as signal. A batch of one falls back to the std."""
    if y.ndim < 2 or y.shape[0] < 2:
        return y.std()
    return y.var(0, unbiased=False).mean().sqrt()


def default_init_scale(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """The RMS of a layer's weight over that of torch's default initialisation
    (``kaiming_uniform_(a=sqrt(5))``: std 1/sqrt(3·fan_in)); 1 for a default-initialised layer,
    NaN for a layer without a ``weight`` of 2 or more dims (recurrent, attention). On the
    device and in the dtype of ``like``."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2 or weight.numel() == 0:
        return like.new_tensor(float("nan"))
    with torch.no_grad():
        # This rank's shard under FSDP2 (sharded along dim 0: a row keeps the whole fan-in); the
        # RMS of a shard of a uniform draw is the draw's.
        w = local_shard(weight.detach()).float()
        if w.numel() == 0:
            return like.new_tensor(float("nan"))
        fan_in = w[0].numel()
        scale: torch.Tensor = w.pow(2).mean().sqrt() * math.sqrt(3.0 * fan_in)
        return scale.to(like)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    data = getattr(value, "data", None)  # PackedSequence
    return data if isinstance(data, torch.Tensor) else None


def _first_float(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        candidates = value.values() if isinstance(value, dict) else (value,)
        for item in candidates:
            t = _first_tensor(item) if not isinstance(item, dict) else None
            if t is not None and t.is_floating_point() and t.ndim >= 1 and t.numel() > 0:
                return t
    return None


class ActivationTap(Tap):
    """Dead ReLU units, saturated sigmoid/tanh pre-activations, per-layer scale, input stats."""

    name: ClassVar[str] = "activations"
    tier: ClassVar[CostTier] = "sampled"
    provides: ClassVar[frozenset[str]] = frozenset(
        {
            "act_dead_fraction",
            "act_dead_overall",
            "act_dead_observations",
            "act_dead_layers",
            "act_saturation",
            "act_saturation_overall",
            "act_saturation_layers",
            "act_scale",
            "input_stats",
        }
    )

    def __init__(self, every: int = 32) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"activation_every must be a positive int, got {every!r}")
        self.every = every
        self._model: nn.Module | None = None
        self._names: dict[int, str] = {}
        self._handles: list[Any] = []
        self._arm_step = 0
        self._current: _Sample | None = None
        self._pending: list[_Sample] = []
        self._windows: dict[str, deque[torch.Tensor]] = {}
        self._obs_windows: dict[str, deque[int]] = {}  # outputs per unit of each window batch
        self._first_scale: dict[str, Any] | None = None  # the first sampled forward's scales

    # -- arming -------------------------------------------------------------------------------
    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def bind(self, ctx: StepContext) -> None:
        self._model = ctx.model
        if self._model is None:
            return
        self._names = {id(m): (n or "model") for n, m in self._model.named_modules()}
        self._arm(0)

    def _arm(self, step: int) -> None:
        model = self._model
        if model is None or self._handles:
            return
        self._arm_step = step
        handles = [
            model.register_forward_pre_hook(self._input_hook, with_kwargs=True),
            model.register_forward_hook(self._end_hook),
        ]
        for module in model.modules():
            if isinstance(module, _RELU):
                handles.append(module.register_forward_hook(self._relu_hook))
            elif isinstance(module, _SATURATING):
                handles.append(module.register_forward_hook(self._saturation_hook))
            elif isinstance(module, _SCALE):
                handles.append(module.register_forward_hook(self._scale_hook))
        self._handles = handles

    def close(self) -> None:
        """Remove any armed hooks (SignalHub.close calls this when the Guard closes)."""
        self._disarm()
        self._current = None

    def _disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _finalize(self) -> None:
        """Close the sampled forward: update the dead-unit windows, queue the sample, disarm."""
        self._disarm()
        sample, self._current = self._current, None
        if sample is None:
            return
        with torch.no_grad():
            for key, alive in list(sample.dead.items()):
                window = self._windows.setdefault(key, deque(maxlen=DEAD_WINDOW))
                observed = self._obs_windows.setdefault(key, deque(maxlen=DEAD_WINDOW))
                if window and window[-1].shape != alive.shape:
                    window.clear()  # the layer changed width: start the window afresh
                    observed.clear()
                window.append(alive)
                observed.append(sample.dead_obs.get(key, 0))
                sample.dead[key] = torch.stack(list(window)).any(0)
                sample.dead_obs[key] = sum(observed)
        if sample.output_layer is not None:
            sample.saturation.pop(sample.output_layer, None)
        sample.calls = {}
        sample.last_saturating = None
        self._pending.append(sample)

    # -- hot path -----------------------------------------------------------------------------
    def on_loss(
        self, step: int, loss: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor | None
    ) -> None:
        if self._handles or self._current is not None:
            self._finalize()
        if (step + 1) % self.every == 0:
            self._arm(step + 1)

    # -- hooks (run only during a sampled forward) ----------------------------------------------
    def _sample(self) -> _Sample | None:
        if not torch.is_grad_enabled():
            return None  # validation / inference forward: not a training sample
        if self._current is None:
            self._current = _Sample(step=self._arm_step)
        return self._current

    def _key(self, sample: _Sample, module: nn.Module) -> str:
        k = sample.calls.get(id(module), 0)
        sample.calls[id(module)] = k + 1
        name = self._names.get(id(module), type(module).__name__)
        return name if k == 0 else f"{name}#{k}"

    def _input_hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        sample = self._sample()
        if sample is None or sample.inputs is not None:
            return
        x = _first_float(tuple(args), dict(kwargs))
        if x is None:
            return
        with torch.no_grad():
            x = x.detach().float()
            fdim = x.ndim - 1 if x.ndim == 3 else min(1, x.ndim - 1)
            flat = x.movedim(fdim, -1).reshape(-1, x.shape[fdim]) if x.ndim > 1 else x[:, None]
            feature_std = flat.std(0, unbiased=False)
            feature_rms = flat.square().mean(0).sqrt()
            sample.inputs = torch.stack(
                [
                    x.mean(),
                    x.std(unbiased=False),
                    x.square().mean().sqrt(),
                    x.abs().max(),
                    feature_std.min(),
                    feature_std.max(),
                    feature_rms.max(),
                ]
            )
        sample.batch_size = int(x.shape[0])
        sample.features = int(flat.shape[1])

    def _relu_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        sample = self._sample()
        y = _first_tensor(output)
        if sample is None or y is None or y.ndim < 2:
            return
        key = self._key(sample, module)
        unit_dim = y.ndim - 1 if (y.ndim == 3 and sample.last_last_dim) else 1
        with torch.no_grad():
            positive = y.detach() > 0
            sample.dead[key] = positive.movedim(unit_dim, 0).reshape(y.shape[unit_dim], -1).any(1)
        sample.dead_obs[key] = y.numel() // max(y.shape[unit_dim], 1)  # a shape: no sync

    def _saturation_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        sample = self._sample()
        x = _first_tensor(args)
        if sample is None or x is None or x.numel() == 0:
            return
        key = self._key(sample, module)
        with torch.no_grad():
            share = (x.detach().abs() > SATURATION_BOUND).float().mean()
        sample.saturation[key] = (share, x.numel())
        y = _first_tensor(output)
        sample.last_saturating = (key, y) if y is not None else None

    def _scale_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        sample = self._sample()
        y = _first_tensor(output)
        if sample is None or y is None:
            return
        key = self._key(sample, module)
        sample.last_last_dim = isinstance(module, _LAST_DIM)
        if y.numel() < 2 or not y.is_floating_point():
            return
        with torch.no_grad():
            y = y.detach().float()
            # The weight scale is kept from the first sampled forward only: once that is on
            # the host, later forwards skip the pass over the weights.
            if self._first_scale is None:
                weights = default_init_scale(module, y)
            else:
                weights = y.new_tensor(float("nan"))
            sample.scale[key] = torch.stack([y.std(), signal_std(y), weights])

    def _end_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        sample = self._sample()
        if sample is None:
            return
        last = sample.last_saturating
        if last is not None and _first_tensor(output) is last[1]:
            sample.output_layer = last[0]
        self._finalize()

    # -- flush --------------------------------------------------------------------------------
    def collect(self) -> Packet:
        if not self._pending:
            return Packet()
        tensors: dict[str, torch.Tensor] = {}
        meta: list[dict[str, Any]] = []
        for k, s in enumerate(self._pending):
            entry: dict[str, Any] = {"step": s.step}
            if s.dead:
                entry["dead"] = [(key, int(v.numel())) for key, v in s.dead.items()]
                entry["dead_obs"] = [int(s.dead_obs.get(key, 0)) for key in s.dead]
                tensors[f"{k}.dead"] = torch.stack([(~v).float().mean() for v in s.dead.values()])
            if s.saturation:
                entry["saturation"] = [(key, n) for key, (_, n) in s.saturation.items()]
                tensors[f"{k}.saturation"] = torch.stack([v for v, _ in s.saturation.values()])
            if s.scale:
                entry["scale"] = list(s.scale)
                tensors[f"{k}.scale"] = torch.stack(list(s.scale.values()))
            if s.inputs is not None:
                entry["batch_size"], entry["features"] = s.batch_size, s.features
                tensors[f"{k}.inputs"] = s.inputs
            meta.append(entry)
        self._pending = []
        return Packet(tensors=tensors, host={"samples": meta})

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        samples: list[dict[str, Any]] = host.get("samples", [])
        out: dict[str, Any] = {}
        dead_steps: list[int] = []
        dead_worst: list[float] = []
        dead_all: list[float] = []
        dead_obs: list[float] = []
        sat_steps: list[int] = []
        sat_worst: list[float] = []
        sat_all: list[float] = []
        for k, entry in enumerate(samples):
            step = int(entry["step"])
            if f"{k}.dead" in host:
                fractions = np.asarray(host[f"{k}.dead"], dtype=np.float64)
                units = np.asarray([n for _, n in entry["dead"]], dtype=np.float64)
                dead_steps.append(step)
                dead_worst.append(float(fractions.max()))
                observed = entry.get("dead_obs")
                if isinstance(observed, list) and len(observed) == fractions.size:
                    dead_obs.append(float(observed[int(fractions.argmax())]))
                dead_all.append(float((fractions * units).sum() / units.sum()))
                out["act_dead_layers"] = {
                    key: float(v) for (key, _), v in zip(entry["dead"], fractions)
                }
            if f"{k}.saturation" in host:
                shares = np.asarray(host[f"{k}.saturation"], dtype=np.float64)
                sizes = np.asarray([n for _, n in entry["saturation"]], dtype=np.float64)
                sat_steps.append(step)
                sat_worst.append(float(shares.max()))
                sat_all.append(float((shares * sizes).sum() / sizes.sum()))
                out["act_saturation_layers"] = {
                    key: float(v) for (key, _), v in zip(entry["saturation"], shares)
                }
            if f"{k}.scale" in host:
                layers = list(entry["scale"])
                rows = np.asarray(host[f"{k}.scale"], dtype=np.float64).reshape(-1, 3)
                values = [float(v) for v in rows[:, 0]]
                signal = [float(v) for v in rows[:, 1]]
                if self._first_scale is None:
                    self._first_scale = {
                        "layers": layers,
                        "values": values,
                        "signal": signal,
                        "weight_scale": [float(v) for v in rows[:, 2]],
                        "step": step,
                    }
                first = self._first_scale
                out["act_scale"] = {
                    "layers": layers,
                    "first": list(first["values"]),
                    "first_signal": list(first.get("signal", [])),
                    "first_weight_scale": list(first.get("weight_scale", [])),
                    "first_layers": list(first["layers"]),
                    "first_step": int(first["step"]),
                    "latest": values,
                    "latest_signal": signal,
                    "step": step,
                }
            if f"{k}.inputs" in host:
                stats = dict(zip(_INPUT_FIELDS, (float(v) for v in host[f"{k}.inputs"])))
                stats.update(
                    batch_size=int(entry["batch_size"]), features=int(entry["features"]), step=step
                )
                out["input_stats"] = stats
        if dead_steps:
            out["act_dead_fraction"] = Series(dead_steps, dead_worst)
            out["act_dead_overall"] = Series(dead_steps, dead_all)
            if len(dead_obs) == len(dead_steps):
                out["act_dead_observations"] = Series(dead_steps, dead_obs)
        if sat_steps:
            out["act_saturation"] = Series(sat_steps, sat_worst)
            out["act_saturation_overall"] = Series(sat_steps, sat_all)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"first_scale": self._first_scale} if self._first_scale is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        first = state.get("first_scale")
        if isinstance(first, dict):
            self._first_scale = {
                "layers": [str(x) for x in first.get("layers", [])],
                "values": [float(x) for x in first.get("values", [])],
                "signal": [float(x) for x in first.get("signal", [])],
                "weight_scale": [float(x) for x in first.get("weight_scale", [])],
                "step": int(first.get("step", 0)),
            }
