"""Keras 3: ``UnstuckCallback``, unstuck's detection, diagnosis and verified LR rescue in ``fit``.

>>> import os; os.environ["KERAS_BACKEND"] = "torch"   # doctest: +SKIP
>>> from unstuck.integrations.keras import UnstuckCallback   # doctest: +SKIP
>>> model.fit(x, y, epochs=20, callbacks=[UnstuckCallback()])   # doctest: +SKIP

Per training batch the callback does a few float operations (docs/keras.md has the cost):

* **The batch's own loss.** Keras reports ``logs["loss"]`` as the running mean since the epoch
  began (REFERENCE.md §5), weighted by batch size. With ``W_k`` the samples seen this epoch, the
  batch's loss is ``b_k = (W_k·m_k − W_{k−1}·m_{k−1}) / (W_k − W_{k−1})``; with equal batches,
  ``k·m_k − (k−1)·m_{k−1}``. ``W_k`` is read from the model's loss tracker, so a short last
  batch is weighted right; without one (a custom ``train_step``) equal batches are assumed.
* Sampled taps, computed on the device and read once per flush: ``‖θ − θ₀‖`` every 16th batch
  (hidden progress), the update/weight ratio every 32nd (and, on the torch backend, the
  gradient norm of that batch), as the Guard samples them.

Every ``flush_every`` batches (default 50, the Guard's cadence) the recovered losses go to a
:class:`~unstuck.detect.PlateauDetector`, the diagnosis rules read what was measured, and the
Guard's own pipeline (:class:`~unstuck.core.Monitor`) decides; ``val_loss``, when logged,
goes to a second detector at each epoch end and is diagnosed as the Guard diagnoses it. Only
LR actions can run here (``lr_scale``, ``lr_range_test``, ``warm_restart``,
``cyclical_bump``); any other remedy is recorded as skipped with the reason. Each action is
preceded by a snapshot of the model's weights **and** every optimizer variable (the iteration
count, the LR variable, the moments), is judged after ``horizon`` batches with
:func:`unstuck.rescue.verify.judge` on the recovered batch losses, and is rolled back exactly
when it hurt.

LR changes are unstuck's multiplier over the user's LR: set on the LR variable just before each
batch and put back right after, so Keras LR callbacks keep working. A ``LearningRateSchedule``
(or any callable LR) cannot be scaled: ``on_train_begin`` says so, unless ``policy="observe"``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unstuck.core import FrontEndHooks, Monitor, MonitorResults
from unstuck.integrations._keras_support import (
    KerasLR,
    batch_loss_from_running_mean,
    import_keras,
    keras_snapshot,
    restore_keras_snapshot,
    scalar,
)
from unstuck.integrations._keras_taps import KerasTaps
from unstuck.integrations.defaults import (
    DEFAULT_DISTANCE_EVERY,
    DEFAULT_FLUSH_EVERY,
    DEFAULT_UPDATE_RATIO_EVERY,
)
from unstuck.record.console import LOGGER_NAME, ensure_console_handler
from unstuck.record.recorder import Recorder, make_sinks
from unstuck.rescue import Controls, RescueEngine, Snapshot, make_policy
from unstuck.rescue.engine import (
    DEFAULT_COOLDOWN,
    DEFAULT_HORIZON,
    DEFAULT_PROBE_BUDGET,
    DEFAULT_SNAPSHOT_MEMORY,
)
from unstuck.rescue.policy import Policy, Proposal
from unstuck.signals.host import Frame, Series

__all__ = [
    "KERAS_ACTIONS",
    "KerasLR",
    "UnstuckCallback",
    "batch_loss_from_running_mean",
    "keras_snapshot",
    "restore_keras_snapshot",
]

logger = logging.getLogger(LOGGER_NAME)

# Checked at every import of this module (not only the first of its helpers): a missing or
# mis-configured Keras is a one-line ImportError that names the fix.
keras = import_keras()

if TYPE_CHECKING:
    _Callback = object
else:
    _Callback = keras.callbacks.Callback

# Actions that only turn the LR multiplier: the ones a Keras callback can apply (the others need
# handles only the Guard owns: torch optimizer state, clipping, accumulation, best weights).
KERAS_ACTIONS = frozenset({"lr_scale", "lr_range_test", "warm_restart", "cyclical_bump"})
STATE_VERSION = 1


class _KerasEngine(RescueEngine):
    """The Guard's engine with Keras snapshots, restricted to LR actions."""

    def __init__(
        self, controls: Controls, policy: Policy, *, model_of: Callable[[], Any], **kw: Any
    ) -> None:
        self._model_of = model_of
        super().__init__(controls, policy, **kw)

    def capture(self, step: int) -> Snapshot:
        handles = {"lr": self.controls.lr.state_dict()}
        return keras_snapshot(
            self._model_of(), step, {"controls": handles, **self._capture_extra()}
        )

    def restore(self, snap: Snapshot) -> None:
        restore_keras_snapshot(self._model_of(), snap)
        handles = snap.extra.get("controls")
        if handles is not None:
            self.controls.lr.load_state_dict(dict(handles["lr"]))
        self._restore_extra(snap.extra)

    def _why_not(
        self, step: int, proposal: Proposal, state: str = "", now: float = math.inf
    ) -> str | None:
        if proposal.action not in KERAS_ACTIONS:
            return (
                f"{proposal.action} is not available in the Keras callback (it applies LR "
                "actions only); see the finding's evidence to apply it yourself"
            )
        return super()._why_not(step, proposal, state, now)


class UnstuckCallback(MonitorResults, _Callback):
    """unstuck for ``model.fit``: detection on true batch losses, diagnosis, verified LR rescue.

    Args:
        policy: ``"observe"`` (the default, as for the Guard and the other callbacks: detect,
            diagnose and report; change nothing), ``"rescue"`` (the Guard's ladder, LR actions
            only), or a list of LR actions tried in order on each plateau, oscillation or
            divergence (``["lr_range_test", ("lr_scale", {"factor": 0.3})]``).
        run_dir: directory for the run store (``unstuck.sqlite``) and ``report.html``, as the
            Guard writes them; one run per ``fit``, opened when it begins (an unwritable
            directory fails there, before the first batch) and closed when it ends.
        flush_every: batches between decisions.
        horizon: batches an action runs before it is judged.
        cooldown: batches after a kept action before the next one.
        probe_budget: the largest share of the batches so far that range tests may spend.
        snapshot_memory: bytes of snapshots held in memory before they spill to disk.
        monitor_val: the ``logs`` key of the validation loss watched by a second detector at each
            epoch end (``"val_loss"`` by default, as in the Lightning callback); ``None`` turns
            it off. ``True``/``False`` are read as ``"val_loss"``/``None``.
        console: print one line per event through the ``unstuck`` logger.
        detector_options: keyword arguments for both :class:`~unstuck.detect.PlateauDetector`.
        meta: extra metadata kept with the run (JSON values).
        tensorboard: a log directory to mirror every metric, finding and action to.
        mlflow: ``True`` to mirror them to the active MLflow run, or an
            :class:`~unstuck.record.sinks.MlflowSink`.
        report: write ``run_dir/report.html`` when ``fit`` ends.

    After ``fit``: ``callback.plateaus``, ``callback.findings``, ``callback.actions`` (name,
    step, reason, outcome, evidence), ``callback.batch_losses`` (the recovered losses) and
    ``callback.lr_multiplier``. Put it last in ``callbacks=``: a per-batch LR callback listed
    before it sets the LR that the multiplier then scales.
    """

    if TYPE_CHECKING:
        model: Any  # set by Keras (``set_model``) before training begins

    def __init__(
        self,
        policy: str | Sequence[Any] = "observe",
        run_dir: str | os.PathLike[str] | None = None,
        *,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        horizon: int = DEFAULT_HORIZON,
        cooldown: int = DEFAULT_COOLDOWN,
        probe_budget: float = DEFAULT_PROBE_BUDGET,
        snapshot_memory: int = DEFAULT_SNAPSHOT_MEMORY,
        monitor_val: str | bool | None = "val_loss",
        console: bool = True,
        detector_options: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        tensorboard: str | os.PathLike[str] | None = None,
        mlflow: Any = False,
        report: bool = True,
    ) -> None:
        super().__init__()
        make_sinks("UnstuckCallback", tensorboard, mlflow, build=False)  # checks, opens nothing
        if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
            raise TypeError(
                f"UnstuckCallback: run_dir must be a directory path, got {type(run_dir).__name__}"
            )
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._meta = dict(meta or {})
        self._record_options: dict[str, Any] = {
            "tensorboard": tensorboard,
            "mlflow": mlflow,
            "report": report,
        }
        if policy == "branch" or not (
            policy in ("rescue", "observe") or isinstance(policy, (list, tuple))
        ):
            raise ValueError(
                "UnstuckCallback: policy must be 'rescue', 'observe' or a list of LR actions "
                f"({', '.join(sorted(KERAS_ACTIONS))}), got {policy!r}"
            )
        if isinstance(policy, (list, tuple)):
            names = [item if isinstance(item, str) else item[0] for item in policy]
            other = [n for n in names if n not in KERAS_ACTIONS]
            if other:
                raise ValueError(
                    f"UnstuckCallback: {other} cannot run in a Keras callback; it applies "
                    f"LR actions only ({', '.join(sorted(KERAS_ACTIONS))})"
                )
        self._policy = make_policy(policy)  # validates action names and parameters
        for name, value, least in (
            ("flush_every", flush_every, 1),
            ("horizon", horizon, 1),
            ("cooldown", cooldown, 0),
            ("snapshot_memory", snapshot_memory, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(
                    f"UnstuckCallback: {name} must be an int >= {least}, got {value!r}"
                )
        if not (isinstance(probe_budget, (int, float)) and 0 <= probe_budget <= 1):
            raise ValueError(
                f"UnstuckCallback: probe_budget must be a share in [0, 1], got {probe_budget!r}"
            )
        self.flush_every = flush_every
        if isinstance(monitor_val, bool):
            monitor_val = "val_loss" if monitor_val else None
        if monitor_val is not None and not isinstance(monitor_val, str):
            raise TypeError(
                "UnstuckCallback: monitor_val must be the logs key of the validation loss (a str) "
                f"or None, got {monitor_val!r}"
            )
        self.monitor_val: str | None = monitor_val
        self._console = bool(console)
        if console:
            ensure_console_handler()
        self._lr = KerasLR(None)
        # The optimizer is the model's, known when fit begins; snapshots read the model then.
        self._controls = Controls(None, None, self._lr)  # type: ignore[arg-type]
        self._monitor = Monitor(
            self._controls,
            self._policy,
            None,  # a recorder per fit, from its start to its end
            flush_every=flush_every,
            engine_type=functools.partial(_KerasEngine, model_of=lambda: self.model),
            engine_options={
                "horizon": horizon,
                "cooldown": cooldown,
                "probe_budget": float(probe_budget),
                "snapshot_memory": snapshot_memory,
            },
            detector_options=detector_options,
            hooks=FrontEndHooks(
                capture_extra=self._capture_extra, restore_extra=self._restore_extra
            ),
        )
        self.detectors = self._monitor.detectors
        self._fixed_distance_scale = "distance_scale" in dict(detector_options or {})
        self._began = False  # fit has begun at least once: the model and optimizer are known
        self._loaded: Mapping[str, Any] | None = None  # a state loaded before fit()
        self.batches = 0  # training batches run, over every fit() this callback joined
        self._next_flush = flush_every
        # The recovered losses of the batches since the last flush.
        self._steps: list[int] = []
        self._values: list[float] = []
        self._all_steps: list[int] = []
        self._all_values: list[float] = []
        # Running-mean inversion, reset at every epoch start.
        self._previous_mean = 0.0
        self._previous_weight = 0.0
        self._epoch_nonfinite = False
        self._tracker: Any = None
        self._no_loss_warned = False
        self._taps = KerasTaps(DEFAULT_DISTANCE_EVERY, DEFAULT_UPDATE_RATIO_EVERY)

    # -- reading ----------------------------------------------------------------------------

    @property
    def probing(self) -> bool:
        """True while a range test measures on the run's next batches: the weights then are
        not the run's (they go back when it ends), so skip checkpoints and evaluations."""
        return self._monitor.probing

    @property
    def lr_multiplier(self) -> float:
        """unstuck's factor over your LR (1.0 until an action changes it)."""
        return self._lr.value

    @property
    def batch_losses(self) -> tuple[np.ndarray, np.ndarray]:
        """Every recovered batch loss, as ``(steps, losses)`` (step = batch index over the run,
        from 0; range-test batches included: they are training steps too)."""
        return np.asarray(self._all_steps, dtype=np.int64), np.asarray(self._all_values)

    # -- Keras hooks ------------------------------------------------------------------------
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("UnstuckCallback: the model has no optimizer; compile it first")
        self._lr.variable = self._lr_variable(optimizer)
        self._controls.optimizer = optimizer
        self._tracker = self._find_tracker()
        if not self._taps.anchored:
            scale = self._taps.anchor(self.model)
            if scale is not None and not self._fixed_distance_scale:
                # Hidden progress means the weights moved by a share of their own size, not of
                # a distance that starts at zero (the Guard's rule: a creep at a tiny LR is no
                # motion).
                for detector in self.detectors.values():
                    detector.distance_scale = scale
        self._began = True
        if self._loaded is not None:
            state, self._loaded = self._loaded, None
            self.load_state_dict(state)
        if self._monitor.recorder is None:
            meta = {
                "policy": self._policy.name,
                "framework": "keras",
                "keras_backend": str(keras.backend.backend()),
                **self._meta,
            }
            self._monitor.recorder = Recorder(
                "UnstuckCallback", self.run_dir, meta=meta, **self._record_options
            )

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._previous_mean = 0.0
        self._previous_weight = 0.0
        self._epoch_nonfinite = False

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._taps.before_batch(self.batches)
        self._lr.before_batch()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._lr.after_batch()
        step = self.batches  # the step of this batch's loss (0-based over the run)
        self.batches += 1
        value = self._recover(batch, logs)
        if value is not None:
            self._steps.append(step)
            self._values.append(value)
        self._taps.after_batch(step, self.batches)
        if self.batches >= self._next_flush:
            self._flush()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.monitor_val is None or not logs or logs.get(self.monitor_val) is None:
            return
        self._monitor.validate(max(self.batches - 1, 0), float(logs[self.monitor_val]))

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """Run the pipeline on the last partial window; put a probe in flight back; judge a
        pending action on what it ran (rolled back if that already shows harm)."""
        if not self._began:
            return
        if self._steps:
            self._flush(final=True)
        try:
            self._monitor.finish(max(self.batches - 1, 0))
        finally:
            recorder, self._monitor.recorder = self._monitor.recorder, None
            if recorder is not None:
                recorder.close(steps=self.batches)

    # -- per batch --------------------------------------------------------------------------
    def _recover(self, batch: int, logs: Mapping[str, Any] | None) -> float | None:
        mean = None if logs is None else logs.get("loss")
        if mean is None:
            if not self._no_loss_warned:
                self._no_loss_warned = True
                logger.warning(
                    "UnstuckCallback: no 'loss' in the batch logs; compile the model with a "
                    "loss (nothing is detected without one)"
                )
            return None
        try:
            mean = float(mean)
        except (TypeError, ValueError):
            return None
        weight = self._seen_this_epoch()
        if weight is None or not weight > self._previous_weight:
            weight = max(float(batch + 1), self._previous_weight + 1.0)  # equal batches
        value = batch_loss_from_running_mean(
            mean, weight, self._previous_mean, self._previous_weight
        )
        self._previous_mean, self._previous_weight = mean, weight
        if not math.isfinite(mean):
            self._epoch_nonfinite = True
        return value

    def _find_tracker(self) -> Any:
        """The model's loss tracker (a ``Mean`` named ``loss``), whose sample count weights
        the running mean; ``None`` when the model reports its loss some other way."""
        tracker = getattr(self.model, "_loss_tracker", None)
        if tracker is None:
            metrics = getattr(self.model, "metrics", [])
            tracker = next((m for m in metrics if getattr(m, "name", "") == "loss"), None)
        return tracker if tracker is not None and hasattr(tracker, "count") else None

    def _seen_this_epoch(self) -> float | None:
        if self._tracker is None:
            return None
        count = scalar(self._tracker.count.value)
        return count if count > 0 else None

    # -- the window goes to the Monitor -----------------------------------------------------
    def _flush(self, *, final: bool = False) -> None:
        step = max(self.batches - 1, 0)
        steps, values = self._steps, self._values
        self._steps, self._values = [], []
        self._all_steps += steps
        self._all_values += values
        signals: dict[str, Any] = dict(self._taps.take())
        if steps:
            bad = sum(1 for v in values if not math.isfinite(v))
            signals["loss"] = Series(steps, values)
            signals["nonfinite_loss"] = Series([step], [float(bad)])
        # The user's own LR (the multiplier is not theirs), read once for the store and the rules.
        if self._lr.variable is not None:
            signals["lr/0"] = Series([step], [scalar(self._lr.variable.value)])
        update = self._monitor.observe(step, Frame(step + 1, signals), final=final)
        self._next_flush = self.batches + update.next_window

    def _capture_extra(self) -> dict[str, Any]:
        return {"evidence_step": self.batches}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        if self._epoch_nonfinite and self._tracker is not None:
            # The epoch's running mean holds the non-finite values, so every later batch would
            # read as non-finite too: restart it from the restored weights.
            self._tracker.reset_state()
            self._previous_mean = self._previous_weight = 0.0
            self._epoch_nonfinite = False

    # -- the LR variable --------------------------------------------------------------------
    def _lr_variable(self, optimizer: Any) -> Any:
        """The optimizer's LR variable; a one-line error when it is a schedule (unless the
        policy only observes)."""
        lr = optimizer.learning_rate
        if isinstance(lr, keras.Variable):
            return lr
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        source = getattr(inner, "_learning_rate", lr)
        if isinstance(source, keras.optimizers.schedules.LearningRateSchedule):
            what = f"a LearningRateSchedule ({type(source).__name__})"
        else:
            what = f"a {type(source).__name__}, not a variable"
        if self._policy.acts:
            raise TypeError(
                f"UnstuckCallback: the optimizer's learning_rate is {what}; unstuck cannot scale "
                "a schedule object. Give the optimizer a float learning_rate and schedule it "
                "with a Keras callback (keras.callbacks.LearningRateScheduler), or pass "
                "UnstuckCallback(policy='observe') to only detect"
            )
        return None

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives (``torch.load(weights_only=True)`` reads them back): the
        detectors, the evidence, the LR multiplier, the findings, the actions and the engine,
        whose pending action keeps its snapshot so a resumed run still verifies it (and can roll
        it back). A range test in flight is saved as its snapshot and put back on resume."""
        return {
            "version": STATE_VERSION,
            "batches": self.batches,
            **self._monitor.state_dict(),  # detectors, evidence, engine, findings, actions
            "lr": self._lr.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`; before ``fit`` it is applied when training begins."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"UnstuckCallback.load_state_dict: version {state.get('version')!r} is not "
                f"{STATE_VERSION}; the state was saved by an incompatible unstuck"
            )
        if not self._began:
            self._loaded = state  # the engine needs the model and its optimizer
            return
        self.batches = int(state["batches"])
        self._next_flush = self.batches + self.flush_every
        self._lr.load_state_dict(dict(state["lr"]))
        self._monitor.load_state_dict(state, step=self.batches)
