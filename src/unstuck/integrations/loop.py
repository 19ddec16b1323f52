"""``Guard``: unstuck over a plain PyTorch training loop, in two lines.

>>> guard = unstuck.Guard(model, optimizer)          # doctest: +SKIP
>>> for x, y in loader:                              # doctest: +SKIP
...     loss = loss_fn(model(x), y)
...     optimizer.zero_grad(); loss.backward(); optimizer.step()
...     guard.step(loss)

Gradients and updates are read through the optimizer's step hooks, so ``guard.step`` only hands
over the loss. Every ``flush_every`` steps the gathered values cross to the host in one
transfer and go to the :class:`~unstuck.core.Monitor`, which detects, diagnoses and rescues;
the Guard is its torch front-end: the signal hub, the torch controls and the probes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from unstuck.core import FrontEndHooks, Monitor, MonitorResults
from unstuck.detect import PlateauDetector
from unstuck.integrations._distributed import RankSync, WindowReader, unwrap_model
from unstuck.integrations._facts import config_lrs, live_facts, run_facts
from unstuck.integrations._inputs import (
    LossLike,
    check_guard_options,
    check_type,
    clone_batch,
    component_tensors,
    step_inputs,
    validation_value,
)
from unstuck.integrations._lifetime import (
    hub_closed,
    hub_opened,
    track,
    untrack,
    warn_if_already_guarded,
)
from unstuck.integrations._probes import PROBE_KEEP_EVERY, ProbeSet
from unstuck.integrations._torch_controls import TorchControls, drop_gradients
from unstuck.integrations._torch_taps import guard_rows, torch_taps
from unstuck.integrations.defaults import (
    DEFAULT_ACTIVATION_EVERY,
    DEFAULT_CURVATURE_HVPS,
    DEFAULT_DISTANCE_EVERY,
    DEFAULT_FLUSH_EVERY,
    DEFAULT_GRAD_NOISE_EVERY,
    DEFAULT_GRAD_NORM_EVERY,
    DEFAULT_OPTIMIZER_STATE_EVERY,
    DEFAULT_PRECISION_EVERY,
    DEFAULT_PROBE_BATCHES,
    DEFAULT_UPDATE_RATIO_EVERY,
)
from unstuck.record.console import ensure_console_handler
from unstuck.record.recorder import Recorder
from unstuck.record.rundata import DETECTOR_OPTIONS_KEY, RUN_FACTS_KEY
from unstuck.rescue import make_policy
from unstuck.rescue.engine import (
    DEFAULT_COOLDOWN,
    DEFAULT_HORIZON,
    DEFAULT_PROBE_BUDGET,
    DEFAULT_SNAPSHOT_MEMORY,
)
from unstuck.rescue.policy import Policy
from unstuck.signals import SignalHub
from unstuck.types import primitive

__all__ = ["PROBE_KEEP_EVERY", "Guard", "LossLike"]

logger = logging.getLogger("unstuck")

STATE_VERSION = 1


class Guard(MonitorResults):
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
        grad_norm_every, update_ratio_every, distance_every, grad_noise_every,
        activation_every, optimizer_state_every, precision_every: how often each sampled
            signal is taken (per-tensor gradient norms, update/weight ratios, the distance from
            the start, gradient SNR, activation statistics, the optimizer's state, zero and
            subnormal gradients); docs/guard.md gives what each reads and costs.
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
        check_type("model", model, torch.nn.Module, "pass the nn.Module you train")
        check_type(
            "optimizer",
            optimizer,
            torch.optim.Optimizer,
            "pass the torch.optim optimizer that steps the model",
        )
        horizon, cooldown = check_guard_options(
            flush_every=flush_every,
            dataset_size=dataset_size,
            loss_fn=loss_fn,
            probe_fn=probe_fn,
            curvature_hvps=curvature_hvps,
            horizon=horizon,
            cooldown=cooldown,
            probe_budget=probe_budget,
            snapshot_memory=snapshot_memory,
            probe_batches=probe_batches,
        )
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
        self._console = bool(console)
        if console and self._lead:
            ensure_console_handler()

        # Everything that can reject an argument runs before the store opens and the optimizer
        # gets hooks, so a bad argument leaves neither a half-recorded run nor stray hooks.
        built = torch_taps(
            grad_norm_every=grad_norm_every,
            update_ratio_every=update_ratio_every,
            distance_every=distance_every,
            grad_noise_every=grad_noise_every,
            activation_every=activation_every,
            optimizer_state_every=optimizer_state_every,
            precision_every=precision_every,
            dataset_size=dataset_size,
            scaler=scaler,
        )
        self._clip_tap, self._components_tap = built.clip, built.components
        self._outputs_tap = built.outputs
        options = {"distance_signal": True, **dict(detector_options or {})}
        PlateauDetector("train", **options)  # refuses a bad option now, not after the hooks
        self._controls = TorchControls(optimizer, accumulation_steps)  # validates the argument
        self._clip, self._stop = self._controls.clip, self._controls.stop

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

        warn_if_already_guarded(optimizer, self._lead)
        self._hub = SignalHub(model, optimizer, built.taps)
        hub_opened(optimizer, self._hub)
        self._windows = WindowReader(self._hub, self._sync, self._lead, self._controls.accumulation)
        ctx = self._hub.ctx
        controls = self._controls.attach(self._hub, model, scheduler, scaler)
        self._lr = controls.lr
        if controls.lr_locked and self._policy.acts and self._lead:
            logger.warning("unstuck: %s", controls.lr_locked)
        self._monitor = Monitor(
            controls,
            self._policy,
            self._recorder,
            flush_every=flush_every,
            engine_options={
                "horizon": horizon,
                "cooldown": cooldown,
                "probe_budget": probe_budget,
                "snapshot_memory": snapshot_memory,
                "spill_dir": None if self.run_dir is None else self.run_dir / "snapshots",
            },
            detector_options=options,
            hooks=FrontEndHooks(
                capture_extra=self._capture_extra,
                restore_extra=self._restore_extra,
                evaluate=self._evaluate,
                live_facts=lambda: live_facts(optimizer),
                before_rules=lambda step, state, series: self._probes.measure_curvature(
                    step, state, series, self._monitor
                ),
                config_lrs=lambda: config_lrs(optimizer),
            ),
            sync=self._sync,
            lead=self._lead,
        )
        self._engine = self._monitor.engine
        if "distance_scale" not in options:
            # Hidden progress means the weights moved by a share of their own size, not of a
            # distance that starts at zero (a creep at a tiny LR would qualify otherwise).
            scale = built.distance.reference_norm()
            if self._sync is not None:
                scale = self._sync.from_lead(scale)
            for detector in self._monitor.detectors.values():
                detector.distance_scale = scale
        detector_record = {
            **options,
            "distance_scale": self._monitor.detectors["train"].distance_scale,
        }
        self._recorder.update_meta(**{DETECTOR_OPTIONS_KEY: primitive(detector_record)})
        # Probes run forwards of their own: through a DDP wrapper those would be collectives.
        self._probes = ProbeSet(
            unwrap_model(model),
            list(ctx.params),
            loss_fn=loss_fn,
            probe_fn=probe_fn,
            max_hvps=curvature_hvps,
            keep=probe_batches,
            scores_branches=self._policy.acts,
        )
        self._curvature = self._probes.curvature
        self._next_flush = flush_every
        self._flushed_at = 0
        facts = run_facts(model, optimizer, ctx.names, ctx.params, self._probes.model, self._lead)
        for name, value in facts.items():
            self._monitor.set_fact(name, value)
        # The same facts in the store, so `unstuck analyze RUN_DIR` diagnoses from what the
        # live rules read (docs/analyze.md: a run store is replayed at the Guard's cadence).
        self._recorder.update_meta(**{RUN_FACTS_KEY: primitive(facts)})
        self._monitor.start(self._hub.step)
        self._signalled = False  # closed by SIGTERM: later calls are ignored, not errors
        self._signal_pending = 0  # SIGTERM came in mid-step: close at the next call
        track(self, self._close_on_signal, self._mark_signal_pending)

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
        ``loss_fn``, for the curvature probe) and read float targets' range on the output
        tap's sampled steps (``output_activation``). ``components`` maps names of loss terms
        to their values this step (for the loss-component-dominance rule).
        """
        if (self._closed or self._signal_pending) and self._ended("step"):
            return
        if isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.dtype != torch.bool:
            loss = loss.detach()  # the usual scalar loss: no further checks on the hot path
        else:
            loss, ids, targets = step_inputs(loss, ids, targets)
        if batch is not None and self._probes.wants(self._hub.step, self._monitor.probing):
            self._probes.keep(clone_batch(batch))
        if components and self._components_tap is not None:
            self._components_tap.record(self._hub.step, component_tensors(components))
        if batch is not None and self._outputs_tap is not None:
            self._outputs_tap.record_batch(self._hub.step, batch)
        self._hub.on_loss(loss, ids, targets)
        if self._hub.step >= self._next_flush:
            self._flush()

    def _ended(self, call: str) -> bool:
        """Whether a call must do nothing: the run closed on SIGTERM (now, or at this call
        because the signal came mid-step). A call after the user's ``close()`` raises."""
        if self._closed:
            if self._signalled:
                return True  # the process is ending on SIGTERM; the run is already closed
            raise RuntimeError(
                f"Guard.{call}() after close(): create a new Guard to keep monitoring"
            )
        if self._signal_pending:
            self._close_on_signal(self._signal_pending)
            return True
        return False

    @property
    def _probe_batch(self) -> Any:
        return self._probes.latest

    @property
    def _val_points(self) -> int:
        return self._monitor.val_points

    def should_step(self) -> bool:
        """With ``accumulation_steps``: whether to call ``optimizer.step()`` after this batch.

        Call it once per micro-batch, after ``loss.backward()``. unstuck owns the accumulation:
        gradients are summed by autograd and averaged by unstuck just before the step, so the
        loss needs no division, and a rescue may change the number of micro-batches per step.
        Without ``accumulation_steps`` it is always True.
        """
        return self._controls.should_step()

    def skip_batch(self) -> bool:
        """Whether to skip this batch: True for the batches a rewind asked the loop to skip,
        so the run moves past the data that caused a loss spike (``rewind``, docs/guard.md).

        Call it once per batch, before the forward pass, and ``continue`` when it is True (no
        forward, no ``guard.step``). A loop that never calls it still gets the rewind, without
        the skip. Costs no host sync.
        """
        return self._controls.skip.take()

    # -- seams for front-ends that run every batch themselves (Lightning, the HF Trainer) -----
    def skip_step(self) -> bool:
        """:meth:`skip_batch` for loops that cannot leave a batch out: whether the optimizer
        step about to start is one a rewind asked to skip.

        Call it once per optimizer step, before the step's first forward (under gradient
        accumulation one skip is one optimizer step, all its micro-batches). While it is True,
        call :meth:`drop_gradients` just before ``optimizer.step()``, so the step changes
        neither the weights nor the optimizer's state, and do not call :meth:`step` with the
        step's loss (it is the spike's data). The step is hidden from the signals: the
        optimizer's hooks read and count nothing until the next call, as if the loop had
        skipped the batch.
        """
        skipping = self._controls.skip.take()
        self._hub.hidden = skipping
        return skipping

    def drop_gradients(self, scaler: Any = None) -> None:
        """Set the gradients of every watched parameter to None before a step that
        :meth:`skip_step` skips: torch's optimizers then leave each parameter and its state
        alone. A GradScaler (``scaler``, else the Guard's) that has not unscaled the step's
        gradients does so first, or its ``step`` would refuse an optimizer with no inf check."""
        drop_gradients(self._hub.ctx.params, self.optimizer, scaler or self.scaler)

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
        if self._clip_tap is not None:  # None when no registered rule reads clipping
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

    def validate(self, val_loss: LossLike, step: int | None = None) -> None:
        """Record a validation loss (a host read: call it when you evaluate, not every step).

        ``val_loss``: the numbers ``guard.step`` takes (a tensor, a Python or numpy number, a
        numpy array); one with several elements is averaged. Text and booleans are refused.
        """
        if self._ended("validate"):
            return
        value = validation_value(val_loss)
        at = max(self._hub.step - 1, 0) if step is None else int(step)
        if self._sync is not None:
            at, value = self._sync.mean_value(at, value)  # every rank calls validate
        self._monitor.validate(at, value)

    def flush(self) -> None:
        """Run the pipeline now and wait until the run store holds everything recorded so far.

        The automatic flush every ``flush_every`` steps hands its batch to the store's writer
        thread and returns at once; this call also waits for the commit, so a process killed
        after it returns loses nothing recorded before it.
        """
        if self._ended("flush"):
            return
        self._flush()
        self._recorder.flush(wait=True)

    # -- the pipeline: the hub's window goes to the Monitor -----------------------------------
    def _flush(self, final: bool = False) -> None:
        frame = self._windows.read()
        step = max(frame.step - 1, 0)
        self._flushed_at = self._hub.step
        rows = guard_rows(frame.signals, step, self._hub.ctx.names, self.optimizer)
        update = self._monitor.observe(step, frame, rows=rows, final=final)
        self._next_flush = self._hub.step + update.next_window

    # -- the Monitor's hooks --------------------------------------------------------------------
    def _capture_extra(self) -> dict[str, Any]:
        """The Guard's own state that decides what happens next, for snapshots (the engine
        captures the handles, the Monitor its detectors)."""
        return {
            **self._controls.capture(),
            "evidence_step": self._hub.step,
            "opt_steps": self._hub.opt_steps,
        }

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        """The optimizer-state tap learns how many optimizer steps were undone, so a restored
        optimizer is not read as one whose state was lost."""
        self._controls.restore(extra)
        if "opt_steps" in extra:  # the optimizer's state now counts from the snapshot
            self._hub.ctx.undone_opt_steps += self._hub.opt_steps - int(extra["opt_steps"])

    def _evaluate(self) -> list[float] | None:
        """Branch-trial scores: this rank's, averaged over the ranks under torch.distributed
        (every rank's engine asks at the same point, so every rank gathers)."""
        scores = self._probes.scores()
        return scores if self._sync is None else self._sync.mean_scores(scores)

    # -- what the user reads ------------------------------------------------------------------

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
            **self._monitor.state_dict(),  # detectors, evidence, engine, findings, actions
            "lr": self._lr.state_dict(),
            "controls": self._controls.state_dict(),
            "next_flush": self._next_flush,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"Guard.load_state_dict: state version {version!r} is not {STATE_VERSION}; "
                "it was saved by an incompatible unstuck"
            )
        self._hub.load_state_dict(dict(state["hub"]))
        self._lr.load_state_dict(dict(state["lr"]))
        self._controls.load_state_dict(dict(state.get("controls", {})))
        self._next_flush = int(state.get("next_flush", self._hub.step + self.flush_every))
        self._flushed_at = self._hub.step
        self._monitor.load_state_dict(state, step=self._hub.step)

    def summary(self) -> list[str]:
        """The end-of-run summary ``close()`` prints: plateaus, the top findings with the change
        each asks for, the actions and their verdicts, and the LR to put in your config after a
        kept LR rescue. One string per line."""
        return self._monitor.summary(self._hub.step, config_lrs(self.optimizer))

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Run the pipeline on the last partial window, then release hooks and the store."""
        self._close(pipeline=True)

    def _mark_signal_pending(self, signum: int) -> None:
        self._signal_pending = signum

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
                self._flush(final=True)  # nothing new starts with no step left to judge it
            elif self._sync is not None:
                self._sync.check_in("close", self._hub.step)  # a rank still stepping: raise
            # A run that ends inside a probe is put back; a pending action is judged on what
            # there is, and undone if it already shows harm.
            if pipeline:
                self._monitor.finish(max(self._hub.step - 1, 0))
            if self._console and self._lead:
                for line in self.summary():
                    logger.info(line)
        finally:
            self._closed = True
            untrack(self)
            hub_closed(self.optimizer, self._hub)
            self._hub.close()
            self._controls.close()
            self._monitor.close()
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
            f"plateaus={len(self.plateaus)}, findings={len(self._monitor.findings)}, "
            f"actions={len(self._monitor.actions)}, lr_multiplier={self._lr.value:g})"
        )
