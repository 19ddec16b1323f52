"""The Keras callback's taps, in ``keras.ops`` so they run on any backend.

The Guard's hub reads signals through torch optimizer hooks; a Keras callback sees only the
model's variables between batches. Two signals come from them, sampled at the Guard's cadence
and kept on the device until a flush reads them in one transfer: the parameter distance from
the start (hidden progress) every 16th batch, and the update/weight ratio every 32nd (with, on
the torch backend, the gradient norm of that batch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from unstuck.integrations._keras_support import keras, numpy_of
from unstuck.signals.host import Series
from unstuck.signals.sampling import DEFAULT_MAX_ELEMENTS

__all__ = ["KerasTaps"]

_TINY = 1e-12  # keeps the update ratio finite for all-zero weights (as UpdateRatioTap)


class KerasTaps:
    """Parameter distance and update ratios of a Keras model, sampled every ``distance_every``
    and ``ratio_every`` batches."""

    def __init__(self, distance_every: int, ratio_every: int) -> None:
        self.distance_every = distance_every
        self.ratio_every = ratio_every
        self.model: Any = None
        self._index: list[Any] = []  # per trainable variable: None (all) or sampled positions
        self._scale = 1.0
        self._reference: list[Any] = []
        self._distance_rows: list[Any] = []
        self._distance_steps: list[int] = []
        self._before_update: list[Any] | None = None
        self._ratio_rows: list[Any] = []
        self._ratio_steps: list[int] = []

    @property
    def anchored(self) -> bool:
        return bool(self._reference)

    def anchor(self, model: Any) -> float | None:
        """Keep θ₀ for the distance (a fixed subset past ``DEFAULT_MAX_ELEMENTS`` coordinates,
        as :class:`~unstuck.signals.sampling.CoordinateSample` does). Returns ‖θ₀‖, the scale
        hidden progress is measured against (``None`` for a model without weights)."""
        self.model = model
        variables = list(model.trainable_variables)
        sizes = [int(np.prod(v.shape)) for v in variables]
        total = sum(sizes)
        if total == 0:
            return None
        rng = np.random.default_rng(0)
        sampled = 0
        self._index = []
        for size in sizes:
            if total <= DEFAULT_MAX_ELEMENTS:
                self._index.append(None)
                sampled += size
                continue
            k = max(1, round(size * DEFAULT_MAX_ELEMENTS / total))
            chosen = np.sort(rng.choice(size, size=k, replace=False)).astype("int32")
            self._index.append(keras.ops.convert_to_tensor(chosen))
            sampled += k
        self._scale = math.sqrt(total / max(sampled, 1))
        self._reference = [keras.ops.copy(v) for v in self._view()]
        squares = keras.ops.stack([keras.ops.sum(keras.ops.square(r)) for r in self._reference])
        return math.sqrt(float(np.sum(numpy_of(squares)))) * self._scale

    def before_batch(self, batches: int) -> None:
        if batches % self.ratio_every == 0 and self._reference:
            self._before_update = [keras.ops.copy(v) for v in self._view()]

    def after_batch(self, step: int, batches: int) -> None:
        """``step``: the batch that just ran; ``batches``: how many have run, it included."""
        if self._before_update is not None:
            self._ratio_rows.append(self._update_norms(self._before_update))
            self._ratio_steps.append(step)
            self._before_update = None
        if batches % self.distance_every == 0 and self._reference:
            self._distance_rows.append(self._squared_distance())
            self._distance_steps.append(step)

    def take(self) -> dict[str, Series]:
        """The series sampled since the last call, read to the host in one transfer each."""
        out: dict[str, Series] = {}
        if self._distance_rows:
            squared = numpy_of(keras.ops.stack(self._distance_rows))
            values = [math.sqrt(max(float(s), 0.0)) * self._scale for s in squared]
            out["param_distance"] = Series(self._distance_steps, values)
        if self._ratio_rows:
            rows = numpy_of(keras.ops.stack(self._ratio_rows))
            rows = rows.astype(np.float64).reshape(-1, 3)
            ratios = np.sqrt(rows[:, 0]) / (np.sqrt(rows[:, 1]) + _TINY)
            out["update_ratio"] = Series(self._ratio_steps, ratios.tolist())
            grads = rows[:, 2]
            if np.all(grads >= 0) or not np.all(np.isfinite(grads)):
                out["grad_norm"] = Series(self._ratio_steps, np.sqrt(grads).tolist())
        self._distance_rows, self._distance_steps = [], []
        self._ratio_rows, self._ratio_steps = [], []
        return out

    def _view(self) -> list[Any]:
        ops = keras.ops
        out = []
        for variable, index in zip(self.model.trainable_variables, self._index):
            flat = ops.reshape(ops.cast(variable.value, "float32"), (-1,))
            out.append(flat if index is None else ops.take(flat, index))
        return out

    def _squared_distance(self) -> Any:
        ops = keras.ops
        return ops.sum(
            ops.stack([ops.sum(ops.square(v - r)) for v, r in zip(self._view(), self._reference)])
        )

    def _update_norms(self, before: list[Any]) -> Any:
        """``[‖Δθ‖², ‖θ‖², ‖g‖²]`` of the batch that just ran (‖g‖² is −1 off the torch
        backend, where the gradients are not visible to a callback)."""
        ops = keras.ops
        now = self._view()
        delta = ops.sum(ops.stack([ops.sum(ops.square(a - b)) for a, b in zip(now, before)]))
        weight = ops.sum(ops.stack([ops.sum(ops.square(b)) for b in before]))
        grad = ops.convert_to_tensor(-1.0)
        if keras.backend.backend() == "torch":
            # Keras's torch trainer leaves this batch's gradients in .grad until the next one.
            grads = [v.value.grad for v in self.model.trainable_variables]
            present = [g.detach().float().pow(2).sum() for g in grads if g is not None]
            if present:
                grad = torch.stack(present).sum()
        return ops.stack([delta, weight, ops.cast(grad, "float32")])
