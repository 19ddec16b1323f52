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

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from unstuck.detect import PlateauDetector
from unstuck.diagnose import EvidenceBuilder, run_rules
from unstuck.diagnose.base import ROOT_CONFIDENCE
from unstuck.record.console import ensure_console_handler, format_event_line
from unstuck.record.store import RunStore
from unstuck.rescue import Controls, LRMultiplier, RescueEngine, make_policy
from unstuck.rescue.engine import DEFAULT_COOLDOWN, DEFAULT_HORIZON
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
from unstuck.types import ActionRecord, Finding, Plateau, primitive

__all__ = ["Guard"]

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
PROBE_KEEP_EVERY = 64  # steps between refreshes of the kept probe batch (a clone of one batch)
REFIND_RISE = 0.1  # a finding recorded again sooner when its confidence rose by this much
REFIND_AFTER = 1000  # steps before the same cause is recorded again as a new finding
DIAGNOSE_ON = frozenset({"plateau", "slow", "oscillating", "diverging", "hidden_progress"})
NOTABLE_STATES = frozenset({"plateau", "oscillating", "diverging", "hidden_progress"})


def _check_type(name: str, value: Any, expected: type, hint: str) -> None:
    if not isinstance(value, expected):
        raise TypeError(
            f"Guard: {name} must be a {expected.__name__}, got {type(value).__name__}; {hint}"
        )


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
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"guard.step: component {name!r} has shape {tuple(value.shape)}; pass one "
                    "scalar per loss term"
                )
            out[str(name)] = value.detach().reshape(())
        elif isinstance(value, (int, float)):
            out[str(name)] = torch.tensor(float(value))
        else:
            raise TypeError(
                f"guard.step: component {name!r} must be a tensor or a float, "
                f"got {type(value).__name__}"
            )
    return out


class Guard:
    """Watches a training run: detects plateaus, diagnoses causes, and (optionally) rescues.

    Args:
        model: the module being trained (used for parameter names and snapshots).
        optimizer: the ``torch.optim.Optimizer`` that steps it.
        scheduler: the user's LR scheduler, if any; included in snapshots and rollbacks.
        policy: ``"observe"`` (change nothing), ``"rescue"`` (the default ladder) or a
            :class:`unstuck.rescue.Policy`.
        run_dir: directory for the run store (``unstuck.sqlite``); ``None`` touches no disk.
        dataset_size: number of distinct samples, to check epoch coverage when ``ids`` are given.
        scaler: a ``torch.amp.GradScaler``, included in snapshots; its scale and skipped steps
            are signals for the precision-underflow rule.
        flush_every: steps between host transfers (and between decisions).
        loss_fn: ``loss_fn(model(inputs), targets)`` recomputes the loss on a batch kept from
            ``guard.step(loss, batch=(inputs, targets))``; the curvature probe needs it (or
            ``probe_fn``).
        probe_fn: ``probe_fn(model) -> loss`` recomputes a loss on data of your choice; takes
            precedence over ``loss_fn``.
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
        if console:
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
        if horizon < 1 or cooldown < 0:
            raise ValueError(f"horizon must be >= 1 and cooldown >= 0, got {horizon}, {cooldown}")

        # A store that cannot be written fails here, before any training step.
        self._store = (
            RunStore(run_dir, meta={"policy": self._policy.name, **dict(meta or {})})
            if run_dir is not None
            else None
        )

        self._hub = SignalHub(model, optimizer, taps)
        if "distance_scale" not in options:
            # Hidden progress means the weights moved by a share of their own size, not of a
            # distance that starts at zero (a creep at a tiny LR would qualify otherwise).
            scale = distance_tap.reference_norm()
            for detector in self._detectors.values():
                detector.distance_scale = scale
        # Registered after the hub's hooks, so the LR tap records the user's own schedule.
        self._lr = LRMultiplier(optimizer)
        self._engine = RescueEngine(
            Controls(model, optimizer, self._lr, scheduler, scaler),
            self._policy,
            horizon=horizon,
            cooldown=cooldown,
            capture_extra=self._capture_extra,
            restore_extra=self._restore_extra,
        )
        self._evidence = EvidenceBuilder()
        ctx = self._hub.ctx
        self._curvature = CurvatureProbe(
            model, list(ctx.params), loss_fn=loss_fn, probe_fn=probe_fn, max_hvps=curvature_hvps
        )
        self._probe_batch: Any = None
        self._curvature_for: int | None = None  # start step of the plateau last probed
        self._evidence.set("param_names", list(ctx.names))
        self._evidence.set("param_ndims", [p.ndim for p in ctx.params])
        self._evidence.set("optimizer_type", type(optimizer).__name__)
        self._evidence.set("params_not_in_optimizer", self._params_outside_optimizer())
        self._findings: list[Finding] = []
        self._actions: list[ActionRecord] = []
        self._last_found: dict[str, int] = {}
        self._last_confidence: dict[str, float] = {}
        self._current_findings: list[Finding] = []
        self._val_points = 0
        self._diagnose(step=0, state="unknown", series="train")

    # -- construction helpers -----------------------------------------------------------------
    def _params_outside_optimizer(self) -> list[str]:
        in_optimizer = {id(p) for p in self._hub.ctx.params}
        missing = [
            name
            for name, p in self.model.named_parameters()
            if p.requires_grad and id(p) not in in_optimizer
        ]
        if missing:
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
        loss: torch.Tensor | float,
        *,
        ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        batch: Any = None,
        components: Mapping[str, torch.Tensor | float] | None = None,
    ) -> None:
        """Record this step's loss (after ``optimizer.step()``). No host sync happens here.

        ``loss`` is the scalar training loss, or per-sample losses (``reduction="none"``)
        together with ``ids`` (dataset indices) and optionally ``targets`` (class labels).
        ``batch=(inputs, targets)`` lets the Guard keep a probe batch now and then (with
        ``loss_fn``, for the curvature probe). ``components`` maps names of loss terms to their
        values this step (for the loss-component-dominance rule).
        """
        if self._closed:
            raise RuntimeError("Guard.step() after close(): create a new Guard to keep monitoring")
        if not isinstance(loss, torch.Tensor):
            if isinstance(loss, (int, float)):
                loss = torch.tensor(float(loss))
            else:
                raise TypeError(
                    f"guard.step(loss) needs a tensor or a float, got {type(loss).__name__}"
                )
        loss = loss.detach()
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
            and self._curvature.needs_batch  # no clone the probe would never read
        ):
            self._probe_batch = _clone_batch(batch)
        if components:
            self._components_tap.record(self._hub.step, _component_tensors(components))
        self._hub.on_loss(loss, ids, targets)
        if self._hub.step % self.flush_every == 0:
            self._flush()

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over the optimizer's parameters, recorded.

        Call it where you would call torch's (after ``backward``, before ``optimizer.step``);
        the pre-clip norm stays on the device and feeds the over-clipping rule.
        """
        if not (isinstance(max_norm, (int, float)) and max_norm > 0):
            raise ValueError(
                f"clip_grad_norm_: max_norm must be a positive number, got {max_norm!r}"
            )
        total = torch.nn.utils.clip_grad_norm_(self._hub.ctx.params, max_norm, norm_type)
        self._clip_tap.record(self._hub.step, total, float(max_norm))
        return total

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

    def validate(self, val_loss: torch.Tensor | float, step: int | None = None) -> None:
        """Record a validation loss (a host read: call it when you evaluate, not every step)."""
        if self._closed:
            raise RuntimeError(
                "Guard.validate() after close(): create a new Guard to keep monitoring"
            )
        value = (
            float(val_loss.detach().float().mean())
            if isinstance(val_loss, torch.Tensor)
            else float(val_loss)
        )
        at = max(self._hub.step - 1, 0) if step is None else int(step)
        self._val_points += 1
        detector = self._detectors["val"]
        before = detector.state
        # The latest parameter distance (from the last flush) lets the validation series see
        # hidden progress too: grokking is a flat validation loss while the weights move.
        distances = self._evidence.series("param_distance")[1]
        state = detector.update(at, value, distance=distances[-1] if distances.size else None)
        self._evidence.add_series("val_loss", [at], [value])
        if self._store is not None:
            self._store.log_metrics([("val_loss", at, value)])
        self._after_detect("val", at, before, state)

    def flush(self) -> None:
        """Run the pipeline now and wait until the run store holds everything recorded so far.

        The automatic flush every ``flush_every`` steps hands its batch to the store's writer
        thread and returns at once; this call also waits for the commit, so a process killed
        after it returns loses nothing recorded before it.
        """
        if self._closed:
            raise RuntimeError("Guard.flush() after close(): create a new Guard to keep monitoring")
        self._flush()
        if self._store is not None:
            self._store.flush(wait=True)

    # -- the pipeline -------------------------------------------------------------------------
    def _flush(self) -> None:
        frame = self._hub.flush()
        step = max(frame.step - 1, 0)
        self._evidence.add_frame(frame)
        if self._store is not None:
            self._store.log_metrics(self._metric_rows(frame.signals, step))
        loss = frame.signals.get("loss")
        if loss is not None:
            distance = frame.signals.get("param_distance")
            detector = self._detectors["train"]
            before = detector.state
            snr = frame.signals.get("grad_snr")
            state = detector.update_many(
                loss[0], loss[1], distance=distance, gradient_snr=snr[1][-1] if snr else None
            )
            self._after_detect("train", step, before, state)
        if self._store is not None:
            self._store.flush(wait=False)  # committed by the writer thread, off the step

    def _metric_rows(self, signals: Mapping[str, Any], step: int) -> list[tuple[str, int, float]]:
        rows: list[tuple[str, int, float]] = []
        for name, value in signals.items():
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], list):
                rows += [(name, int(s), float(v)) for s, v in zip(value[0], value[1])]
        rows.append(("lr_multiplier", step, self._lr.value))
        per_tensor = signals.get("grad_norm_per_tensor")
        if isinstance(per_tensor, np.ndarray) and per_tensor.size:
            means = per_tensor.mean(axis=0)
            rows += [(f"grad_norm/{n}", step, float(v)) for n, v in zip(self._hub.ctx.names, means)]
        return rows

    def _after_detect(self, series: str, step: int, before: str, state: str) -> None:
        detector = self._detectors[series]
        plateau = detector.current
        changed = state != before
        if changed and self._store is not None:
            self._store.log_event(
                "state",
                step,
                {
                    "series": series,
                    "from": before,
                    "to": state,
                    "plateau": plateau.to_dict() if plateau else None,
                    "stats": primitive(detector.stats()),
                },
            )
        resolved = self._engine.verify(step, self._loss_history()) if series == "train" else None
        new_findings = self._diagnose(step, state, series)
        action = None
        if series == "train":
            self._engine.new_episode(plateau.start if plateau is not None else None)
            action = self._engine.maybe_act(
                step,
                state,
                self._current_findings,
                self._loss_history(),
                plateau_kind=plateau.kind if plateau is not None else None,
            )
            if action is not None:
                self._actions.append(action)
                self._record_event("action", step, action.to_dict())
        if resolved is not None:
            self._record_event("action_outcome", step, resolved.to_dict())
        shown_state = (
            state if changed and (state in NOTABLE_STATES or before in NOTABLE_STATES) else None
        )
        acted = [a for a in (resolved, action) if a is not None]
        if shown_state is not None or new_findings or acted:
            line = format_event_line(
                step,
                series=series,
                state=shown_state,
                plateau=plateau,
                findings=new_findings,
                actions=acted,
            )
            logger.info(line)
        elif changed:
            logger.debug("step %d %s (%s)", step, state, series)

    def _probe_curvature(self, state: str, series: str) -> None:
        """Measure curvature once per training-loss stall; forget it when the stall ends.

        A stall is a plateau, or hidden progress: a saddle escape looks like hidden progress
        (the weights grow out of it slowly), so the curvature is measured there too.
        """
        if series != "train":
            return
        plateau = self._detectors["train"].current
        if state not in ("plateau", "hidden_progress"):
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
        self._record_event("probe", self._hub.step, {"probe": "curvature", **primitive(result)})

    def _diagnose(self, step: int, state: str, series: str) -> list[Finding]:
        self._probe_curvature(state, series)
        extra = {
            "detector_state": state,
            "detector_series": series,
            "detector_stats": primitive(self._detectors[series].stats()) if step else {},
            "lr_multiplier": self._lr.value,
        }
        evidence = self._evidence.build(step, extra)
        # A root cause found recently still explains today's symptoms (exploding gradients at
        # the start of a plateau explain the noisy steps measured later in it).
        roots = frozenset(
            f.cause
            for f in self._findings
            if f.confidence >= ROOT_CONFIDENCE and step - f.step < REFIND_AFTER
        )
        findings = run_rules(evidence, continuous_only=state not in DIAGNOSE_ON, known_roots=roots)
        findings = [
            Finding(**{**f.__dict__, "series": series}) if f.series != series else f
            for f in findings
        ]
        self._current_findings = findings
        new = []
        for finding in findings:
            last = self._last_found.get(finding.cause)
            last_conf = self._last_confidence.get(finding.cause, 0.0)
            if (
                last is not None
                and step - last < REFIND_AFTER
                and finding.confidence < last_conf + REFIND_RISE
            ):
                continue
            self._last_found[finding.cause] = step
            self._last_confidence[finding.cause] = finding.confidence
            self._findings.append(finding)
            self._record_event("finding", step, finding.to_dict())
            new.append(finding)
        return new

    def _record_event(self, kind: str, step: int, payload: dict[str, Any]) -> None:
        if self._store is not None:
            self._store.log_event(kind, step, payload)

    def _loss_history(self) -> tuple[np.ndarray, np.ndarray]:
        return self._evidence.series("loss")

    def _capture_extra(self) -> dict[str, Any]:
        return {
            "lr": self._lr.state_dict(),
            "detectors": {k: d.state_dict() for k, d in self._detectors.items()},
        }

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self._lr.load_state_dict(extra["lr"])
        for name, state in extra["detectors"].items():
            self._detectors[name].load_state_dict(state)

    # -- what the user reads ------------------------------------------------------------------
    @property
    def plateaus(self) -> list[Plateau]:
        """Every plateau found so far on train and validation loss, by start step."""
        found = [p for d in self._detectors.values() for p in d.plateaus]
        return sorted(found, key=lambda p: (p.start, p.series))

    @property
    def findings(self) -> list[Finding]:
        """Every finding recorded so far, in order."""
        return list(self._findings)

    @property
    def actions(self) -> list[ActionRecord]:
        """Every action taken so far; ``outcome`` says whether it was kept or rolled back."""
        return list(self._actions)

    @property
    def state(self) -> str:
        """The training-loss detector's current state."""
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
        return self._store.path.parent if self._store is not None else None

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
            "findings": [f.to_dict() for f in self._findings],
            "actions": [a.to_dict() for a in self._actions],
            "last_found": dict(self._last_found),
            "last_confidence": dict(self._last_confidence),
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
        self._engine.load_state_dict(dict(state["engine"]))
        self._findings = [Finding.from_dict(f) for f in state["findings"]]
        self._actions = [ActionRecord.from_dict(a) for a in state["actions"]]
        pending = self._engine.pending
        if pending is not None and self._actions and self._actions[-1] == pending.record:
            self._actions[-1] = pending.record  # one object: its verdict shows in .actions
        self._last_found = {str(k): int(v) for k, v in state["last_found"].items()}
        self._last_confidence = {
            str(k): float(v) for k, v in state.get("last_confidence", {}).items()
        }
        self._val_points = int(state.get("val_points", 0))

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Run the pipeline on the last partial window, then release hooks and the store."""
        if self._closed:
            return
        try:
            if self._hub.step % self.flush_every:
                self._flush()
        finally:
            self._closed = True
            self._hub.close()
            self._lr.close()
            if self._store is not None:
                self._store.update_meta(steps=self._hub.step)
                self._store.close()

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
            f"Guard(policy={self._policy.name!r}, steps={self._hub.step}, state={self.state!r}, "
            f"plateaus={len(self.plateaus)}, findings={len(self._findings)}, "
            f"actions={len(self._actions)}, lr_multiplier={self._lr.value:g})"
        )
