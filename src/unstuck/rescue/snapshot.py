"""Full-state snapshots: everything that decides the next step, restorable bit for bit.

Model parameters and buffers, optimizer state (moments, step counts, param-group LRs), the
scheduler, a GradScaler, and the RNG states of torch (CPU and every CUDA device), numpy and
Python. Kept in memory; the snapshot is a dict of tensors and primitives, so
``torch.save``/``torch.load(weights_only=True)`` can hold it too.
"""

from __future__ import annotations

import copy
import logging
import os
import pathlib
import random
import tempfile
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from unstuck.signals.base import local_shard

__all__ = [
    "Snapshot",
    "SnapshotMismatchError",
    "SnapshotStore",
    "capture_rng",
    "restore_rng",
    "restore_snapshot",
    "take_snapshot",
]

logger = logging.getLogger("unstuck")


def _map_tensors(obj: Any, tensor_fn: Any, other_fn: Any) -> Any:
    """``obj`` with every tensor in its dicts/lists/tuples passed through ``tensor_fn``."""
    if isinstance(obj, torch.Tensor):
        return tensor_fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, tensor_fn, other_fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, tensor_fn, other_fn) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_map_tensors(v, tensor_fn, other_fn) for v in obj)
    return other_fn(obj)


def _clone(obj: Any) -> Any:
    """A deep copy that shares no storage with live state."""
    return _map_tensors(obj, lambda t: t.detach().clone(), copy.deepcopy)


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
        """Bytes this rank holds for the snapshot's tensors (its own shards under FSDP2)."""
        total = 0

        def visit(obj: Any) -> None:
            nonlocal total
            if isinstance(obj, torch.Tensor):
                # A sharded tensor (FSDP2's DTensor) holds only this rank's shard: count that.
                local = local_shard(obj)
                total += local.numel() * local.element_size()
            elif isinstance(obj, dict):
                for v in obj.values():
                    visit(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    visit(v)

        visit([self.model, self.optimizer, self.scheduler, self.scaler])
        return total

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (no copy): tensors and primitives, so an undo token or a
        checkpoint can hold it and ``torch.load(weights_only=True)`` reads it back."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        """The inverse of :meth:`to_dict`; unknown keys are ignored, missing optional ones
        take their defaults."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


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


class SnapshotMismatchError(RuntimeError):
    """The live model or optimizer no longer has the structure a snapshot was taken of."""


def _group_sizes(groups: list[dict[str, Any]]) -> list[int]:
    return [len(g["params"]) for g in groups]


def _fitted_optimizer_state(snap: Snapshot, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state to load for ``snap``: its own, plus any param groups the user added
    since (``add_param_group``, e.g. to unfreeze a layer), kept with their state cleared as
    when they were added. Anything else that changed the groups cannot be rolled back."""
    saved = snap.optimizer
    old = _group_sizes(saved.get("param_groups", []))
    live_groups = optimizer.param_groups
    live = _group_sizes(live_groups)
    if live[: len(old)] != old:
        raise SnapshotMismatchError(
            f"the optimizer's param groups changed since the snapshot of step {snap.step} "
            f"(parameters per group then {old}, now {live}); only groups added after it can be "
            "kept across a rollback"
        )
    if len(live) == len(old):
        same: dict[str, Any] = _clone(saved)
        return same
    current = optimizer.state_dict()  # references, not copies; only the added groups are used
    added = [dict(g) for g in current["param_groups"][len(old) :]]
    return {
        "state": _clone(saved["state"]),  # the added parameters start with no state
        "param_groups": _clone(saved["param_groups"]) + copy.deepcopy(added),
    }


def _check_model(snap: Snapshot, model: torch.nn.Module) -> None:
    live = model.state_dict()
    changed = sorted(set(live) ^ set(snap.model)) or [
        k
        for k, v in live.items()
        if isinstance(v, torch.Tensor)
        and isinstance(snap.model[k], torch.Tensor)
        and v.shape != snap.model[k].shape
    ]
    if changed:
        raise SnapshotMismatchError(
            f"the model's tensors changed since the snapshot of step {snap.step} "
            f"({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''})"
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
    A model or optimizer whose structure changed since raises :class:`SnapshotMismatchError` before
    anything is touched, so a refused restore leaves the run as it was.
    """
    if model is not None:
        _check_model(snap, model)
    in_place = _fits_in_place(snap.optimizer, optimizer)
    optimizer_state = None if in_place else _fitted_optimizer_state(snap, optimizer)
    if model is not None:
        # load_state_dict copies into the live tensors, so the snapshot needs no copy of its own
        # (a restore then holds the state once, not twice) and stays intact for the next one.
        model.load_state_dict(snap.model)
    if optimizer_state is None:
        _load_optimizer_in_place(snap.optimizer, optimizer)
    else:
        optimizer.load_state_dict(optimizer_state)
    if scheduler is not None and snap.scheduler is not None:
        scheduler.load_state_dict(_clone(snap.scheduler))
    if scaler is not None and snap.scaler is not None:
        scaler.load_state_dict(_clone(snap.scaler))
    if snap.rng:
        restore_rng(snap.rng)


def _fits_in_place(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> bool:
    """Whether every saved state tensor has a live twin of the same kind, shape, dtype and
    device, and the same parameters hold state now as then (the common case: a rollback a few
    hundred steps later). Then the state is copied into the live tensors instead of loaded as
    a fresh copy (``Optimizer.load_state_dict`` keeps what it is given, so it needs one)."""
    groups = saved.get("param_groups", [])
    if _group_sizes(groups) != [len(g["params"]) for g in optimizer.param_groups]:
        return False
    params = [p for g in optimizer.param_groups for p in g["params"]]
    old_state = saved.get("state", {})
    ids = [i for g in groups for i in g["params"]]
    for index, p in zip(ids, params):
        live, old = optimizer.state.get(p), old_state.get(index)
        if not live and not old:
            continue
        if not live or not old or set(live) != set(old):
            return False
        for key, value in old.items():
            now = live[key]
            if torch.is_tensor(value) != torch.is_tensor(now):
                return False
            if torch.is_tensor(value) and (
                type(value) is not type(now)
                or value.shape != now.shape
                or value.dtype != now.dtype
                or value.device != now.device
            ):
                return False
    return True


def _load_optimizer_in_place(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Copy a fitting saved state (:func:`_fits_in_place`) into the live optimizer, bit for bit."""
    groups = saved["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with torch.no_grad():
        for index, p in zip(ids, params):
            old = saved["state"].get(index)
            if not old:
                continue
            live = optimizer.state[p]
            for key, value in old.items():
                if torch.is_tensor(value):
                    live[key].copy_(value)
                else:
                    live[key] = copy.deepcopy(value)
        for group, old_group in zip(optimizer.param_groups, groups):
            for key in [k for k in group if k not in old_group and k != "params"]:
                del group[key]  # as load_state_dict, which keeps the saved group's keys only
            for key, value in old_group.items():
                if key == "params":
                    continue
                if torch.is_tensor(value) and torch.is_tensor(group.get(key)):
                    group[key].copy_(value)  # a tensor LR stays the tensor the user holds
                else:
                    group[key] = copy.deepcopy(value)


class SnapshotStore:
    """Holds the snapshots the engine needs, in memory up to a budget, spilled to disk past it.

    A spilled snapshot is written with ``torch.save`` (tensors moved to the CPU) and read back
    with ``weights_only=True``; tensors go back to the devices the live objects are on because
    ``load_state_dict`` copies into them. ``memory_budget`` counts the bytes of tensors held in
    memory by this store.
    """

    def __init__(self, memory_budget: int, spill_dir: str | os.PathLike[str] | None) -> None:
        if not isinstance(memory_budget, int) or memory_budget < 0:
            raise ValueError(f"snapshot memory budget must be an int >= 0, got {memory_budget!r}")
        self.memory_budget = memory_budget
        self._spill_dir = pathlib.Path(spill_dir) if spill_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._memory: dict[str, Snapshot] = {}
        self._disk: dict[str, pathlib.Path] = {}
        self._counter = 0
        self.spilled = 0  # snapshots written to disk so far
        self._spill_failed = False  # a failed spill is said once

    def _dir(self) -> pathlib.Path:
        if self._spill_dir is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="unstuck-snapshots-")
            return pathlib.Path(self._tmp.name)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir

    def held_bytes(self) -> int:
        return sum(s.nbytes() for s in self._memory.values())

    def put(self, snap: Snapshot) -> str:
        """Keep ``snap``; returns the key to get it back by."""
        self._counter += 1
        key = f"s{self._counter}-step{snap.step}"
        if self.held_bytes() + snap.nbytes() <= self.memory_budget:
            self._memory[key] = snap
            return key
        try:
            path = self._dir() / f"{key}.pt"
            torch.save(_to_cpu(snap.to_dict()), path)
        except OSError as exc:
            # A full disk must not stop training: hold this one in memory, past the budget.
            if not self._spill_failed:
                logger.warning(
                    "unstuck: could not spill a snapshot to %s (%s); keeping it in memory, past "
                    "snapshot_memory: free disk space there or raise snapshot_memory",
                    self._spill_dir or "a temporary directory",
                    exc,
                )
            self._spill_failed = True
            self._memory[key] = snap
            return key
        self._disk[key] = path
        self.spilled += 1
        return key

    def get(self, key: str) -> Snapshot:
        if key in self._memory:
            return self._memory[key]
        if key in self._disk:
            return Snapshot.from_dict(torch.load(self._disk[key], weights_only=True))
        raise KeyError(f"no snapshot {key!r}")

    def drop(self, key: str | None) -> None:
        if key is None:
            return
        self._memory.pop(key, None)
        path = self._disk.pop(key, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        for key in list(self._memory) + list(self._disk):
            self.drop(key)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _to_cpu(obj: Any) -> Any:
    return _map_tensors(obj, lambda t: t.detach().cpu(), lambda v: v)
