"""The Keras side of unstuck's state: reading a batch's loss back from Keras's running mean,
copying a model's weights and optimizer variables into a snapshot and back, and the LR
multiplier over a Keras LR variable. ``unstuck.integrations.keras`` re-exports these.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from unstuck.rescue import LRMultiplier, Snapshot

__all__ = [
    "KerasLR",
    "batch_loss_from_running_mean",
    "import_keras",
    "keras_snapshot",
    "numpy_of",
    "restore_keras_snapshot",
    "scalar",
]


def import_keras() -> Any:
    try:
        module = importlib.import_module("keras")
    except ImportError as exc:
        try:
            installed = importlib.util.find_spec("keras") is not None
        except (ImportError, ValueError):
            installed = True
        if not installed:
            raise ImportError(
                "unstuck.integrations.keras needs Keras 3: pip install 'unstuck[keras]'"
            ) from exc
        raise ImportError(
            f"unstuck.integrations.keras: keras is installed but failed to import ({exc}); "
            "Keras 3 loads the backend named by KERAS_BACKEND (tensorflow when unset): set "
            "KERAS_BACKEND=torch (or jax) before keras is first imported, or install that backend"
        ) from exc
    major = str(getattr(module, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 3:
        raise ImportError(
            f"unstuck.integrations.keras needs Keras 3, found keras {module.__version__}: "
            "pip install 'unstuck[keras]'"
        )
    return module


keras = import_keras()


# ----------------------------------------------------------------------------- the maths


def batch_loss_from_running_mean(
    mean: float, weight: float, previous_mean: float, previous_weight: float
) -> float:
    """The loss of the latest batch from two consecutive running means.

    ``mean`` is the running mean over ``weight`` samples (or batches) and ``previous_mean`` the
    one over ``previous_weight`` (0 at the start of an epoch); with equal batches this is
    ``k·m_k − (k−1)·m_{k−1}``. A non-finite result is ``nan``: a data point, not an error.

    >>> batch_loss_from_running_mean(2.0, 2, 3.0, 1)
    1.0
    """
    new = weight - previous_weight
    if not new > 0:
        return math.nan
    value = (weight * mean - previous_weight * previous_mean) / new
    return value if math.isfinite(value) else math.nan


# ----------------------------------------------------------------------------- snapshots


def numpy_of(value: Any) -> np.ndarray:
    """A host copy of a backend tensor (torch tensors directly: numpy 2 warns on the generic
    path, and this runs on the batch path)."""
    if isinstance(value, torch.Tensor):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(keras.ops.convert_to_numpy(value))


def scalar(value: Any) -> float:
    """One number to the host (``.item()`` on torch: the cheapest read, on the batch path)."""
    if isinstance(value, torch.Tensor):
        return float(value.item())
    return float(numpy_of(value))


def _pack(value: Any) -> Any:
    """A copy of one variable's value that shares nothing with it: a tensor when possible."""
    if isinstance(value, torch.Tensor):  # the torch backend: exact, any dtype, same device
        return value.detach().clone()
    array = np.array(numpy_of(value), copy=True)
    try:
        return torch.from_numpy(array)
    except TypeError:  # a dtype torch lacks (ml_dtypes' bfloat16 on jax): keep the raw bytes
        return {
            "raw": torch.from_numpy(array.reshape(-1).view(np.uint8).copy()),
            "dtype": str(array.dtype),
            "shape": list(array.shape),
        }


def _unpack(packed: Any) -> Any:
    if isinstance(packed, dict):
        raw = packed["raw"].numpy()
        return raw.view(np.dtype(packed["dtype"])).reshape(packed["shape"]).copy()
    if keras.backend.backend() == "torch":
        return packed
    return packed.numpy()


def keras_snapshot(model: Any, step: int = 0, extra: Mapping[str, Any] | None = None) -> Snapshot:
    """Copy every weight of ``model`` (trainable and not: BatchNorm statistics too) and every
    variable of its optimizer (iteration count, LR variable, moments, a loss-scale optimizer's
    scale), in a :class:`~unstuck.rescue.Snapshot` the engine's store can hold and spill."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError("keras_snapshot: the model has no optimizer; compile it first")
    return Snapshot(
        step=int(step),
        model={"weights": [_pack(v.value) for v in model.weights]},
        optimizer={"variables": [_pack(v.value) for v in optimizer.variables]},
        extra=dict(extra or {}),
    )


def restore_keras_snapshot(model: Any, snapshot: Snapshot) -> None:
    """Put the weights and optimizer variables of ``snapshot`` back into ``model``, bit for bit
    (into the same variables: the optimizer and every layer keep their references)."""
    weights = list(model.weights)
    variables = list(model.optimizer.variables)
    saved_weights = snapshot.model["weights"]
    saved_variables = snapshot.optimizer["variables"]
    if len(weights) != len(saved_weights) or len(variables) != len(saved_variables):
        raise ValueError(
            f"restore_keras_snapshot: the model has {len(weights)} weights and its optimizer "
            f"{len(variables)} variables, the snapshot {len(saved_weights)} and "
            f"{len(saved_variables)}; it was taken from another model"
        )
    for variable, value in zip([*weights, *variables], [*saved_weights, *saved_variables]):
        variable.assign(_unpack(value))


# ----------------------------------------------------------------------------- the LR


class KerasLR(LRMultiplier):
    """unstuck's LR multiplier over a Keras optimizer's LR variable.

    The callback calls :meth:`before_batch` (the variable becomes ``user LR × factor``, on the
    device, no host read) and :meth:`after_batch` (the user's own value goes back, a running
    shape advances), where :class:`~unstuck.rescue.LRMultiplier` uses torch optimizer hooks.
    With ``variable=None`` (a schedule under ``policy="observe"``) it never touches anything.
    """

    def __init__(self, variable: Any) -> None:  # no torch hooks: the callback drives it
        self.variable = variable
        self.value = 1.0
        self.shape: dict[str, Any] | None = None
        self._saved: Any = None
        self._handles = []

    def before_batch(self) -> None:
        factor = self.current()
        if factor == 1.0 or self.variable is None:
            return
        value = self.variable.value
        if isinstance(value, torch.Tensor):  # the torch backend: in place, a few microseconds
            with torch.no_grad():
                self._saved = value.detach().clone()
                value.mul_(factor)
            return
        self._saved = keras.ops.copy(value)
        self.variable.assign(keras.ops.multiply(self._saved, factor))

    def after_batch(self) -> None:
        self.advance_shape()
        if self._saved is None:
            return
        value = self.variable.value
        if isinstance(value, torch.Tensor):
            with torch.no_grad():
                value.copy_(self._saved)
        else:
            self.variable.assign(self._saved)
        self._saved = None

    def effective_lrs(self) -> list[float]:
        if self.variable is None:
            return []
        return [scalar(self.variable.value) * self.current()]

    def close(self) -> None:
        self._handles = []
