"""``Guard``: unstuck over a plain PyTorch training loop, in two lines.

>>> guard = unstuck.Guard(model, optimizer)          # doctest: +SKIP
>>> for x, y in loader:                              # doctest: +SKIP
...     loss = loss_fn(model(x), y)
...     optimizer.zero_grad(); loss.backward(); optimizer.step()
...     guard.step(loss)

Gradients and updates are read through the optimizer's step hooks, so ``guard.step`` only hands
over the loss. Every ``flush_every`` steps the gathered values cross to the host in one
transfer; detection, diagnosis and rescue run then, never in between.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import numbers
import os
import signal
import threading
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from unstuck.detect import PlateauDetector
from unstuck.diagnose import EvidenceBuilder, run_rules
from unstuck.diagnose.evidence import EvidenceView
from unstuck.diagnose.log import FindingLog
from unstuck.integrations._distributed import RankSync, unwrap_model
from unstuck.record.console import ensure_console_handler, format_event_line, format_summary
from unstuck.record.recorder import Recorder, state_payload
from unstuck.record.rundata import DETECTOR_OPTIONS_KEY, MOMENTUM_SERIES, RUN_FACTS_KEY
from unstuck.rescue import Controls, LRMultiplier, RescueEngine, make_policy
from unstuck.rescue.controls import AccumulationControl, ClipControl, StopControl
from unstuck.rescue.engine import (
    DEFAULT_COOLDOWN,
    DEFAULT_HORIZON,
    DEFAULT_PROBE_BUDGET,
    DEFAULT_SNAPSHOT_MEMORY,
    merge_action_events,
)
from unstuck.rescue.policy import Policy
from unstuck.signals import (
    ActivationTap,
    ClipTap,
    CurvatureProbe,
    GradNoiseTap,
    GradNormTap,
    LossComponentsTap,
    LossTap,
    LRTap,
    OptimizerStateTap,
    ParamDistanceTap,
    PrecisionTap,
    RankChecksumTap,
    SamplesTap,
    SignalHub,
    UpdateRatioTap,
    WeightNormTap,
)
from unstuck.signals.architecture import beta2_of, momentum_of, post_norm_layers
from unstuck.signals.distributed import distributed_world
from unstuck.signals.host import Series
from unstuck.types import (
    DIAGNOSE_ON,
    FLAT_STATES,
    NOTABLE_STATES,
    ActionRecord,
    DetectorState,
    Finding,
    Plateau,
    primitive,
)

__all__ = ["Guard"]

# What guard.step and guard.validate take as a loss (also other libraries' scalars, via float()).
LossLike = torch.Tensor | float | np.number[Any] | np.ndarray[Any, Any]

logger = logging.getLogger("unstuck")

STATE_VERSION = 1
# Defaults chosen by measurement with bench/overhead.py (the closing note of issue 2 has the
# figures). A flush (host transfer plus one decision) is a fixed Python cost whatever the model,
# so it runs every 50 steps. Sampled signals make their step slower, and a median step time moves
# with the share of steps that carry one: gradient norms (every gradient read once) are taken
# every 8th optimizer step, the parameter distance and the gradient-noise sums every 16th and
# update ratios (a parameter copy) every 32nd: multiples of 8, so one step in eight carries all
# the sampled work. That kept
# the 1 ms MLP case under a 3 % median overhead. Pass 1 to record every step.
DEFAULT_FLUSH_EVERY = 50
DEFAULT_GRAD_NORM_EVERY = 8
DEFAULT_UPDATE_RATIO_EVERY = 32
DEFAULT_DISTANCE_EVERY = 16
DEFAULT_GRAD_NOISE_EVERY = 16
# Forward-hook statistics cost ~1.7 ms on the 1 ms MLP of bench/overhead.py (a few dozen small
# kernels per layer), zero-gradient counts and optimizer-state reads ~0.4 ms: taken every 128th
# and 64th step they stay near 1 % of the mean step. Both change slowly (dead units, saturation,
# Adam's second moment average ~1,000 steps), and every multiple of 8 keeps one step in eight
# carrying all the sampled work.
DEFAULT_ACTIVATION_EVERY = 128
DEFAULT_OPTIMIZER_STATE_EVERY = 64
DEFAULT_PRECISION_EVERY = 64
DEFAULT_CURVATURE_HVPS = 40  # Hessian-vector products per curvature probe (~2 backward passes each)
PROBE_KEEP_EVERY = 64  # steps between refreshes of a kept probe batch (a clone of one batch)
DEFAULT_PROBE_BATCHES = 4  # batches kept for scoring branch trials (the latest feeds curvature)
# Optimizers that set their own step size: unstuck leaves their LR alone (see docs/rescue.md).
SELF_TUNING_OPTIMIZERS = {
    "schedulefree": "schedule-free optimizers average their iterates with LR-dependent weights",
    "prodigyopt": "Prodigy estimates its own step size (d) from the LR it is given",
}


# The SignalHub of every Guard not yet closed, by optimizer. A hub stays alive while its hooks
# are on the optimizer, so a Guard dropped without close() (a re-run notebook cell) still shows.
_OPEN_HUBS: weakref.WeakKeyDictionary[Any, weakref.WeakSet[SignalHub]] = weakref.WeakKeyDictionary()


# SIGTERM (Slurm, Kubernetes and torchrun send it first): open Guards are closed, so the run is
# marked closed and its report written, then the signal goes on to what was there before.
_OPEN_GUARDS: weakref.WeakSet[Guard] = weakref.WeakSet()
_SIGTERM_BEFORE: list[Any] = []  # the disposition our handler replaced (while it is installed)


_PACKAGE_DIRS = (
    str(Path(torch.__file__ or ".").resolve().parent) + os.sep,
    str(Path(__file__).resolve().parents[1]) + os.sep,  # unstuck's own
)
_AT_EXIT: list[bool] = []  # whether the exit-time close of signalled Guards is registered


def _inside_training(frame: Any) -> bool:
    """Whether the interrupted code is unstuck's or torch's (a step, a hook, a forward): the
    Guard's hooks and store must not be torn down under it, so its close waits."""
    while frame is not None:
        if str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE_DIRS):
            return True
        frame = frame.f_back
    return False


def _close_guards(signum: int, midway: bool = False) -> None:
    for guard in list(_OPEN_GUARDS):
        try:
            guard._close_on_signal(signum, midway)
        except Exception:  # never in the way of the process ending
            logger.exception("unstuck: closing a Guard on signal %d failed", signum)


def _close_signalled_at_exit() -> None:
    for guard in list(_OPEN_GUARDS):
        if guard._signal_pending:
            _close_guards(guard._signal_pending)
            return


def _on_sigterm(signum: int, frame: Any) -> None:
    """Close every open Guard, then do what SIGTERM did before: the user's handler, or the
    default (the process ends, killed by SIGTERM, as it would have been).

    With a handler of the user's the process may go on, so a Guard interrupted in the middle of
    training code is closed at its next call (``step``, ``validate``, ``flush``) or at exit.
    """
    previous = _SIGTERM_BEFORE[0] if _SIGTERM_BEFORE else signal.SIG_DFL
    if not callable(previous):
        # Nothing resumes after this: close now, without the last flush if a step was cut
        # short (its half-gathered window is not worth a traceback on the way out).
        _close_guards(signum, midway=_inside_training(frame))
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _inside_training(frame):
        for guard in list(_OPEN_GUARDS):
            guard._signal_pending = signum
        if not _AT_EXIT:
            _AT_EXIT.append(True)
            atexit.register(_close_signalled_at_exit)
    else:
        _close_guards(signum)
    previous(signum, frame)


def _install_sigterm_handler() -> None:
    """Only where the Guard may own the process's lifetime: the main thread, and a SIGTERM
    that would end the process or runs a Python handler we can chain to (an ignored SIGTERM,
    or one handled outside Python, is left alone)."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm or current is signal.SIG_IGN or current is None:
        return
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # e.g. a sub-interpreter: SIGTERM is not ours to handle
        return
    _SIGTERM_BEFORE[:] = [current]


def _uninstall_sigterm_handler() -> None:
    """The last open Guard closed: give SIGTERM back what it had (if nobody replaced ours)."""
    if _OPEN_GUARDS or not _SIGTERM_BEFORE:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _SIGTERM_BEFORE[0])
    _SIGTERM_BEFORE.clear()


def _check_type(name: str, value: Any, expected: type, hint: str) -> None:
    if not isinstance(value, expected):
        raise TypeError(
            f"Guard: {name} must be a {expected.__name__}, got {type(value).__name__}; {hint}"
        )


def _whole(name: str, value: Any, least: int, what: str) -> int:
    """An int argument (a numpy integer too) of at least ``least``: NaN, inf, floats and text
    are refused here, in one line, instead of misbehaving at the first decision."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"Guard: {name} must be an int >= {least} ({what}), got {_brief(value)} "
            f"({type(value).__name__}); pass a whole number such as {name}={max(least, 1) * 50}"
        )
    if value < least:
        raise ValueError(f"Guard: {name} must be an int >= {least} ({what}), got {value}")
    return int(value)


def _not_a_number(value: Any) -> bool:
    """Text, booleans and bool arrays are never a loss, though ``float()`` takes them."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (dtype == torch.bool or dtype == np.bool_)


def _host_number(value: Any) -> float | None:
    """A Python/numpy number or 0-d array as a float (no tensor: those stay on the device)."""
    if _not_a_number(value) or isinstance(value, torch.Tensor):
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


def _loss_tensor(loss: Any) -> torch.Tensor:
    """``guard.step``'s loss as a tensor: tensors as they are, numbers and numpy arrays too."""
    if isinstance(loss, torch.Tensor) and loss.dtype != torch.bool:
        return loss
    number = _host_number(loss)
    if number is not None:
        # The default dtype, as a Python float always became, unless that would turn a finite
        # number into inf (a false non-finite loss, and a rollback): then float64.
        if math.isfinite(number) and abs(number) > torch.finfo(torch.get_default_dtype()).max:
            return torch.tensor(number, dtype=torch.float64)
        return torch.tensor(number)
    if isinstance(loss, np.ndarray) and not _not_a_number(loss) and loss.dtype.kind in "iuf":
        dtype = torch.get_default_dtype()
        if loss.dtype.itemsize > torch.finfo(dtype).bits // 8 and loss.size:
            finite = loss[np.isfinite(loss)]
            if finite.size and float(np.max(np.abs(finite))) > torch.finfo(dtype).max:
                dtype = torch.float64  # host numbers: checking them costs no device sync
        return torch.as_tensor(loss, dtype=dtype)  # per-sample losses
    raise TypeError(
        f"guard.step(loss) needs the loss as a tensor or a number, got {type(loss).__name__} "
        f"{_brief(loss)}; pass the loss tensor itself"
    )


def _validation_value(val_loss: Any) -> float:
    """``guard.validate``'s loss as a float: the same numbers ``guard.step`` takes, averaged."""
    if isinstance(val_loss, torch.Tensor) and not (
        _not_a_number(val_loss) or val_loss.is_complex()
    ):
        t = val_loss.detach()
        if not t.is_floating_point() or t.element_size() < 4:
            t = t.float()  # integers and 16-bit floats average in float32; float64 stays float64
        return float(t.mean())
    number = _host_number(val_loss)
    if number is not None:
        return number
    if isinstance(val_loss, np.ndarray) and val_loss.dtype.kind in "iuf" and val_loss.size:
        return float(np.mean(val_loss, dtype=np.float64))
    raise TypeError(
        "Guard.validate: pass the validation loss as a number or a tensor, got "
        f"{type(val_loss).__name__} {_brief(val_loss)}; pass the loss tensor or float(val_loss)"
    )


def _brief(value: Any) -> str:
    """A value's repr on one short line, for an error message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:39] + "…"


def _clone_batch(batch: Any) -> Any:
    """A detached copy of a (nested) batch, so later in-place edits by the loader do not leak."""
    if isinstance(batch, torch.Tensor):
        return batch.detach().clone()
    if isinstance(batch, (list, tuple)):
        return type(batch)(_clone_batch(b) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _clone_batch(v) for k, v in batch.items()}
    return batch


def _component_tensors(components: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in components.items():
        number = _host_number(value)
        if number is not None:
            out[str(name)] = torch.tensor(number)
        elif isinstance(value, torch.Tensor) and not _not_a_number(value):
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


class Guard:
    """Watches a training run: detects plateaus, diagnoses causes, and (optionally) rescues.

    Build it after the model and optimizer, call ``guard.step(loss)`` after each
    ``optimizer.step()``, and ``guard.close()`` (or use ``with``) at the end: close prints a
    short summary with the change to make in your config. Every argument, with why its default
    is what it is: ``docs/guard.md``.

    Args:
        model: the ``nn.Module`` being trained: parameter names for findings and metrics, and
            part of every snapshot (a DDP wrapper is fine).
        optimizer: the ``torch.optim.Optimizer`` that steps ``model``. Its param groups are the
            watched parameters; its step hooks are where gradients and updates are read.
        scheduler: your LR scheduler, if any. You keep calling ``scheduler.step()``; it is
            saved in snapshots and rewound with a rolled-back action.
        policy: ``"observe"`` (the default: detect and diagnose, change nothing), ``"rescue"``
            (the ladder of actions), ``"branch"`` (the ladder with branch trials), a list of
            action names or ``(name, params)`` pairs, or a :class:`unstuck.rescue.Policy`.
        run_dir: directory for the run store (``unstuck.sqlite``); ``None`` touches no disk.
        dataset_size: number of distinct samples, to check epoch coverage when ``ids`` are given
            to ``step`` (the ``truncated_data`` and ``repeated_data`` rules).
        scaler: a ``torch.amp.GradScaler``, included in snapshots; its scale and skipped steps
            are signals for the ``precision_underflow`` rule.
        flush_every: ``guard.step`` calls between host transfers, and so between decisions.
        grad_norm_every: optimizer steps between per-tensor gradient norm samples.
        update_ratio_every: optimizer steps between update/weight ratio samples (each copies
            the parameters before the step).
        distance_every: optimizer steps between samples of the parameter distance from the
            start (the hidden-progress signal); also taken at every flush.
        grad_noise_every: optimizer steps between gradient signal-to-noise samples.
        activation_every: ``guard.step`` calls between activation statistics (forward hooks,
            armed only for that step's forward): dead units, saturation, output scales.
        optimizer_state_every: optimizer steps between reads of the optimizer's state (Adam's
            second moments, state lost at step > 0).
        precision_every: optimizer steps between counts of zero/subnormal gradients and
            unchanged 16-bit weights.
        loss_fn: ``loss_fn(model(inputs), targets)`` recomputes the loss on a batch kept from
            ``guard.step(loss, batch=(inputs, targets))``: for the curvature probe and, under an
            acting policy, to score branch trials.
        probe_fn: ``probe_fn(model) -> loss`` recomputes a loss on data of your choice for the
            curvature probe; takes precedence over ``loss_fn``.
        curvature_hvps: Hessian-vector products per curvature probe (each ~2 backward passes).
        horizon: steps an action runs before it is judged (kept or rolled back).
        cooldown: steps after a kept action before the next one may be taken.
        accumulation_steps: let unstuck own gradient accumulation: the loop calls
            ``guard.should_step()`` before ``optimizer.step()``, and unstuck averages the summed
            gradients itself (do not divide the loss). Lets the rescue change the effective batch.
        probe_budget: the largest share of the steps so far that probes (LR range tests, branch
            trials) may spend.
        snapshot_memory: bytes of snapshots kept in memory; beyond it they are written to
            ``run_dir/snapshots`` (or a temporary directory) and read back on restore.
        probe_batches: batches kept (cloned from ``batch=``) to score branch trials on.
        tensorboard: a directory: mirror metrics, findings and actions to TensorBoard there.
        mlflow: ``True`` mirrors them to the active MLflow run (and the report as an artifact
            at close); a :class:`unstuck.record.sinks.MlflowSink` to choose the run yourself.
        report: write ``run_dir/report.html`` at ``close()``. Only with a ``run_dir``.
        console: print one line per notable event and a summary at ``close()`` through the
            ``unstuck`` logger, which is set to INFO unless you set its level yourself (a
            stderr handler is added only when no handler is configured). ``False`` leaves
            logging configuration alone and prints no summary.
        detector_options: keyword arguments for both plateau detectors (train and validation),
            e.g. ``{"epsilon": 0.05}``.
        meta: a JSON-encodable mapping stored as run metadata (with ``policy``).

    Misuse that would leave the Guard blind is a one-line ``unstuck`` warning: an optimizer
    that steps none of the model's parameters, no ``optimizer.step()`` seen by the first flush,
    and a second Guard built on an optimizer whose previous Guard was never closed.

    Under ``torch.distributed`` with more than one rank (DDP), build a Guard on every rank after
    ``init_process_group``: the loss is averaged over ranks at each flush, rank 0 diagnoses, and
    every rank makes the same decisions; only rank 0 writes the store, sinks and console
    (docs/distributed.md).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        policy: str | Policy = "observe",
        run_dir: str | Path | None = None,
        dataset_size: int | None = None,
        *,
        scaler: Any = None,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        grad_norm_every: int = DEFAULT_GRAD_NORM_EVERY,
        update_ratio_every: int = DEFAULT_UPDATE_RATIO_EVERY,
        distance_every: int = DEFAULT_DISTANCE_EVERY,
        grad_noise_every: int = DEFAULT_GRAD_NOISE_EVERY,
        activation_every: int = DEFAULT_ACTIVATION_EVERY,
        optimizer_state_every: int = DEFAULT_OPTIMIZER_STATE_EVERY,
        precision_every: int = DEFAULT_PRECISION_EVERY,
        loss_fn: Any = None,
        probe_fn: Any = None,
        curvature_hvps: int = DEFAULT_CURVATURE_HVPS,
        horizon: int = DEFAULT_HORIZON,
        cooldown: int = DEFAULT_COOLDOWN,
        accumulation_steps: int | None = None,
        probe_budget: float = DEFAULT_PROBE_BUDGET,
        snapshot_memory: int = DEFAULT_SNAPSHOT_MEMORY,
        probe_batches: int = DEFAULT_PROBE_BATCHES,
        tensorboard: str | Path | None = None,
        mlflow: Any = False,
        report: bool = True,
        console: bool = True,
        detector_options: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        _check_type("model", model, torch.nn.Module, "pass the nn.Module you train")
        _check_type(
            "optimizer",
            optimizer,
            torch.optim.Optimizer,
            "pass the torch.optim optimizer that steps the model",
        )
        if not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"Guard: flush_every must be a positive int, got {flush_every!r}")
        if dataset_size is not None and (not isinstance(dataset_size, int) or dataset_size < 1):
            raise ValueError(f"Guard: dataset_size must be a positive int, got {dataset_size!r}")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.flush_every = flush_every
        self._policy = make_policy(policy)
        self._closed = False
        # Under torch.distributed with > 1 rank: identical decisions on every rank, rank 0
        # diagnoses and records (docs/distributed.md). None: a single process, no collectives.
        self._sync = RankSync.create()
        self._lead = self._sync is None or self._sync.lead
        self._late_dist_warned = False
        self._no_step_warned = False
        self._console = bool(console)
        if console and self._lead:
            ensure_console_handler()

        # Everything that can reject an argument runs before the store opens and the optimizer
        # gets hooks, so a bad argument leaves neither a half-recorded run nor stray hooks.
        distance_tap = ParamDistanceTap(distance_every)
        self._clip_tap = ClipTap()
        self._components_tap = LossComponentsTap()
        taps = [
            LossTap(),
            GradNormTap(grad_norm_every),
            LRTap(),
            UpdateRatioTap(update_ratio_every),
            distance_tap,
            SamplesTap(dataset_size),
            GradNoiseTap(grad_noise_every),
            ActivationTap(activation_every),
            OptimizerStateTap(optimizer_state_every),
            PrecisionTap(precision_every, scaler),
            self._clip_tap,
            self._components_tap,
            WeightNormTap(),
            RankChecksumTap(),
        ]
        options = {"distance_signal": True, **dict(detector_options or {})}
        self._detectors = {
            "train": PlateauDetector("train", **options),
            "val": PlateauDetector("val", **options),
        }
        if probe_fn is not None and not callable(probe_fn):
            raise TypeError("Guard: probe_fn must be callable as probe_fn(model) -> loss")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError("Guard: loss_fn must be callable as loss_fn(outputs, targets)")
        if not isinstance(curvature_hvps, int) or curvature_hvps < 2:
            raise ValueError(f"Guard: curvature_hvps must be an int >= 2, got {curvature_hvps!r}")
        horizon = _whole("horizon", horizon, 1, "steps an action runs before it is judged")
        cooldown = _whole("cooldown", cooldown, 0, "steps after a kept action before the next")
        if not (isinstance(probe_budget, (int, float)) and 0 <= probe_budget <= 1):
            raise ValueError(f"Guard: probe_budget must be a share in [0, 1], got {probe_budget!r}")
        if not isinstance(snapshot_memory, int) or snapshot_memory < 0:
            raise ValueError(
                f"Guard: snapshot_memory must be a number of bytes >= 0, got {snapshot_memory!r}"
            )
        if not isinstance(probe_batches, int) or probe_batches < 1:
            raise ValueError(f"Guard: probe_batches must be an int >= 1, got {probe_batches!r}")
        self._accumulation = AccumulationControl(accumulation_steps)  # validates the argument
        self._clip = ClipControl()
        self._stop = StopControl()
        self._loss_fn = loss_fn
        self._probe_fn = probe_fn
        self._probe_batches_max = probe_batches

        # Sinks and a store that cannot be written fail here, before any training step.
        # Only rank 0 records: the other ranks make the same decisions, so a store of their
        # own would repeat rank 0's (and contend for the same run_dir).
        self._recorder = Recorder(
            "Guard",
            run_dir,
            meta={"policy": self._policy.name, **dict(meta or {})},
            tensorboard=tensorboard,
            mlflow=mlflow,
            report=report,
            build=self._lead,
        )

        # Registered before the hub's hooks, so every signal reads the averaged gradient.
        self._accumulated = 0  # micro-batches summed into .grad since the last optimizer step
        self._average_hook = (
            optimizer.register_step_pre_hook(self._average_accumulated)
            if self._accumulation.owned
            else None
        )
        self._warn_if_already_guarded(optimizer)
        self._hub = SignalHub(model, optimizer, taps)
        _OPEN_HUBS.setdefault(optimizer, weakref.WeakSet()).add(self._hub)
        if self._accumulation.owned:
            self._hub.ctx.intended_opt_steps = 0
        if "distance_scale" not in options:
            # Hidden progress means the weights moved by a share of their own size, not of a
            # distance that starts at zero (a creep at a tiny LR would qualify otherwise).
            scale = distance_tap.reference_norm()
            if self._sync is not None:
                scale = self._sync.from_lead(scale)
            for detector in self._detectors.values():
                detector.distance_scale = scale
        detector_record = {**options, "distance_scale": self._detectors["train"].distance_scale}
        self._recorder.update_meta(**{DETECTOR_OPTIONS_KEY: primitive(detector_record)})
        # Registered after the hub's hooks, so the LR tap records the user's own schedule.
        self._lr = LRMultiplier(optimizer)
        controls = Controls(
            model,
            optimizer,
            self._lr,
            scheduler,
            scaler,
            clip=self._clip,
            accumulation=self._accumulation,
            stop=self._stop,
            lr_locked=self._lr_lock_reason(optimizer),
        )
        if controls.lr_locked and self._policy.acts and self._lead:
            logger.warning("unstuck: %s", controls.lr_locked)
        self._engine = RescueEngine(
            controls,
            self._policy,
            horizon=horizon,
            cooldown=cooldown,
            probe_budget=probe_budget,
            snapshot_memory=snapshot_memory,
            spill_dir=None if self.run_dir is None else self.run_dir / "snapshots",
            capture_extra=self._capture_extra,
            restore_extra=self._restore_extra,
            evaluate=self._evaluate,
        )
        self._evidence = EvidenceBuilder()
        ctx = self._hub.ctx
        # Probes run forwards of their own: through a DDP wrapper those would be collectives.
        self._probe_model = unwrap_model(model)
        self._curvature = CurvatureProbe(
            self._probe_model,
            list(ctx.params),
            loss_fn=loss_fn,
            probe_fn=probe_fn,
            max_hvps=curvature_hvps,
        )
        self._probe_batch: Any = None  # the latest kept batch (the curvature probe reads it)
        self._kept_batches: list[Any] = []  # the probe set branch trials are scored on
        self._next_flush = flush_every
        self._flushed_at = 0
        self._curvature_for: int | None = None  # start step of the plateau last probed
        facts: dict[str, Any] = {
            "param_names": list(ctx.names),
            "param_ndims": [p.ndim for p in ctx.params],
            "post_norm_transformer_layers": post_norm_layers(self._probe_model),
            "optimizer_type": type(optimizer).__name__,
            "optimizer_beta2": beta2_of(optimizer),
            "params_not_in_optimizer": self._params_outside_optimizer(),
        }
        for name, value in facts.items():
            self._evidence.set(name, value)
        # The same facts in the store, so `unstuck analyze RUN_DIR` diagnoses from what the
        # live rules read (docs/analyze.md: a run store is replayed at the Guard's cadence).
        self._recorder.update_meta(**{RUN_FACTS_KEY: primitive(facts)})
        self._finding_log = FindingLog()
        self._actions: list[ActionRecord] = []
        self._current_findings: list[Finding] = []
        self._val_points = 0
        self._diagnose(step=0, state=DetectorState.UNKNOWN, series="train")
        self._engine.note_start(self._hub.step)
        self._signalled = False  # closed by SIGTERM: later calls are ignored, not errors
        self._signal_pending = 0  # SIGTERM came in mid-step: close at the next call
        _OPEN_GUARDS.add(self)
        _install_sigterm_handler()

    # -- construction helpers -----------------------------------------------------------------
    @staticmethod
    def _lr_lock_reason(optimizer: torch.optim.Optimizer) -> str | None:
        package = type(optimizer).__module__.split(".")[0]
        why = SELF_TUNING_OPTIMIZERS.get(package)
        if why is None:
            return None
        return (
            f"{type(optimizer).__name__} sets its own step size ({why}); unstuck detects and "
            "diagnoses but leaves its LR alone (LR actions are skipped with this reason)"
        )

    def _warn_if_already_guarded(self, optimizer: torch.optim.Optimizer) -> None:
        """A second Guard on one optimizer (a re-run notebook cell) while the first is open:
        both sets of hooks measure every step, and both may act on the LR."""
        if self._lead and any(True for _ in _OPEN_HUBS.get(optimizer, ())):
            logger.warning(
                "unstuck: this optimizer already has a Guard that was not closed, and its hooks "
                "still run on every step; call close() on the old Guard (or use `with "
                "unstuck.Guard(...)`), or re-create the optimizer, before building a new one"
            )

    def _params_outside_optimizer(self) -> list[str]:
        in_optimizer = {id(p) for p in self._hub.ctx.params}
        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        missing = [name for name, p in trainable if id(p) not in in_optimizer]
        if trainable and len(missing) == len(trainable):
            # Not a few forgotten tensors: the optimizer belongs to another model (or a copy).
            if self._lead:
                logger.warning(
                    "unstuck: the optimizer given to the Guard steps none of the model's "
                    "parameters; pass the model being trained and the optimizer built from its "
                    "parameters(), e.g. Guard(model, torch.optim.Adam(model.parameters()))"
                )
        elif missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            warnings.warn(
                f"unstuck: {len(missing)} parameter tensors require grad but are in no optimizer "
                f"group and will never be updated: {shown}",
                stacklevel=3,
            )
        return missing

    # -- the user's calls ---------------------------------------------------------------------
    def step(
        self,
        loss: LossLike,
        *,
        ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        batch: Any = None,
        components: Mapping[str, torch.Tensor | float] | None = None,
    ) -> None:
        """Record this step's loss (after ``optimizer.step()``). No host sync happens here.

        ``loss`` is the scalar training loss (a tensor, or a Python or numpy number or 0-d
        array; text and booleans are refused), or per-sample losses (``reduction="none"``)
        together with ``ids`` (dataset indices) and optionally ``targets`` (class labels).
        ``batch=(inputs, targets)`` lets the Guard keep a probe batch now and then (with
        ``loss_fn``, for the curvature probe). ``components`` maps names of loss terms to their
        values this step (for the loss-component-dominance rule).
        """
        if self._closed:
            if self._signalled:
                return  # the process is ending on SIGTERM; the run is already closed
            raise RuntimeError("Guard.step() after close(): create a new Guard to keep monitoring")
        if self._signal_pending:
            self._close_on_signal(self._signal_pending)
            return
        loss = _loss_tensor(loss).detach()
        if loss.ndim == 0:
            pass  # the usual scalar loss: nothing to reshape (a view costs ~1 µs per step)
        elif loss.numel() == 1:
            loss = loss.reshape(())
        elif ids is None:
            raise ValueError(
                f"guard.step got a loss of shape {tuple(loss.shape)}: pass the scalar loss, or "
                "per-sample losses (loss_fn(..., reduction='none')) with ids=<dataset indices> "
                "and optionally targets=<labels>"
            )
        else:
            loss = loss.reshape(-1)
            ids = self._check_per_sample("ids", ids, loss)
            if targets is not None:
                targets = self._check_per_sample("targets", targets, loss)
        if (
            batch is not None
            and self._hub.step % PROBE_KEEP_EVERY == 0
            and not self._engine.probing  # branches are scored on one fixed set
            and (self._curvature.needs_batch or (self._policy.acts and self._loss_fn))
        ):
            self._keep_batch(_clone_batch(batch))
        if components:
            self._components_tap.record(self._hub.step, _component_tensors(components))
        self._hub.on_loss(loss, ids, targets)
        if self._hub.step >= self._next_flush:
            self._flush()

    def _keep_batch(self, batch: Any) -> None:
        """Keep a clone: the latest feeds the curvature probe, the last few score branches."""
        self._probe_batch = batch
        if self._policy.acts and self._loss_fn is not None and self._probe_fn is None:
            self._kept_batches = [*self._kept_batches, batch][-self._probe_batches_max :]

    def should_step(self) -> bool:
        """With ``accumulation_steps``: whether to call ``optimizer.step()`` after this batch.

        Call it once per micro-batch, after ``loss.backward()``. unstuck owns the accumulation:
        gradients are summed by autograd and averaged by unstuck just before the step, so the
        loss needs no division, and a rescue may change the number of micro-batches per step.
        Without ``accumulation_steps`` it is always True.
        """
        if not self._accumulation.owned:
            return True
        self._accumulated += 1
        if self._accumulated < self._accumulation.steps:
            return False
        ctx = self._hub.ctx
        ctx.intended_opt_steps = (ctx.intended_opt_steps or 0) + 1
        return True

    def _average_accumulated(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        count, self._accumulated = self._accumulated, 0
        if count <= 1:
            return
        grads = [p.grad for p in self._hub.ctx.params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / count)

    @property
    def should_stop(self) -> bool:
        """True once the rescue asked the loop to end (``keep_best_and_stop``)."""
        return self._stop.requested

    @property
    def stop_reason(self) -> str:
        return self._stop.reason

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over the optimizer's parameters, recorded.

        Call it where you would call torch's (after ``backward``, before ``optimizer.step``);
        the pre-clip norm stays on the device and feeds the over-clipping rule.
        """
        threshold = self.clip_threshold(max_norm, caller="clip_grad_norm_")
        total = torch.nn.utils.clip_grad_norm_(self._hub.ctx.params, threshold, norm_type)
        self.record_clip(total, threshold)
        return total

    # -- seams for front-ends that run the step themselves (Lightning) ------------------------
    def clip_threshold(self, max_norm: float, *, caller: str = "clip_threshold") -> float:
        """The norm to clip at: ``max_norm`` times the rescue's clip factor (1.0 until a
        ``clip_adjust``). Calling it says the loop clips by norm, which lets the rescue adjust
        the threshold; a loop that clips itself calls it each step and then :meth:`record_clip`.
        """
        if not (isinstance(max_norm, (int, float)) and max_norm > 0):
            raise ValueError(f"{caller}: max_norm must be a positive number, got {max_norm!r}")
        self._clip.owned = True
        return float(max_norm) * self._clip.factor

    def record_clip(self, total_norm: torch.Tensor, threshold: float) -> None:
        """Record one step's pre-clip total gradient norm (kept on the device) and threshold,
        for the over-clipping rule. A loop that clips itself calls it after measuring."""
        self._clip_tap.record(self._hub.step, total_norm, threshold)

    def read_gradients_manually(self) -> None:
        """Stop reading gradients in the optimizer's step pre-hook; call :meth:`read_gradients`
        each optimizer step once they are final instead. For loops whose
        ``optimizer.step(closure)`` runs the backward inside the step, after the pre-hooks
        (Lightning). The LR is still read in the hook, as the user's schedule."""
        self._hub.read_gradients_manually()

    def read_gradients(self) -> None:
        """Read this optimizer step's gradients (after :meth:`read_gradients_manually`), with
        the sampling the step hook would have used. No host sync."""
        self._hub.read_gradients()

    @property
    def parameters(self) -> list[torch.Tensor]:
        """The parameters the optimizer steps, in the order every per-tensor signal uses."""
        return list(self._hub.ctx.params)

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps seen through the step hooks so far (the current one not yet)."""
        return self._hub.opt_steps

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (later calls to ``step`` raise)."""
        return self._closed

    @property
    def evidence(self) -> EvidenceView:
        """The history diagnosis reads (series and snapshots), read-only."""
        return EvidenceView(self._evidence)

    @staticmethod
    def _check_per_sample(name: str, value: Any, loss: torch.Tensor) -> torch.Tensor:
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        tensor = tensor.detach().reshape(-1)
        if tensor.numel() != loss.numel():
            raise ValueError(
                f"guard.step: {name} has {tensor.numel()} entries but the loss has "
                f"{loss.numel()}; pass one {name[:-1]} per sample"
            )
        return tensor

    def validate(self, val_loss: LossLike, step: int | None = None) -> None:
        """Record a validation loss (a host read: call it when you evaluate, not every step).

        ``val_loss``: the numbers ``guard.step`` takes (a tensor, a Python or numpy number, a
        numpy array); one with several elements is averaged. Text and booleans are refused.
        """
        if self._closed:
            if self._signalled:
                return
            raise RuntimeError(
                "Guard.validate() after close(): create a new Guard to keep monitoring"
            )
        if self._signal_pending:
            self._close_on_signal(self._signal_pending)
            return
        value = _validation_value(val_loss)
        at = max(self._hub.step - 1, 0) if step is None else int(step)
        if self._sync is not None:
            at, value = self._sync.mean_value(at, value)  # every rank calls validate
        if self._engine.probing:
            # A probe's state is not the run's: record the value, decide nothing on it.
            self._log_metrics([("val_loss_probe", at, value)])
            return
        self._engine.note_validation(at, value)
        self._val_points += 1
        detector = self._detectors["val"]
        before = detector.state
        # The latest parameter distance (from the last flush) lets the validation series see
        # hidden progress too: grokking is a flat validation loss while the weights move.
        distances = self._evidence.series("param_distance")[1]
        state = detector.update(at, value, distance=distances[-1] if distances.size else None)
        self._evidence.add_series("val_loss", [at], [value])
        self._log_metrics([("val_loss", at, value)])
        self._after_detect("val", at, before, state)

    def flush(self) -> None:
        """Run the pipeline now and wait until the run store holds everything recorded so far.

        The automatic flush every ``flush_every`` steps hands its batch to the store's writer
        thread and returns at once; this call also waits for the commit, so a process killed
        after it returns loses nothing recorded before it.
        """
        if self._closed:
            if self._signalled:
                return
            raise RuntimeError("Guard.flush() after close(): create a new Guard to keep monitoring")
        if self._signal_pending:
            self._close_on_signal(self._signal_pending)
            return
        self._flush()
        self._recorder.flush(wait=True)

    # -- the pipeline -------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._sync is not None:
            self._sync.check_in("flush", self._hub.step)  # before the hub's own collectives
        frame = self._hub.flush()
        if self._sync is not None:
            # as the taps declare: the mean loss over ranks, rank 0's detector inputs
            self._sync.merge_frame(frame, self._hub.reductions())
        elif not self._late_dist_warned and distributed_world() > 1:
            self._late_dist_warned = True
            logger.warning(
                "unstuck: torch.distributed was initialised after this Guard was built, so its "
                "ranks decide on their own losses; build the Guard after init_process_group"
            )
        step = max(frame.step - 1, 0)
        self._warn_if_no_optimizer_step()
        self._flushed_at = self._hub.step
        self._log_metrics(self._metric_rows(frame.signals, step))
        loss = frame.signals.get("loss")
        if self._engine.probing:
            # Probe steps are recorded in the store but feed neither detection nor diagnosis:
            # a sweep's blow-up or a losing branch is not the run's own trajectory.
            if loss is not None:
                events = self._engine.advance_probe(
                    step, np.asarray(loss[0], dtype=np.int64), np.asarray(loss[1], dtype=float)
                )
                self._emit(step, "train", events)
        else:
            self._evidence.add_frame(frame)
            # unstuck's own factor on the LR, beside the user's lr/<group>: a warm-up or a
            # restart that unstuck ran is part of the LR the rules read.
            self._evidence.add_series("lr_multiplier", [step], [self._lr.current()])
            self._detect_train(step, loss, frame.signals)
        self._next_flush = self._hub.step + (self._engine.flush_hint(step) or self.flush_every)
        self._recorder.flush(wait=False)  # committed by the writer thread, off the step

    def _warn_if_no_optimizer_step(self) -> None:
        """Every signal but the loss comes from the optimizer's step hooks: a loop that never
        steps this optimizer (or steps another one) is watched half blind, so say so once."""
        hub = self._hub
        if self._no_step_warned or hub.opt_steps or hub.step < self._accumulation.steps:
            return
        self._no_step_warned = True
        if self._lead:
            logger.warning(
                "unstuck: no optimizer.step() seen in %d guard.step calls; call "
                "optimizer.step() before guard.step(loss), on the optimizer the Guard was "
                "built with",
                hub.step,
            )

    def _detect_train(self, step: int, loss: Any, signals: Mapping[str, Any]) -> None:
        frame_signals = signals
        if loss is not None:
            distance = frame_signals.get("param_distance")
            detector = self._detectors["train"]
            before = detector.state
            snr = frame_signals.get("grad_snr")
            state = detector.update_many(
                loss[0],
                loss[1],
                distance=distance,
                gradient_snr=snr[1][-1] if snr else None,
            )
            self._after_detect("train", step, before, state)
            values = np.asarray(loss[1], dtype=float)
            finite = bool(np.all(np.isfinite(values)))
            level = float(values.mean()) if finite and values.size else math.nan
            self._engine.note_healthy(step, state, finite, level=level)

    def _metric_rows(self, signals: Mapping[str, Any], step: int) -> list[tuple[str, int, float]]:
        rows: list[tuple[str, int, float]] = []
        for name, value in signals.items():
            if isinstance(value, Series):
                rows += [(name, int(s), float(v)) for s, v in zip(value.steps, value.values)]
        rows.append(("lr_multiplier", step, self._lr.value))  # one row per flush: its cadence
        momentum = momentum_of(self.optimizer)
        if momentum is not None:
            rows.append((MOMENTUM_SERIES, step, momentum))  # add_momentum shows in the store
        per_tensor = signals.get("grad_norm_per_tensor")
        if isinstance(per_tensor, np.ndarray) and per_tensor.size:
            means = per_tensor.mean(axis=0)
            rows += [(f"grad_norm/{n}", step, float(v)) for n, v in zip(self._hub.ctx.names, means)]
        return rows

    def _after_detect(self, series: str, step: int, before: str, state: str) -> None:
        detector = self._detectors[series]
        plateau = detector.current
        changed = state != before
        if changed:
            payload = state_payload(series, before, state, plateau, detector.stats())
            self._record_event("state", step, payload)
        events = self._engine.verify(step, self._loss_history()) if series == "train" else []
        if any(
            kind == "action_outcome" and p.get("outcome") == "rolled_back" for kind, p in events
        ):
            # The rollback put the detectors back too: decide on the state they hold now (the
            # plateau the action was taken on), so the policy moves to its next rung there.
            state, plateau = detector.state, detector.current
        new_findings = self._diagnose(step, state, series)
        if series == "train":
            events += self._engine.decide(
                step, state, self._current_findings, self._loss_history(), plateau
            )
        acted = self._take_events(step, events)
        shown_state = (
            state if changed and (state in NOTABLE_STATES or before in NOTABLE_STATES) else None
        )
        if not self._lead:
            pass  # rank 0 prints what every rank did
        elif shown_state is not None or new_findings or acted:
            line = format_event_line(
                step,
                series=series,
                state=shown_state,
                plateau=plateau,
                findings=new_findings,
                actions=acted,
                lrs=self._config_lrs() if new_findings else (),
            )
            if line:  # empty when the only news is a symptom whose root is already named
                logger.info(line)
        elif changed:
            logger.debug("step %d %s (%s)", step, state, series)

    def _emit(self, step: int, series: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Record the engine's events and print a console line for the actions among them."""
        acted = self._take_events(step, events)
        if acted and self._lead:
            logger.info(format_event_line(step, series=series, actions=acted))

    def _take_events(
        self, step: int, events: list[tuple[str, dict[str, Any]]]
    ) -> list[ActionRecord]:
        """Store the engine's events; keep ``.actions`` current (one entry per action)."""
        for kind, payload in events:
            self._record_event(kind, step, payload)
        return merge_action_events(self._actions, events)

    def _probe_curvature(self, step: int, state: str, series: str) -> None:
        """Measure curvature once per training-loss stall; forget it when the stall ends.

        A stall is a plateau, or hidden progress: a saddle escape looks like hidden progress
        (the weights grow out of it slowly), so the curvature is measured there too.
        """
        if series != "train":
            return
        plateau = self._detectors["train"].current
        if state not in FLAT_STATES:
            if self._curvature_for is not None:
                self._evidence.set("curvature", None)
                self._curvature_for = None
            return
        key = plateau.start if plateau is not None else -1
        if self._curvature_for == key:
            return
        self._curvature_for = key
        result = self._curvature.run(self._probe_batch)
        result["plateau_start"] = plateau.start if plateau is not None else None
        self._evidence.set("curvature", result)
        # Dated at the decision it informs, so a replay of the store reads it there too.
        self._record_event("probe", step, {"probe": "curvature", **primitive(result)})

    def _diagnose(self, step: int, state: str, series: str) -> list[Finding]:
        if self._sync is None:
            findings = self._run_rules(step, state, series)
        else:
            # Rank 0 diagnoses (the rules read rank-local signals); every rank gets its findings.
            findings = self._sync.lead_decides(lambda: self._run_rules(step, state, series))
        # A finding the pending action explains (an LR it raised driving the loss up) is that
        # action's effect, recorded in its evidence and judged by its verdict: not a cause in
        # the user's run, and nothing for the policy to act on.
        findings = [f for f in findings if not self._engine.note_effect(f)]
        self._current_findings = findings
        new = self._finding_log.record(findings, step)
        for finding in new:
            self._record_event("finding", step, finding.to_dict())
        return new

    def _run_rules(self, step: int, state: str, series: str) -> list[Finding]:
        self._probe_curvature(step, state, series)
        extra = {
            "detector_state": state,
            "detector_series": series,
            "detector_stats": primitive(self._detectors[series].stats()) if step else {},
            "lr_multiplier": self._lr.value,
            # read each time: add_momentum (ours) or the user may change it mid-run
            "optimizer_momentum": momentum_of(self.optimizer),
            "optimizer_beta2": beta2_of(self.optimizer),
        }
        evidence = self._evidence.build(step, extra)
        findings = run_rules(
            evidence,
            continuous_only=state not in DIAGNOSE_ON,
            known_roots=self._finding_log.roots(step),
        )
        multiplier = self._lr.value
        stamped = []
        for f in findings:
            changes: dict[str, Any] = {"series": series} if f.series != series else {}
            if multiplier != 1.0:
                # A remedy's LR factor is relative to the LR the run had when found, which
                # unstuck's multiplier was part of: the console turns it into an LR to try.
                changes["evidence"] = {**f.evidence, "lr_multiplier": multiplier}
            stamped.append(dataclasses.replace(f, **changes) if changes else f)
        return stamped

    def _record_event(self, kind: str, step: int, payload: dict[str, Any]) -> None:
        self._recorder.log_event(kind, step, payload)

    def _log_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        self._recorder.log_metrics(rows)

    def _loss_history(self) -> tuple[np.ndarray, np.ndarray]:
        return self._evidence.series("loss")

    def _capture_extra(self) -> dict[str, Any]:
        """The Guard's own state that decides what happens next, for snapshots (besides the
        handles the engine captures itself)."""
        extra: dict[str, Any] = {
            "accumulated": self._accumulated,
            "detectors": {k: d.state_dict() for k, d in self._detectors.items()},
            "evidence_step": self._hub.step,
            "opt_steps": self._hub.opt_steps,
        }
        if self._accumulation.owned:
            # A flush may land mid-window: the gradients summed so far belong to the state, or
            # a rollback would resume the window with the thrown-away branch's partial sums.
            extra["grads"] = [p.grad for p in self._hub.ctx.params]  # cloned by the snapshot
        return extra

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        """The engine restores the handles (LR multiplier, clip, accumulation, stop) itself.

        The evidence forgets the undone steps, as the detectors do: the next rung's verdict
        and the rules compare against the restored run, not the branch that was thrown away.
        The optimizer-state tap learns how many optimizer steps were undone, so a restored
        optimizer is not read as one whose state was lost.
        """
        self._accumulated = int(extra.get("accumulated", 0))
        grads = extra.get("grads")
        if grads is not None and len(grads) == len(self._hub.ctx.params):
            for p, grad in zip(self._hub.ctx.params, grads):
                if grad is None:
                    p.grad = None
                elif p.grad is not None and p.grad.shape == grad.shape:
                    p.grad.copy_(grad)
                else:
                    p.grad = grad.to(device=p.device, dtype=p.dtype, copy=True)
        for name, state in extra["detectors"].items():
            self._detectors[name].load_state_dict(state)
        if "evidence_step" in extra:
            self._evidence.forget_after(int(extra["evidence_step"]))
        if "opt_steps" in extra:  # the optimizer's state now counts from the snapshot
            self._hub.ctx.undone_opt_steps += self._hub.opt_steps - int(extra["opt_steps"])

    def _evaluate(self) -> list[float] | None:
        """Branch-trial scores: this rank's, averaged over the ranks under torch.distributed
        (every rank's engine asks at the same point, so every rank gathers)."""
        scores = self._score_probe_set()
        return scores if self._sync is None else self._sync.mean_scores(scores)

    def _score_probe_set(self) -> list[float] | None:
        """The loss on the kept probe set (or ``probe_fn``), in eval mode, without gradients.

        Branch trials compare remedies on these same batches. Eval mode keeps BatchNorm
        statistics and dropout out of the score; every module's mode is put back after.
        """
        if self._probe_fn is None and (self._loss_fn is None or not self._kept_batches):
            return None
        model = self._probe_model  # the module itself, not a DDP wrapper
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                if self._probe_fn is not None:
                    values = [self._probe_fn(model)]
                else:
                    values = [self._loss_fn(model(b[0]), b[1]) for b in self._kept_batches]
        finally:
            for module, mode in modes:
                module.training = mode
        return [float(torch.as_tensor(v).detach().float().mean()) for v in values]

    # -- what the user reads ------------------------------------------------------------------
    @property
    def plateaus(self) -> list[Plateau]:
        """Every plateau found so far on train and validation loss, by start step."""
        found = [p for d in self._detectors.values() for p in d.plateaus]
        return sorted(found, key=lambda p: (p.start, p.series))

    @property
    def findings(self) -> list[Finding]:
        """Every finding recorded so far, in order."""
        return list(self._finding_log.findings)

    @property
    def actions(self) -> list[ActionRecord]:
        """Every action taken so far; ``outcome`` says whether it was kept or rolled back."""
        return list(self._actions)

    @property
    def state(self) -> DetectorState:
        """The training-loss detector's current state (a ``str``: ``guard.state == "plateau"``)."""
        return self._detectors["train"].state

    @property
    def lr_multiplier(self) -> float:
        """unstuck's factor over the user's LR schedule (1.0 until an LR action)."""
        return self._lr.value

    @property
    def steps(self) -> int:
        return self._hub.step

    @property
    def run_dir(self) -> Path | None:
        return self._recorder.run_dir

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to decide as this one would; tensors and primitives."""
        return {
            "version": STATE_VERSION,
            "hub": self._hub.state_dict(),
            "evidence": self._evidence.state_dict(),
            "detectors": {k: d.state_dict() for k, d in self._detectors.items()},
            "lr": self._lr.state_dict(),
            "engine": self._engine.state_dict(),
            "controls": {
                "clip": self._clip.state_dict(),
                "accumulation": self._accumulation.state_dict(),
                "stop": self._stop.state_dict(),
                "accumulated": self._accumulated,
            },
            "next_flush": self._next_flush,
            **self._finding_log.state_dict(),  # findings, last_found, last_confidence
            "actions": [a.to_dict() for a in self._actions],
            "val_points": self._val_points,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"Guard.load_state_dict: state version {version!r} is not {STATE_VERSION}; "
                "it was saved by an incompatible unstuck"
            )
        self._hub.load_state_dict(dict(state["hub"]))
        self._evidence.load_state_dict(state["evidence"])
        for name, det_state in state["detectors"].items():
            self._detectors[name].load_state_dict(det_state)
        self._lr.load_state_dict(dict(state["lr"]))
        controls = state.get("controls", {})
        self._clip.load_state_dict(controls.get("clip", {}))
        self._accumulation.load_state_dict(controls.get("accumulation", {}))
        self._stop.load_state_dict(controls.get("stop", {}))
        self._accumulated = int(controls.get("accumulated", 0))
        self._next_flush = int(state.get("next_flush", self._hub.step + self.flush_every))
        self._flushed_at = self._hub.step
        self._finding_log.load_state_dict(state)
        self._actions = [ActionRecord.from_dict(a) for a in state["actions"]]
        self._engine.forget_start()  # a resumed run's start is not this Guard's to restart
        interrupted = self._engine.load_state_dict(dict(state["engine"]))
        self._take_events(
            self._hub.step, [("action_outcome", record.to_dict()) for record in interrupted]
        )
        self._val_points = int(state.get("val_points", 0))

    def summary(self) -> list[str]:
        """The end-of-run summary ``close()`` prints: plateaus, the top findings with the change
        each asks for, the actions and their verdicts, and the LR to put in your config after a
        kept LR rescue. One string per line."""
        return format_summary(
            self._hub.step,
            plateaus=self.plateaus,
            findings=self._finding_log.findings,
            actions=self._actions,
            lrs=self._config_lrs(),
            lr_multiplier=self._lr.value,
            policy=self._policy.name,
        )

    def _config_lrs(self) -> list[float]:
        """Each param group's LR as your config sets it (a scheduler's ``initial_lr``, else the
        group's ``lr``), without unstuck's multiplier. A host read: at a flush or close only."""
        lrs = []
        for group in self.optimizer.param_groups:
            try:
                lrs.append(float(group.get("initial_lr", group["lr"])))
            except (TypeError, ValueError, RuntimeError):
                return []
        return lrs

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Run the pipeline on the last partial window, then release hooks and the store."""
        self._close(pipeline=True)

    def _close_on_signal(self, signum: int, midway: bool = False) -> None:
        """Close because the process got SIGTERM. Under torch.distributed the last window is
        not flushed: its collectives could wait on a rank that is already gone; nor is it when
        the signal cut a step short (``midway``)."""
        if self._closed:
            return
        if self._lead:
            logger.warning(
                "unstuck: got signal %d; closing the run at step %d", signum, self._hub.step
            )
        self._signalled = True
        self._close(pipeline=self._sync is None and not midway)

    def _close(self, pipeline: bool) -> None:
        if self._closed:
            return
        try:
            if not pipeline:
                pass
            elif self._hub.step > self._flushed_at:
                self._flush()
            elif self._sync is not None:
                self._sync.check_in("close", self._hub.step)  # a rank still stepping: raise
            step = max(self._hub.step - 1, 0)
            # A run that ends inside a probe is put back; a pending action is judged on what
            # there is, and undone if it already shows harm.
            if pipeline:
                self._emit(step, "train", self._engine.finish(step, self._loss_history()))
            if self._console and self._lead:
                for line in self.summary():
                    logger.info(line)
        finally:
            self._closed = True
            _OPEN_GUARDS.discard(self)
            _uninstall_sigterm_handler()
            _OPEN_HUBS.get(self.optimizer, weakref.WeakSet()).discard(self._hub)
            self._hub.close()
            self._lr.close()
            self._engine.close()
            if self._average_hook is not None:
                self._average_hook.remove()
            self._recorder.close(steps=self._hub.step)

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Guard(policy={self._policy.name!r}, steps={self._hub.step}, "
            f"state={str(self.state)!r}, "
            f"plateaus={len(self.plateaus)}, findings={len(self._finding_log.findings)}, "
            f"actions={len(self._actions)}, lr_multiplier={self._lr.value:g})"
        )
