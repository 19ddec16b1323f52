"""``PlateauScheduler``: ``ReduceLROnPlateau`` that cuts only where unstuck finds a real plateau.

>>> scheduler = unstuck.PlateauScheduler(optimizer, factor=0.5, warmup_steps=500)  # doctest: +SKIP
>>> for epoch in range(epochs):                                                   # doctest: +SKIP
...     for x, y in loader:
...         ...; optimizer.step()
...         scheduler.step()              # no metric: a warmup tick (a no-op once warm)
...     scheduler.step(evaluate(model))   # a metric: may cut the LR

It is a subclass of :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`, because Lightning and
the HF Trainer decide how to step a scheduler with that ``isinstance`` (they pass it the monitored
metric). Everything torch's scheduler computes is computed the same way: ``best``,
``num_bad_epochs``, ``cooldown_counter``, ``last_epoch`` and the cut itself (``factor``,
per-group ``min_lr``, ``eps``). What changes is *when* it cuts: torch's rule (no new best for
more than ``patience`` calls, outside cooldown) must hold **and** unstuck's
:class:`~unstuck.detect.PlateauDetector` must call the metric's trend stuck, in the states the
rescue policy acts on (:data:`unstuck.rescue.policy.ACT_ON_STATES`): a ``plateau`` that is not
``early``, ``oscillating`` or ``diverging``. So it never cuts where torch would not, and it
waits where torch's rule misfires (REFERENCE.md §1b, §2): on minibatch noise, on a steady
descent after a spike, on a slow creep, on a flat loss whose weights keep moving (hidden
progress: a saddle escape that a cut would block), and on a plateau before the metric ever
fell. docs/scheduler.md lists every difference and why.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, SupportsFloat

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from unstuck.detect import PlateauDetector
from unstuck.detect.detector import WARMUP_FACTOR
from unstuck.types import ACT_ON_STATES, DetectorState, primitive

__all__ = ["PlateauScheduler"]

logger = logging.getLogger("unstuck")

STATE_VERSION = 1
# Hidden progress needs ‖θ − θ₀‖. A fixed random sample of this many coordinates is kept as θ₀
# (a list of floats in the state_dict: ~40 kB in a checkpoint); the distance on a fixed sample is
# a smooth function of θ, so a trend on it reads the same motion as on every coordinate.
REFERENCE_COORDINATES = 4096
# The distance is read at most once per 1/32 of the metric calls so far (every call early on):
# the detector's plateau windows are ≥ 1/6 of the run, so each holds ≥ 4 samples (the least its
# hidden-progress trend needs), and a per-batch metric costs O(log steps) reads, not one per step.
DISTANCE_SAMPLES_PER_RUN = 32
# What torch 2.13's ReduceLROnPlateau.state_dict holds; the state_dict here is a superset.
TORCH_KEYS = (
    "factor",
    "default_min_lr",
    "min_lrs",
    "patience",
    "cooldown",
    "eps",
    "last_epoch",
    "_last_lr",
    "mode_worse",
    "mode",
    "threshold",
    "threshold_mode",
    "best",
    "cooldown_counter",
    "num_bad_epochs",
)


class PlateauScheduler(ReduceLROnPlateau):
    """Cut the LR by ``factor`` when the metric has stalled by torch's rule *and* unstuck's test.

    Args:
        optimizer, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps:
            as :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`, with the same defaults and
            the same meaning: ``patience`` and ``threshold`` define ``num_bad_epochs`` (no new
            best), which must exceed ``patience`` before a cut, as in torch.
        warmup_steps: linear warmup over the first ``warmup_steps`` ticks, from
            ``warmup_start_factor × lr`` to the optimizer's LR at construction. A tick is a call
            to ``step()`` without a metric; a caller that never makes one (Lightning and the HF
            Trainer always pass the metric) ticks with each ``step(metric)`` instead. No cut
            during warmup.
        warmup_start_factor: the share of the LR at the first tick (``0.0``, as HF's linear
            warmup). Must be in ``[0, 1]``.
        detector_options: keyword arguments for the :class:`~unstuck.detect.PlateauDetector`
            (``min_points``, ``epsilon``, ...). Its ``mode`` is this scheduler's ``mode``.

    Attributes:
        detector: the detector fed every metric; ``detector.state`` says why it did not cut.
        cuts: one primitive dict per cut that changed an LR: ``step`` (``last_epoch``), the
            detector's ``state`` and plateau ``kind``, ``lrs`` (after the cut).
        base_lrs: the LR of each group at construction (the warmup's target).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
        *,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        detector_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            optimizer,
            mode=mode,
            factor=factor,
            patience=patience,
            threshold=threshold,
            threshold_mode=threshold_mode,
            cooldown=cooldown,
            min_lr=min_lr,
            eps=eps,
        )
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(
                f"PlateauScheduler: warmup_steps must be an int >= 0, got {warmup_steps!r}"
            )
        if not (
            isinstance(warmup_start_factor, (int, float)) and 0.0 <= warmup_start_factor <= 1.0
        ):
            raise ValueError(
                "PlateauScheduler: warmup_start_factor must be in [0, 1], "
                f"got {warmup_start_factor!r}"
            )
        if detector_options is not None and not isinstance(detector_options, Mapping):
            raise TypeError(
                "PlateauScheduler: detector_options must be a mapping of PlateauDetector "
                f"arguments, got {type(detector_options).__name__}"
            )
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = float(warmup_start_factor)
        self.warmup_count = 0
        self.warmup_by_plain_calls = False  # set by the first step() without a metric
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.detector_options = dict(detector_options or {})
        self.cuts: list[dict[str, Any]] = []
        self._early_cut_logged = False
        self._distance_at: int | None = None
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._index, self._scale = _sample_coordinates(self._params, REFERENCE_COORDINATES)
        self._reference: list[torch.Tensor] = self._view()
        self.detector = self._new_detector()  # validates detector_options
        if warmup_steps:
            self._apply_warmup()
            self._last_lr = _lr_list(optimizer)

    # -- the torch API --------------------------------------------------------------------------
    def step(  # type: ignore[override]
        self, metrics: SupportsFloat | None = None, epoch: int | None = None
    ) -> None:
        """With a metric: record it and cut the LR if it has stalled. Without: a warmup tick."""
        if metrics is None:
            self.warmup_by_plain_calls = True
            if self.warmup_count < self.warmup_steps:
                self.warmup_count += 1
                self._apply_warmup()
            self._last_lr = _lr_list(self.optimizer)
            return
        if isinstance(metrics, torch.Tensor):
            metrics = metrics.detach()  # a 0-d tensor is read here: one host read, as in torch
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(
                "PlateauScheduler.step: the epoch argument is deprecated in torch; it sets "
                "last_epoch as torch's ReduceLROnPlateau does",
                UserWarning,
                stacklevel=2,
            )
        self.last_epoch = epoch
        warming = self.warmup_count < self.warmup_steps
        if warming and not self.warmup_by_plain_calls:
            self.warmup_count += 1
            self._apply_warmup()

        # torch's bookkeeping, unchanged: best-so-far, bad epochs, cooldown.
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count, as in torch

        state = self.detector.update(epoch, current, distance=self._maybe_distance(epoch))
        if self.num_bad_epochs > self.patience and not warming and self._may_cut(state, epoch):
            before = [float(lr) for lr in _lr_list(self.optimizer)]
            self._reduce_lr(epoch)  # torch's: factor, per-group min_lr, eps
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            after = [float(lr) for lr in _lr_list(self.optimizer)]
            if after != before:  # at min_lr (or within eps) torch's cut changes nothing
                plateau = self.detector.current
                kind = plateau.kind if plateau is not None else None
                self.cuts.append({"step": int(epoch), "state": state, "kind": kind, "lrs": after})
        self._last_lr = _lr_list(self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        """Primitives only (``torch.load(weights_only=True)`` reads it; so does ``json``).

        A superset of torch's keys, plus the warmup, the cuts, the detector's own state and the
        θ₀ sample, so a resumed run decides exactly as an uninterrupted one.
        """
        state = {key: getattr(self, key) for key in TORCH_KEYS}
        state["_last_lr"] = [float(lr) for lr in self._last_lr]
        state.update(
            {
                "version": STATE_VERSION,
                "warmup_steps": self.warmup_steps,
                "warmup_start_factor": self.warmup_start_factor,
                "warmup_count": self.warmup_count,
                "warmup_by_plain_calls": self.warmup_by_plain_calls,
                "base_lrs": list(self.base_lrs),
                "detector_options": dict(self.detector_options),
                "detector": self.detector.state_dict(),
                "cuts": [dict(cut) for cut in self.cuts],
                "distance_at": self._distance_at,
                "reference": [r.double().cpu().tolist() for r in self._reference],
            }
        )
        flat: dict[str, Any] = primitive(state)  # numpy scalars in the detector's stats too
        return flat

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict`, or from torch's ``ReduceLROnPlateau``.

        A torch state restores torch's counters and leaves the detector fresh.
        """
        for key in TORCH_KEYS:
            if key in state_dict:
                value = state_dict[key]
                setattr(self, key, list(value) if isinstance(value, (list, tuple)) else value)
        self._last_lr = list(state_dict.get("_last_lr", self._last_lr))
        self._init_is_better(
            mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode
        )
        version = state_dict.get("version")
        if version is None:  # torch's own state: nothing of ours to restore
            self.detector = self._new_detector()
            return
        if version != STATE_VERSION:
            raise ValueError(
                f"PlateauScheduler.load_state_dict: version {version!r} is not {STATE_VERSION}; "
                "the state was saved by an incompatible unstuck"
            )
        self.warmup_steps = int(state_dict["warmup_steps"])
        self.warmup_start_factor = float(state_dict["warmup_start_factor"])
        self.warmup_count = int(state_dict["warmup_count"])
        self.warmup_by_plain_calls = bool(state_dict["warmup_by_plain_calls"])
        self.base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        self.detector_options = dict(state_dict["detector_options"])
        self.cuts = [dict(cut) for cut in state_dict["cuts"]]
        at = state_dict["distance_at"]
        self._distance_at = None if at is None else int(at)
        reference = state_dict["reference"]
        if len(reference) != len(self._reference) or any(
            len(saved) != current.numel() for saved, current in zip(reference, self._reference)
        ):
            raise ValueError(
                "PlateauScheduler.load_state_dict: the saved parameter sample does not match this "
                "optimizer's parameters; load it into a scheduler over the same model"
            )
        self._reference = [
            torch.tensor(saved, dtype=torch.float32, device=current.device)
            for saved, current in zip(reference, self._reference)
        ]
        self.detector = self._new_detector()  # after the reference: it sets the distance scale
        self.detector.load_state_dict(dict(state_dict["detector"]))

    # -- deciding -------------------------------------------------------------------------------
    def judging(self) -> bool:
        """Whether unstuck's test has seen enough metric values to call a plateau (``2 ×
        min_points``: 16 at the defaults); before that, torch's rule decides alone."""
        return self.detector.n_points >= WARMUP_FACTOR * self.detector.min_points

    def _may_cut(self, state: str, epoch: int) -> bool:
        """torch's rule already holds; unstuck's test must agree. Before it can judge, a short
        run (a 10-epoch fine-tune with ``patience=2``) is not cut, and the scheduler says so
        once instead of staying silent."""
        if self.judging():
            return self._stalled(state)
        if not self._early_cut_logged:
            self._early_cut_logged = True
            needed = WARMUP_FACTOR * self.detector.min_points
            logger.warning(
                "unstuck: PlateauScheduler did not cut at step %d although torch's rule would: "
                "its trend test needs %d metric values to tell a plateau from noise; for runs "
                "this short pass detector_options={'min_points': 4} (8 values)",
                epoch,
                needed,
            )
        return False

    def _stalled(self, state: str) -> bool:
        """Whether the detector's state is one a cut may answer (the rescue policy's own)."""
        if state not in ACT_ON_STATES:
            return False  # improving, slow (a cut slows a creep), hidden_progress, unknown
        if state == DetectorState.PLATEAU:
            plateau = self.detector.current
            # Early: the metric never fell. An LR too low, a saddle or a bad init holds it there,
            # and a cut makes each of those worse.
            return plateau is not None and plateau.kind != "early"
        return True

    def _new_detector(self) -> PlateauDetector:
        options: dict[str, Any] = {
            "distance_signal": bool(self._params),
            "distance_scale": _norm(self._reference) * self._scale,
            **self.detector_options,
        }
        return PlateauDetector("metric", self.mode, **options)

    def _apply_warmup(self) -> None:
        share = min(self.warmup_count, self.warmup_steps) / max(self.warmup_steps, 1)
        factor = self.warmup_start_factor + (1.0 - self.warmup_start_factor) * share
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            _set_lr(group, base * factor)

    # -- hidden progress ------------------------------------------------------------------------
    def _view(self) -> list[torch.Tensor]:
        """The sampled coordinates of every parameter, as float32 copies."""
        with torch.no_grad():
            return [
                (p.detach().reshape(-1) if i is None else p.detach().reshape(-1)[i]).float().clone()
                for p, i in zip(self._params, self._index)
            ]

    def _maybe_distance(self, step: int) -> float | None:
        if not self._params:
            return None
        last = self._distance_at
        if last is not None and step - last < max(1, step // DISTANCE_SAMPLES_PER_RUN):
            return None
        self._distance_at = step
        with torch.no_grad():
            deltas = torch._foreach_sub(self._view(), self._reference)
        return _norm(deltas) * self._scale


def _sample_coordinates(
    params: list[torch.Tensor], budget: int, seed: int = 0
) -> tuple[list[torch.Tensor | None], float]:
    """A fixed random subset of coordinates (all of them below ``budget``) and the factor that
    turns a norm on it into an estimate of the full norm. Drawn with replacement by ``randint``:
    no ``randperm`` of a billion-element tensor."""
    total = sum(p.numel() for p in params)
    if total <= budget:
        return [None] * len(params), 1.0
    generator = torch.Generator().manual_seed(seed)
    index: list[torch.Tensor | None] = []
    sampled = 0
    for p in params:
        k = max(1, round(p.numel() * budget / total))
        index.append(torch.randint(p.numel(), (k,), generator=generator).to(p.device))
        sampled += k
    return index, math.sqrt(total / sampled)


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """The norm of the concatenation, in one host read."""
    if not tensors:
        return 0.0
    norms = torch._foreach_norm(list(tensors))
    home = norms[0].device
    return float(torch.linalg.vector_norm(torch.stack([n.to(home) for n in norms])))


def _lr_list(optimizer: torch.optim.Optimizer) -> list[Any]:
    return [
        g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
        for g in optimizer.param_groups
    ]


def _set_lr(group: dict[str, Any], value: float | torch.Tensor) -> None:
    value = float(value)
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)  # fused/capturable optimizers keep a tensor LR
    else:
        group["lr"] = value
