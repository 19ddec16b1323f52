"""Zero-code: a Guard on every optimizer of a script nobody edited (``unstuck run train.py``).

The known route, and its limits (docs/run.md):

- **Optimizers** are found as they step, through torch's global optimizer hooks
  (``torch.optim.optimizer.register_optimizer_step_post_hook``), which every optimizer of every
  framework calls. Each optimizer's Guard is built at its second step (by then the optimizers
  that alternate with it have stepped too) and watches the steps after it.
- **The model** is the smallest ``nn.Module`` alive (found once per optimizer among the objects
  the garbage collector tracks) that holds every parameter the optimizer steps; where none does,
  the parameters alone are watched, in a container module of their own (no rescue then: a
  snapshot of a container is not a snapshot of the user's model).
- **The loss** is the last scalar tensor ``backward()`` was called on (``Tensor.backward`` and
  ``torch.autograd.backward`` are wrapped; the tensor is detached, never read on the host), and
  each optimizer step hands it to that optimizer's Guard, as ``guard.step(loss)`` would. A
  script whose loss never goes through ``backward()`` on a scalar is told once, and watched for
  nothing.
- **Several optimizers** (a GAN's generator and discriminator) get a Guard each, recording to
  ``run_dir/opt<i>``; rescue needs exactly one optimizer and a model found, else the run is
  observed and the reason said once.
- **Fail safe**: any error inside unstuck turns it off for the process, with one warning; the
  user's script, its output and its exit code are never changed by unstuck.

``install(config)`` is what the ``sitecustomize`` that ``unstuck run`` puts on ``PYTHONPATH``
calls in every Python process the command starts (``torchrun`` workers included); Guards close,
print their summary and write their report at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CONFIG_ENV", "AutoRun", "install", "installed"]

CONFIG_ENV = "UNSTUCK_AUTORUN"  # JSON config handed from `unstuck run` to its children
SCALAR = torch.Size([])
logger = logging.getLogger("unstuck")
_LOCK = threading.Lock()
_ACTIVE: AutoRun | None = None


class _Parameters(torch.nn.Module):
    """The parameters of an optimizer whose model was not found, so the Guard can name them."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.params = torch.nn.ParameterList(params)


class AutoRun:
    """The hooks and the Guards of one process; every callback is fail safe."""

    def __init__(
        self,
        *,
        policy: str = "observe",
        run_dir: str | os.PathLike[str] | None = None,
        report: bool = True,
        guard_options: Mapping[str, Any] | None = None,
        guard_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.policy = policy
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.report = report
        self.guard_options = dict(guard_options or {})
        self._guard_factory = guard_factory
        self.guards: dict[int, Any] = {}  # id(optimizer) -> Guard
        self._seen: dict[int, weakref.ref[torch.optim.Optimizer]] = {}  # stepped at least once
        self._loss: torch.Tensor | None = None
        self._loss_steps = 0  # optimizer steps that found a loss to hand on
        self._steps = 0
        self._off = False
        self._told_no_loss = False
        self._told_observe = False
        self._handles: list[Any] = []
        self._originals: dict[str, Any] = {}

    # -- lifetime -------------------------------------------------------------------------------
    def start(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles.append(register_optimizer_step_post_hook(self._after_step))
        self._wrap_backward()
        self._wrap_destroy_process_group()
        atexit.register(self.close)

    def close(self) -> None:
        """Close every Guard (summary, store, report) and take the hooks away."""
        self._unhook()
        if not self._off and self.guards and self._loss_steps == 0 and not self._told_no_loss:
            self._say_no_loss()
        for guard in list(self.guards.values()):
            try:
                guard.close()
            except Exception as exc:  # never fail the user's exit
                logger.warning("unstuck: could not close a Guard at exit (%s)", exc)
        self.guards.clear()

    def turn_off(self, exc: BaseException) -> None:
        """An internal error: unstuck stops for this process and says so once."""
        if self._off:
            return
        self._off = True
        logger.warning(
            "unstuck: turned off for this process after an internal error (%s: %s); your "
            "script goes on unchanged",
            type(exc).__name__,
            exc,
        )
        self._unhook()
        for guard in list(self.guards.values()):
            with contextlib.suppress(Exception):  # already off; closing is best effort
                guard.close()
        self.guards.clear()

    def _unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if "tensor_backward" in self._originals:
            torch.Tensor.backward = self._originals.pop("tensor_backward")  # type: ignore[method-assign]
        if "autograd_backward" in self._originals:
            torch.autograd.backward = self._originals.pop("autograd_backward")
        if "destroy_process_group" in self._originals:
            import torch.distributed as dist

            dist.destroy_process_group = self._originals.pop("destroy_process_group")

    def _wrap_destroy_process_group(self) -> None:
        """Close the Guards while the process group still exists: closing a distributed
        Guard is a collective, and a script that tears the group down before it exits would
        leave it nothing to close with."""
        import torch.distributed as dist

        if not dist.is_available():
            return
        destroy = dist.destroy_process_group
        self._originals["destroy_process_group"] = destroy
        run = self

        def destroy_process_group(*args: Any, **kwargs: Any) -> Any:
            run.close()
            return destroy(*args, **kwargs)

        dist.destroy_process_group = destroy_process_group

    # -- the loss -------------------------------------------------------------------------------
    def _wrap_backward(self) -> None:
        tensor_backward = torch.Tensor.backward
        autograd_backward = torch.autograd.backward
        self._originals["tensor_backward"] = tensor_backward
        self._originals["autograd_backward"] = autograd_backward
        run = self

        def backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            run._note_loss(tensor)
            return tensor_backward(tensor, *args, **kwargs)

        def autograd(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(tensors, torch.Tensor):
                run._note_loss(tensors)
            return autograd_backward(tensors, *args, **kwargs)

        torch.Tensor.backward = backward  # type: ignore[method-assign, assignment]
        torch.autograd.backward = autograd

    def _note_loss(self, tensor: torch.Tensor) -> None:
        if self._off:
            return
        try:
            if tensor.shape == SCALAR and tensor.is_floating_point():
                self._loss = tensor.detach()
        except Exception as exc:  # fail safe
            self.turn_off(exc)

    # -- the optimizers -------------------------------------------------------------------------
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._off:
            return
        try:
            self._steps += 1
            guard = self.guards.get(id(optimizer))
            if guard is None:
                # Its first step is seen, its second builds its Guard: by then every optimizer
                # that alternates with it (a GAN's two) has stepped once, so the policy can be
                # chosen knowing how many there are. Watched from the step after.
                key = id(optimizer)
                if key not in self._seen:
                    self._seen[key] = weakref.ref(optimizer)
                else:
                    self._adopt(optimizer)
                self._loss = None
                return
            loss, self._loss = self._loss, None
            if loss is None:
                if self._steps > 2 * len(self._seen) + 2 and not self._told_no_loss:
                    self._say_no_loss()
                return
            self._loss_steps += 1
            guard.step(loss)
        except Exception as exc:  # fail safe: the user's step has happened
            self.turn_off(exc)

    def _say_no_loss(self) -> None:
        self._told_no_loss = True
        logger.warning(
            "unstuck: no backward() on a scalar loss before an optimizer step, so there is no "
            "loss to watch; call loss.backward() on the scalar loss, or use unstuck.Guard"
        )

    def _adopt(self, optimizer: torch.optim.Optimizer) -> None:
        with _LOCK:
            if id(optimizer) in self.guards:
                return
            index = len(self.guards)
            model = owning_module(optimizer)
            found = model is not None
            if model is None:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                model = _Parameters(params)
            policy = self.policy
            if policy != "observe" and (len(self._seen) > 1 or not found):
                policy = "observe"
                if not self._told_observe:
                    self._told_observe = True
                    why = (
                        f"{len(self._seen)} optimizers"
                        if len(self._seen) > 1
                        else "no model holds its parameters"
                    )
                    logger.warning(
                        "unstuck: observing only (%s): rescue needs one optimizer and its model",
                        why,
                    )
            self.guards[id(optimizer)] = self._make_guard(
                model, optimizer, policy, self._run_dir(index)
            )

    def _run_dir(self, index: int) -> Path | None:
        if self.run_dir is None:
            return None
        return self.run_dir / f"opt{index}" if index else self.run_dir

    def _make_guard(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, policy: str, run_dir: Any
    ) -> Any:
        if self._guard_factory is not None:
            return self._guard_factory(model, optimizer, policy=policy, run_dir=run_dir)
        from unstuck.integrations.loop import Guard

        return Guard(
            model,
            optimizer,
            policy=policy,
            run_dir=run_dir,
            report=self.report,
            meta={"framework": "autorun", "optimizer_index": len(self.guards)},
            **self.guard_options,
        )


def owning_module(optimizer: torch.optim.Optimizer) -> torch.nn.Module | None:
    """The smallest live ``nn.Module`` holding every parameter the optimizer steps, or None."""
    wanted = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if not wanted:
        return None
    best: torch.nn.Module | None = None
    best_size = -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on deprecated torch objects warns
        for obj in gc.get_objects():
            try:
                if not isinstance(obj, torch.nn.Module):
                    continue
                ids = {id(p) for p in obj.parameters()}
            except Exception:  # a half-built or exotic object: skip it
                continue
            if wanted <= ids and (best is None or len(ids) < best_size):
                best, best_size = obj, len(ids)
    return best


def installed() -> AutoRun | None:
    """The process's AutoRun, when ``install`` ran."""
    return _ACTIVE


def install(config: Mapping[str, Any]) -> AutoRun | None:
    """Watch every optimizer of this process; never raises (fails safe with one warning)."""
    global _ACTIVE
    try:
        if _ACTIVE is not None:
            return _ACTIVE
        rank = os.environ.get("RANK")
        run_dir = config.get("run_dir")
        if run_dir is not None and rank not in (None, "0"):
            run_dir = None  # the Guard records on rank 0 only; other ranks decide the same
        run = AutoRun(
            policy=str(config.get("policy", "observe")),
            run_dir=run_dir,
            report=bool(config.get("report", True)),
            guard_options=dict(config.get("guard_options") or {}),
        )
        run.start()
        _ACTIVE = run
        return run
    except Exception as exc:  # fail safe at start-up too
        logger.warning("unstuck: not watching this process (%s: %s)", type(exc).__name__, exc)
        return None
