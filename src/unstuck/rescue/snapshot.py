"""Full-state snapshots: everything that decides the next step, restorable bit for bit.

Model parameters and buffers, optimizer state (moments, step counts, param-group LRs), the
scheduler, a GradScaler, and the RNG states of torch (CPU and every CUDA device), numpy and
Python. Kept in memory; the snapshot is a dict of tensors and primitives, so
``torch.save``/``torch.load(weights_only=True)`` can hold it too.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Snapshot", "capture_rng", "restore_rng", "restore_snapshot", "take_snapshot"]


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(v) for v in obj)
    return copy.deepcopy(obj)


def capture_rng() -> dict[str, Any]:
    """RNG states as tensors and primitives (numpy's and Python's tuples become lists)."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True always returns the tuple form
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [int(py_version), list(py_internal), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Snapshot:
    """What :func:`take_snapshot` captured, at Guard step ``step``."""

    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes held by the snapshot's tensors."""
        total = 0

        def visit(obj: Any) -> None:
            nonlocal total
            if isinstance(obj, torch.Tensor):
                total += obj.numel() * obj.element_size()
            elif isinstance(obj, dict):
                for v in obj.values():
                    visit(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    visit(v)

        visit([self.model, self.optimizer, self.scheduler, self.scaler])
        return total


def take_snapshot(
    step: int,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scaler: Any = None,
    extra: dict[str, Any] | None = None,
) -> Snapshot:
    """Copy everything that decides the next step (no references into live state remain)."""
    return Snapshot(
        step=step,
        model=_clone(model.state_dict()) if model is not None else {},
        optimizer=_clone(optimizer.state_dict()),
        scheduler=_clone(scheduler.state_dict()) if scheduler is not None else None,
        scaler=_clone(scaler.state_dict()) if scaler is not None else None,
        rng=capture_rng(),
        extra=_clone(extra or {}),
    )


def restore_snapshot(
    snap: Snapshot,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scaler: Any = None,
) -> None:
    """Put the live objects back exactly as they were when ``snap`` was taken.

    Parameters are copied in place (their identity, which the optimizer and hooks hold, stays).
    """
    if model is not None:
        model.load_state_dict(_clone(snap.model))
    optimizer.load_state_dict(_clone(snap.optimizer))
    if scheduler is not None and snap.scheduler is not None:
        scheduler.load_state_dict(_clone(snap.scheduler))
    if scaler is not None and snap.scaler is not None:
        scaler.load_state_dict(_clone(snap.scaler))
    if snap.rng:
        restore_rng(snap.rng)
