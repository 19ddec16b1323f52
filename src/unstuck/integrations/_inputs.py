"""What the Guard's calls take, checked and converted: losses, validation values, batches, and
the arguments of its constructor.

Each refusal is one line that says what to pass instead; numbers stay on the host, tensors on
their device (converting a tensor here would be a host sync per step).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "LossLike",
    "brief",
    "check_guard_options",
    "check_type",
    "clone_batch",
    "component_tensors",
    "host_number",
    "loss_tensor",
    "not_a_number",
    "step_inputs",
    "validation_value",
    "whole",
]

# What guard.step and guard.validate take as a loss (also other libraries' scalars, via float()).
LossLike = torch.Tensor | float | np.number[Any] | np.ndarray[Any, Any]


def check_type(name: str, value: Any, expected: type, hint: str) -> None:
    if not isinstance(value, expected):
        raise TypeError(
            f"Guard: {name} must be a {expected.__name__}, got {type(value).__name__}; {hint}"
        )


def whole(name: str, value: Any, least: int, what: str) -> int:
    """An int argument (a numpy integer too) of at least ``least``: NaN, inf, floats and text
    are refused here, in one line, instead of misbehaving at the first decision."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"Guard: {name} must be an int >= {least} ({what}), got {brief(value)} "
            f"({type(value).__name__}); pass a whole number such as {name}={max(least, 1) * 50}"
        )
    if value < least:
        raise ValueError(f"Guard: {name} must be an int >= {least} ({what}), got {value}")
    return int(value)


def not_a_number(value: Any) -> bool:
    """Text, booleans and bool arrays are never a loss, though ``float()`` takes them."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (dtype == torch.bool or dtype == np.bool_)


def host_number(value: Any) -> float | None:
    """A Python/numpy number or 0-d array as a float (no tensor: those stay on the device)."""
    if not_a_number(value) or isinstance(value, torch.Tensor):
        return None
    if isinstance(value, np.ndarray):
        return float(value) if value.ndim == 0 and value.dtype.kind in "iuf" else None
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return None  # float() would drop the imaginary part, or refuse
    if isinstance(value, numbers.Real) or hasattr(type(value), "__float__"):
        try:  # Python and numpy scalars; other libraries' scalars through __float__
            return float(value)
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def loss_tensor(loss: Any) -> torch.Tensor:
    """``guard.step``'s loss as a tensor: tensors as they are, numbers and numpy arrays too."""
    if isinstance(loss, torch.Tensor) and loss.dtype != torch.bool:
        return loss
    number = host_number(loss)
    if number is not None:
        # The default dtype, as a Python float always became, unless that would turn a finite
        # number into inf (a false non-finite loss, and a rollback): then float64.
        if math.isfinite(number) and abs(number) > torch.finfo(torch.get_default_dtype()).max:
            return torch.tensor(number, dtype=torch.float64)
        return torch.tensor(number)
    if isinstance(loss, np.ndarray) and not not_a_number(loss) and loss.dtype.kind in "iuf":
        dtype = torch.get_default_dtype()
        if loss.dtype.itemsize > torch.finfo(dtype).bits // 8 and loss.size:
            finite = loss[np.isfinite(loss)]
            if finite.size and float(np.max(np.abs(finite))) > torch.finfo(dtype).max:
                dtype = torch.float64  # host numbers: checking them costs no device sync
        return torch.as_tensor(loss, dtype=dtype)  # per-sample losses
    raise TypeError(
        f"guard.step(loss) needs the loss as a tensor or a number, got {type(loss).__name__} "
        f"{brief(loss)}; pass the loss tensor itself"
    )


def validation_value(val_loss: Any) -> float:
    """``guard.validate``'s loss as a float: the same numbers ``guard.step`` takes, averaged."""
    if isinstance(val_loss, torch.Tensor) and not (not_a_number(val_loss) or val_loss.is_complex()):
        t = val_loss.detach()
        if not t.is_floating_point() or t.element_size() < 4:
            t = t.float()  # integers and 16-bit floats average in float32; float64 stays float64
        return float(t.mean())
    number = host_number(val_loss)
    if number is not None:
        return number
    if isinstance(val_loss, np.ndarray) and val_loss.dtype.kind in "iuf" and val_loss.size:
        return float(np.mean(val_loss, dtype=np.float64))
    raise TypeError(
        "Guard.validate: pass the validation loss as a number or a tensor, got "
        f"{type(val_loss).__name__} {brief(val_loss)}; pass the loss tensor or float(val_loss)"
    )


def brief(value: Any) -> str:
    """A value's repr on one short line, for an error message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:39] + "…"


def clone_batch(batch: Any) -> Any:
    """A detached copy of a (nested) batch, so later in-place edits by the loader do not leak."""
    if isinstance(batch, torch.Tensor):
        return batch.detach().clone()
    if isinstance(batch, (list, tuple)):
        return type(batch)(clone_batch(b) for b in batch)
    if isinstance(batch, Mapping):
        return {k: clone_batch(v) for k, v in batch.items()}
    return batch


def component_tensors(components: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in components.items():
        number = host_number(value)
        if number is not None:
            out[str(name)] = torch.tensor(number)
        elif isinstance(value, torch.Tensor) and not not_a_number(value):
            if value.numel() != 1:
                raise ValueError(
                    f"guard.step: component {name!r} has shape {tuple(value.shape)}; pass one "
                    "scalar per loss term"
                )
            out[str(name)] = value.detach().reshape(())
        else:
            raise TypeError(
                f"guard.step: component {name!r} must be a tensor or a number, "
                f"got {type(value).__name__}"
            )
    return out


def check_guard_options(
    *,
    flush_every: Any,
    dataset_size: Any,
    loss_fn: Any,
    probe_fn: Any,
    curvature_hvps: Any,
    horizon: Any,
    cooldown: Any,
    probe_budget: Any,
    snapshot_memory: Any,
    probe_batches: Any,
) -> tuple[int, int]:
    """Refuse a bad Guard argument in one line, before the store opens and hooks are added.
    Returns ``horizon`` and ``cooldown`` as ints (numpy integers are taken)."""
    if not isinstance(flush_every, int) or flush_every < 1:
        raise ValueError(f"Guard: flush_every must be a positive int, got {flush_every!r}")
    if dataset_size is not None and (not isinstance(dataset_size, int) or dataset_size < 1):
        raise ValueError(f"Guard: dataset_size must be a positive int, got {dataset_size!r}")
    if probe_fn is not None and not callable(probe_fn):
        raise TypeError("Guard: probe_fn must be callable as probe_fn(model) -> loss")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError("Guard: loss_fn must be callable as loss_fn(outputs, targets)")
    if not isinstance(curvature_hvps, int) or curvature_hvps < 2:
        raise ValueError(f"Guard: curvature_hvps must be an int >= 2, got {curvature_hvps!r}")
    horizon = whole("horizon", horizon, 1, "steps an action runs before it is judged")
    cooldown = whole("cooldown", cooldown, 0, "steps after a kept action before the next")
    if not (isinstance(probe_budget, (int, float)) and 0 <= probe_budget <= 1):
        raise ValueError(f"Guard: probe_budget must be a share in [0, 1], got {probe_budget!r}")
    if not isinstance(snapshot_memory, int) or snapshot_memory < 0:
        raise ValueError(
            f"Guard: snapshot_memory must be a number of bytes >= 0, got {snapshot_memory!r}"
        )
    if not isinstance(probe_batches, int) or probe_batches < 1:
        raise ValueError(f"Guard: probe_batches must be an int >= 1, got {probe_batches!r}")
    return horizon, cooldown


def step_inputs(
    loss: Any, ids: Any, targets: Any
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``guard.step``'s arguments as tensors: the scalar loss as it is (no copy, no sync), or
    per-sample losses flattened with one id (and one target) per sample."""
    loss = loss_tensor(loss).detach()
    if loss.ndim == 0:
        return loss, ids, targets  # the usual scalar loss: a view would cost ~1 µs per step
    if loss.numel() == 1:
        return loss.reshape(()), ids, targets
    if ids is None:
        raise ValueError(
            f"guard.step got a loss of shape {tuple(loss.shape)}: pass the scalar loss, or "
            "per-sample losses (loss_fn(..., reduction='none')) with ids=<dataset indices> "
            "and optionally targets=<labels>"
        )
    loss = loss.reshape(-1)
    ids = _per_sample("ids", ids, loss)
    if targets is not None:
        targets = _per_sample("targets", targets, loss)
    return loss, ids, targets


def _per_sample(name: str, value: Any, loss: torch.Tensor) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    tensor = tensor.detach().reshape(-1)
    if tensor.numel() != loss.numel():
        raise ValueError(
            f"guard.step: {name} has {tensor.numel()} entries but the loss has "
            f"{loss.numel()}; pass one {name[:-1]} per sample"
        )
    return tensor
