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
Guard's own :class:`~unstuck.rescue.RescueEngine` and ``Ladder`` decide; ``val_loss``, when
logged, goes to a second detector at each epoch end. Only LR actions can run here
(``lr_scale``, ``lr_range_test``, ``warm_restart``, ``cyclical_bump``); any other remedy is
recorded as skipped with the reason. Each action is preceded by a snapshot of the model's
weights **and** every optimizer variable (the iteration count, the LR variable, the moments),
is judged after ``horizon`` batches with :func:`unstuck.rescue.verify.judge` on the recovered
batch losses, and is rolled back exactly when it hurt.

LR changes are unstuck's multiplier over the user's LR: set on the LR variable just before each
batch and put back right after, so Keras LR callbacks keep working. A ``LearningRateSchedule``
(or any callable LR) cannot be scaled: ``on_train_begin`` says so, unless ``policy="observe"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unstuck.detect.detector import PlateauDetector
from unstuck.diagnose import EvidenceBuilder, run_rules
from unstuck.diagnose.evidence import EvidenceView
from unstuck.diagnose.log import FindingLog
from unstuck.integrations.loop import (
    DEFAULT_DISTANCE_EVERY,
    DEFAULT_FLUSH_EVERY,
    DEFAULT_UPDATE_RATIO_EVERY,
)
from unstuck.record.console import LOGGER_NAME, ensure_console_handler, format_event_line
from unstuck.record.recorder import Recorder, make_sinks, state_payload
from unstuck.rescue import Controls, LRMultiplier, RescueEngine, Snapshot, make_policy
from unstuck.rescue.engine import (
    DEFAULT_COOLDOWN,
    DEFAULT_HORIZON,
    DEFAULT_PROBE_BUDGET,
    DEFAULT_SNAPSHOT_MEMORY,
    merge_action_events,
)
from unstuck.rescue.policy import Policy, Proposal
from unstuck.signals.host import Series
from unstuck.signals.sampling import DEFAULT_MAX_ELEMENTS
from unstuck.types import DIAGNOSE_ON, NOTABLE_STATES, ActionRecord, Finding, Plateau, primitive

__all__ = [
    "KERAS_ACTIONS",
    "KerasLR",
    "UnstuckCallback",
    "batch_loss_from_running_mean",
    "keras_snapshot",
    "restore_keras_snapshot",
]

logger = logging.getLogger(LOGGER_NAME)


def _import_keras() -> Any:
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


keras = _import_keras()

if TYPE_CHECKING:
    _Callback = object
else:
    _Callback = keras.callbacks.Callback

# Actions that only turn the LR multiplier: the ones a Keras callback can apply (the others need
# handles only the Guard owns: torch optimizer state, clipping, accumulation, best weights).
KERAS_ACTIONS = frozenset({"lr_scale", "lr_range_test", "warm_restart", "cyclical_bump"})
STATE_VERSION = 1
_TINY = 1e-12  # keeps the update ratio finite for all-zero weights (as UpdateRatioTap)


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


def _numpy(value: Any) -> np.ndarray:
    """A host copy of a backend tensor (torch tensors directly: numpy 2 warns on the generic
    path, and this runs on the batch path)."""
    if isinstance(value, torch.Tensor):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(keras.ops.convert_to_numpy(value))


def _scalar(value: Any) -> float:
    """One number to the host (``.item()`` on torch: the cheapest read, on the batch path)."""
    if isinstance(value, torch.Tensor):
        return float(value.item())
    return float(_numpy(value))


def _pack(value: Any) -> Any:
    """A copy of one variable's value that shares nothing with it: a tensor when possible."""
    if isinstance(value, torch.Tensor):  # the torch backend: exact, any dtype, same device
        return value.detach().clone()
    array = np.array(_numpy(value), copy=True)
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
        return [_scalar(self.variable.value) * self.current()]

    def close(self) -> None:
        self._handles = []


# ----------------------------------------------------------------------------- the engine


class _KerasEngine(RescueEngine):
    """The Guard's engine with Keras snapshots, restricted to LR actions."""

    def __init__(self, callback: UnstuckCallback, controls: Controls, policy: Policy, **kw: Any):
        self._callback = callback
        super().__init__(
            controls,
            policy,
            capture_extra=callback._capture_extra,
            restore_extra=callback._restore_extra,
            **kw,
        )

    def capture(self, step: int) -> Snapshot:
        handles = {"lr": self.controls.lr.state_dict()}
        return keras_snapshot(
            self._callback.model, step, {"controls": handles, **self._capture_extra()}
        )

    def restore(self, snap: Snapshot) -> None:
        restore_keras_snapshot(self._callback.model, snap)
        handles = snap.extra.get("controls")
        if handles is not None:
            self.controls.lr.load_state_dict(dict(handles["lr"]))
        self._restore_extra(snap.extra)

    def _why_not(self, step: int, proposal: Proposal) -> str | None:
        if proposal.action not in KERAS_ACTIONS:
            return (
                f"{proposal.action} is not available in the Keras callback (it applies LR "
                "actions only); see the finding's evidence to apply it yourself"
            )
        return super()._why_not(step, proposal)


# ----------------------------------------------------------------------------- the callback


class UnstuckCallback(_Callback):
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
        self._recorder: Recorder | None = None  # open from a fit's start to its end
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
        self._engine_options = {
            "horizon": horizon,
            "cooldown": cooldown,
            "probe_budget": float(probe_budget),
            "snapshot_memory": snapshot_memory,
        }
        if isinstance(monitor_val, bool):
            monitor_val = "val_loss" if monitor_val else None
        if monitor_val is not None and not isinstance(monitor_val, str):
            raise TypeError(
                "UnstuckCallback: monitor_val must be the logs key of the validation loss (a str) "
                f"or None, got {monitor_val!r}"
            )
        self.monitor_val: str | None = monitor_val
        options = {"distance_signal": True, **dict(detector_options or {})}
        self.detectors = {
            "train": PlateauDetector("train", **options),
            "val": PlateauDetector("val", **options),
        }
        self._fixed_distance_scale = "distance_scale" in options
        if console:
            ensure_console_handler()
        self.actions: list[ActionRecord] = []
        self._finding_log = FindingLog()
        self._current_findings: list[Finding] = []
        self._evidence = EvidenceBuilder()
        self._lr = KerasLR(None)
        self._engine: _KerasEngine | None = None
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
        self._nonfinite_total = 0.0
        self._tracker: Any = None
        self._no_loss_warned = False
        # Sampled taps: device scalars until the flush reads them in one transfer.
        self._index: list[Any] = []  # per trainable variable: None (all) or sampled positions
        self._scale = 1.0
        self._reference: list[Any] = []
        self._distance_rows: list[Any] = []
        self._distance_steps: list[int] = []
        self._before_update: list[Any] | None = None
        self._ratio_rows: list[Any] = []
        self._ratio_steps: list[int] = []
        self._last_distance: float | None = None

    # -- reading ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The training loss's detector state."""
        return self.detectors["train"].state

    @property
    def plateaus(self) -> list[Plateau]:
        """Every plateau called, training and validation, in the order they were detected."""
        found = [*self.detectors["train"].plateaus, *self.detectors["val"].plateaus]
        return sorted(found, key=lambda p: (p.detected_at or p.start, p.series))

    @property
    def probing(self) -> bool:
        """True while a range test measures on the run's next batches: the weights then are
        not the run's (they go back when it ends), so skip checkpoints and evaluations."""
        return self._engine is not None and self._engine.probing

    @property
    def findings(self) -> list[Finding]:
        """Every finding recorded so far, oldest first (the live list)."""
        return self._finding_log.findings

    @property
    def evidence(self) -> EvidenceView:
        """The history diagnosis reads (series and snapshots), read-only; as ``Guard.evidence``."""
        return EvidenceView(self._evidence)

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
        self._tracker = self._find_tracker()
        if not self._reference:
            self._anchor()
        if self._engine is None:
            self._engine = _KerasEngine(
                self,
                Controls(None, optimizer, self._lr),
                self._policy,
                **self._engine_options,
            )
        if self._loaded is not None:
            state, self._loaded = self._loaded, None
            self.load_state_dict(state)
        if self._recorder is None:
            meta = {
                "policy": self._policy.name,
                "framework": "keras",
                "keras_backend": str(keras.backend.backend()),
                **self._meta,
            }
            self._recorder = Recorder(
                "UnstuckCallback", self.run_dir, meta=meta, **self._record_options
            )

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._previous_mean = 0.0
        self._previous_weight = 0.0
        self._epoch_nonfinite = False

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.batches % DEFAULT_UPDATE_RATIO_EVERY == 0 and self._reference:
            self._before_update = [keras.ops.copy(v) for v in self._view()]
        self._lr.before_batch()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._lr.after_batch()
        step = self.batches  # the step of this batch's loss (0-based over the run)
        self.batches += 1
        value = self._recover(batch, logs)
        if value is not None:
            self._steps.append(step)
            self._values.append(value)
        if self._before_update is not None:
            self._ratio_rows.append(self._update_norms(self._before_update))
            self._ratio_steps.append(step)
            self._before_update = None
        if self.batches % DEFAULT_DISTANCE_EVERY == 0 and self._reference:
            self._distance_rows.append(self._squared_distance())
            self._distance_steps.append(step)
        if self.batches >= self._next_flush:
            self._flush()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.monitor_val is None or not logs or logs.get(self.monitor_val) is None:
            return
        value = float(logs[self.monitor_val])
        at = max(self.batches - 1, 0)
        if self.probing:
            # A probe's state is not the run's: record the value, decide nothing on it.
            self._log_metrics([("val_loss_probe", at, value)])
            return
        self._log_metrics([("val_loss", at, value)])
        detector = self.detectors["val"]
        before = detector.state
        state = detector.update(at, value, distance=self._last_distance)
        self._evidence.add_series("val_loss", [at], [value])
        self._report(at, "val", before, state, [], [])

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """Run the pipeline on the last partial window; put a probe in flight back; judge a
        pending action on what it ran (rolled back if that already shows harm)."""
        if self._engine is None:
            return
        if self._steps:
            self._flush(final=True)
        step = max(self.batches - 1, 0)
        try:
            events = self._take_events(step, self._engine.finish(step, self._loss_history()))
            if events:
                logger.info(format_event_line(step, actions=events))
        finally:
            if self._recorder is not None:
                recorder, self._recorder = self._recorder, None
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
        count = _scalar(self._tracker.count.value)
        return count if count > 0 else None

    def _anchor(self) -> None:
        """Keep θ₀ for the distance (a fixed subset past ``DEFAULT_MAX_ELEMENTS`` coordinates,
        as :class:`~unstuck.signals.sampling.CoordinateSample` does)."""
        variables = list(self.model.trainable_variables)
        sizes = [int(np.prod(v.shape)) for v in variables]
        total = sum(sizes)
        if total == 0:
            return
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
        if not self._fixed_distance_scale:
            # Hidden progress means the weights moved by a share of their own size, not of a
            # distance that starts at zero (the Guard's rule: a creep at a tiny LR is no motion).
            squares = keras.ops.stack([keras.ops.sum(keras.ops.square(r)) for r in self._reference])
            norm = math.sqrt(float(np.sum(_numpy(squares)))) * self._scale
            for detector in self.detectors.values():
                detector.distance_scale = norm

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

    # -- the pipeline -----------------------------------------------------------------------
    def _take_taps(self) -> dict[str, tuple[list[int], list[float]]]:
        out: dict[str, tuple[list[int], list[float]]] = {}
        if self._distance_rows:
            squared = _numpy(keras.ops.stack(self._distance_rows))
            values = [math.sqrt(max(float(s), 0.0)) * self._scale for s in squared]
            out["param_distance"] = Series(self._distance_steps, values)
            self._last_distance = values[-1]
        if self._ratio_rows:
            rows = _numpy(keras.ops.stack(self._ratio_rows))
            rows = rows.astype(np.float64).reshape(-1, 3)
            ratios = np.sqrt(rows[:, 0]) / (np.sqrt(rows[:, 1]) + _TINY)
            out["update_ratio"] = Series(self._ratio_steps, ratios.tolist())
            grads = rows[:, 2]
            if np.all(grads >= 0) or not np.all(np.isfinite(grads)):
                out["grad_norm"] = Series(self._ratio_steps, np.sqrt(grads).tolist())
        self._distance_rows, self._distance_steps = [], []
        self._ratio_rows, self._ratio_steps = [], []
        return out

    def _flush(self, *, final: bool = False) -> None:
        engine = self._engine
        assert engine is not None
        step = max(self.batches - 1, 0)
        steps, values = self._steps, self._values
        self._steps, self._values = [], []
        self._all_steps += steps
        self._all_values += values
        taps = self._take_taps()
        # The user's own LR (the multiplier is not theirs), read once for the store and the rules.
        user_lr = None if self._lr.variable is None else _scalar(self._lr.variable.value)
        self._log_metrics(self._metric_rows(step, steps, values, taps, user_lr))
        if engine.probing:
            # Probe steps feed neither detection nor diagnosis: a sweep's blow-up is not the
            # run's own trajectory (the Guard's rule).
            events = engine.advance_probe(
                step, np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=float)
            )
            acted = self._take_events(step, events)
            if acted:
                logger.info(format_event_line(step, actions=acted))
        elif steps:
            self._detect_train(step, steps, values, taps, user_lr, final)
        self._next_flush = self.batches + (engine.flush_hint(step) or self.flush_every)
        if self._recorder is not None:
            self._recorder.flush(wait=False)  # committed by the store's writer thread

    def _detect_train(
        self,
        step: int,
        steps: list[int],
        values: list[float],
        taps: dict[str, tuple[list[int], list[float]]],
        user_lr: float | None,
        final: bool,
    ) -> None:
        engine = self._engine
        assert engine is not None
        finite = [v for v in values if math.isfinite(v)]
        self._evidence.add_series("loss", steps, values)
        bad = float(len(values) - len(finite))
        self._evidence.add_series("nonfinite_loss", [step], [bad])
        self._nonfinite_total += bad
        self._evidence.set("nonfinite_loss_total", self._nonfinite_total)
        for name, (s, v) in taps.items():
            self._evidence.add_series(name, s, v)
        if user_lr is not None:
            self._evidence.add_series("lr/0", [step], [user_lr])
        detector = self.detectors["train"]
        before = detector.state
        state = detector.update_many(steps, values, distance=taps.get("param_distance"))
        events = engine.verify(step, self._loss_history())
        # A rollback puts the detectors back as they were at the action: decide on that state,
        # not on the one the undone steps led to (else a blow-up that closed the plateau would
        # open a new episode and the rolled-back rung would be proposed again at once).
        state, plateau = detector.state, detector.current
        new_findings = self._diagnose(step, state)
        # Nothing new starts with no step left to judge it on.
        events += engine.decide(
            step, state, self._current_findings, self._loss_history(), plateau, act=not final
        )
        if not final:
            engine.note_healthy(step, state, len(finite) == len(values))
        self._report(step, "train", before, state, new_findings, self._take_events(step, events))

    def _diagnose(self, step: int, state: str) -> list[Finding]:
        """The rules on what was measured (the Guard's ``_run_rules``, on fewer signals)."""
        extra = {
            "detector_state": state,
            "detector_series": "train",
            "detector_stats": primitive(self.detectors["train"].stats()),
            "lr_multiplier": self._lr.value,
        }
        findings = run_rules(
            self._evidence.build(step, extra),
            continuous_only=state not in DIAGNOSE_ON,
            known_roots=self._finding_log.roots(step),
        )
        self._current_findings = findings
        return self._finding_log.record(findings, step)

    def _take_events(
        self, step: int, events: list[tuple[str, dict[str, Any]]]
    ) -> list[ActionRecord]:
        """Record the engine's events; keep ``.actions`` current (one entry per action)."""
        for kind, payload in events:
            self._record_event(kind, step, payload)
        return merge_action_events(self.actions, events)

    def _record_event(self, kind: str, step: int, payload: Mapping[str, Any]) -> None:
        if self._recorder is not None:
            self._recorder.log_event(kind, step, payload)

    def _log_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        if self._recorder is not None:
            self._recorder.log_metrics(rows)

    def _metric_rows(
        self,
        step: int,
        steps: list[int],
        values: list[float],
        taps: Mapping[str, tuple[list[int], list[float]]],
        user_lr: float | None,
    ) -> list[tuple[str, int, float]]:
        """What a flush records, under the Guard's names: every recovered batch loss (range-test
        batches too, as the Guard records its probe steps), the taps, the user's LR and
        unstuck's multiplier."""
        rows = [("loss", s, v) for s, v in zip(steps, values)]
        for name, (tap_steps, tap_values) in taps.items():
            rows += [(name, s, v) for s, v in zip(tap_steps, tap_values)]
        if user_lr is not None:
            rows.append(("lr/0", step, user_lr))
        rows.append(("lr_multiplier", step, self._lr.value))
        return rows

    def _report(
        self,
        step: int,
        series: str,
        before: str,
        state: str,
        findings: list[Finding],
        actions: list[ActionRecord],
    ) -> None:
        changed = state != before
        plateau = self.detectors[series].current
        if changed:
            stats = self.detectors[series].stats()
            self._record_event("state", step, state_payload(series, before, state, plateau, stats))
        for finding in findings:
            self._record_event("finding", step, finding.to_dict())
        notable = state in NOTABLE_STATES or before in NOTABLE_STATES
        shown = state if changed and notable else None
        if shown is None and not findings and not actions:
            if changed:
                logger.debug("step %d %s (%s)", step, state, series)
            return
        line = format_event_line(
            step, series=series, state=shown, plateau=plateau, findings=findings, actions=actions
        )
        if line:  # empty when the only news is a symptom whose root is already named
            logger.info(line)

    def _loss_history(self) -> tuple[np.ndarray, np.ndarray]:
        return self._evidence.series("loss")

    def _capture_extra(self) -> dict[str, Any]:
        return {"detectors": {k: d.state_dict() for k, d in self.detectors.items()}}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        for name, state in extra.get("detectors", {}).items():
            self.detectors[name].load_state_dict(state)
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
            "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
            "evidence": self._evidence.state_dict(),
            "lr": self._lr.state_dict(),
            "engine": self._engine.state_dict() if self._engine is not None else None,
            **self._finding_log.state_dict(),  # findings, last_found, last_confidence
            "actions": [a.to_dict() for a in self.actions],
            "nonfinite_total": self._nonfinite_total,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`; before ``fit`` it is applied when training begins."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"UnstuckCallback.load_state_dict: version {state.get('version')!r} is not "
                f"{STATE_VERSION}; the state was saved by an incompatible unstuck"
            )
        if self._engine is None:
            self._loaded = state  # the engine needs the model and its optimizer
            return
        self.batches = int(state["batches"])
        self._next_flush = self.batches + self.flush_every
        for name, det in state["detectors"].items():
            self.detectors[name].load_state_dict(det)
        self._evidence.load_state_dict(state["evidence"])
        self._lr.load_state_dict(dict(state["lr"]))
        self._finding_log.load_state_dict(state)
        self.actions = [ActionRecord.from_dict(a) for a in state["actions"]]
        self._nonfinite_total = float(state.get("nonfinite_total", 0.0))
        self._evidence.set("nonfinite_loss_total", self._nonfinite_total)
        if state["engine"] is not None:
            for record in self._engine.load_state_dict(state["engine"]):
                self._take_events(self.batches, [("action_outcome", record.to_dict())])
