"""``UnstuckCallback``: unstuck inside a Lightning ``Trainer``, as one callback.

>>> from unstuck.integrations.lightning import UnstuckCallback   # doctest: +SKIP
>>> trainer = L.Trainer(callbacks=[UnstuckCallback(policy="rescue")])  # doctest: +SKIP
>>> trainer.fit(model, train_loader, val_loader)                  # doctest: +SKIP

Where each input comes from (docs/lightning.md has the whole story):

- **Gradients** in ``on_before_optimizer_step``: after backward (and the DDP all-reduce), AMP
  gradients already unscaled, before Lightning clips them. Lightning calls
  ``optimizer.step(closure)``, and the closure (forward and backward) runs *inside* the step,
  after the optimizer's step pre-hooks; so the Guard's gradient taps are moved from its pre-hook
  to this callback hook.
- **Losses** from the training step's outputs in ``on_train_batch_end`` (``outputs["loss"]`` or
  the returned tensor), summed over accumulated micro-batches and handed over once per optimizer
  step, on the device: no host sync.
- **The rewind's skip**: Lightning runs every batch, so a step the rewind asks to skip is
  decided at its first micro-batch (``on_train_batch_start``) and made a no-op in
  ``on_before_optimizer_step``: the gradients of the watched optimizer's parameters are set to
  ``None``, which torch's optimizers pass over. Its loss is not fed and its optimizer step is
  hidden from the signals. The forward and backward still run, and the Trainer still counts the
  step (``global_step``, ``max_steps``, the LR scheduler): docs/lightning.md has the details.
- **Validation** from ``trainer.callback_metrics[monitor_val]`` in ``on_validation_end``, never
  during the sanity check.
- **The LR multiplier** is the Guard's own, applied around ``optimizer.step`` of the watched
  optimizer, so every scheduler in ``trainer.lr_scheduler_configs`` keeps producing its values and
  the effective LR is schedule × multiplier. The scheduler(s) of that optimizer go into snapshots
  (state dicts of the module, optimizer, schedulers, GradScaler and RNG).
- **State** in the checkpoint under ``checkpoint["callbacks"][callback.state_key]``: the Guard's
  ``state_dict`` (tensors and primitives, so ``torch.load(..., weights_only=True)`` reads it),
  applied when the Guard is built at ``on_train_start`` of the resumed fit.
- **DDP**: Lightning's DDP strategies initialise ``torch.distributed`` before the Guard is built,
  so the Guard's own cross-rank sync applies (``unstuck.integrations._distributed``): the loss
  and validation values averaged over ranks, rank 0's findings, identical decisions and LR on
  every rank, one run store on rank 0. The callback adds no collective of its own.

``import unstuck`` never imports Lightning; this module does.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unstuck.integrations.loop import Guard
from unstuck.record.console import console_above_progress_bars
from unstuck.rescue.policy import Policy

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "unstuck.integrations.lightning needs Lightning: pip install 'unstuck[lightning]'"
    ) from exc

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import STEP_OUTPUT

__all__ = ["UnstuckCallback"]

logger = logging.getLogger("unstuck")

STATE_VERSION = 1
# The pre-clip total norm reads every gradient once (what Guard's grad_norm_every=8 default
# avoids doing on every step), so with Lightning clipping it is recorded on every 8th step: the
# clip rate is a share of sampled steps, unbiased by the sampling.
CLIP_RECORD_EVERY = 8
# The Guard arguments the callback takes from the Trainer itself, and where each comes from.
FROM_TRAINER = {
    "model": "the LightningModule",
    "optimizer": "trainer.optimizers[optimizer_index]",
    "scheduler": "trainer.lr_scheduler_configs (the watched optimizer's schedulers)",
    "scaler": "the precision plugin's GradScaler",
    "accumulation_steps": "Trainer(accumulate_grad_batches=...) owns accumulation under Lightning",
}
GUARD_OPTIONS = frozenset(inspect.signature(Guard.__init__).parameters) - {"self", *FROM_TRAINER}


class _Schedulers:
    """Several schedulers on one optimizer, seen by snapshots as one ``state_dict``."""

    def __init__(self, schedulers: list[Any]) -> None:
        self.schedulers = schedulers

    def state_dict(self) -> dict[str, Any]:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)


def _draws_a_tqdm_bar(trainer: pl.Trainer) -> bool:
    """Lightning's default progress bar is a tqdm bar on stdout/stderr: lines printed while it is
    drawn are glued onto it unless they go through ``tqdm.write``."""
    bar = getattr(trainer, "progress_bar_callback", None)
    return bar is not None and type(bar).__name__ == "TQDMProgressBar" and bar.is_enabled


def _step_loss(outputs: Any, key: str) -> torch.Tensor | None:
    """The loss in a training step's outputs: ``outputs[key]`` or the tensor itself."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        value = outputs.get(key)
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (int, float)):
            return torch.tensor(float(value))
    return None


class UnstuckCallback(Callback):
    """Runs an :class:`unstuck.Guard` over a Lightning ``Trainer.fit``.

    Args:
        policy: ``"observe"`` (the default: detect and diagnose, change nothing), ``"rescue"``,
            ``"branch"``, a list of actions or a :class:`unstuck.rescue.Policy`; as for the Guard.
        run_dir: directory for the run store and report, written by global rank 0 only (other
            ranks keep no store). ``None`` touches no disk.
        monitor_val: the ``callback_metrics`` key of the validation loss (log it with
            ``self.log("val_loss", ...)`` in ``validation_step``); a missing key is a one-time
            warning and validation is not watched.
        loss_key: the key of the loss in a ``training_step`` that returns a dict.
        optimizer_index: which of ``trainer.optimizers`` the Guard watches (one Guard watches one
            optimizer; for several under manual optimization, add one callback per index).
        log_lr_multiplier: log ``unstuck/lr_multiplier`` every step through ``pl_module.log``,
            since ``LearningRateMonitor`` shows the schedule only (the effective LR is the
            logged LR × this factor).
        **guard_options: any other :class:`unstuck.Guard` keyword (``flush_every``, ``horizon``,
            ``loss_fn``, ``detector_options``, ``tensorboard``, ...). ``model``, ``optimizer``,
            ``scheduler``, ``scaler`` and ``accumulation_steps`` come from the Trainer.

    After ``fit`` (in the process that ran it), ``callback.guard`` is the closed Guard, with its
    ``plateaus``, ``findings``, ``actions`` and ``lr_multiplier``.

    Example:
        >>> import lightning as L                                     # doctest: +SKIP
        >>> callback = UnstuckCallback(policy="rescue", run_dir="runs/exp1")  # doctest: +SKIP
        >>> L.Trainer(max_steps=2000, callbacks=[callback]).fit(module, loader)  # doctest: +SKIP
        >>> callback.guard.actions                                    # doctest: +SKIP
    """

    def __init__(
        self,
        policy: str | Policy = "observe",
        run_dir: str | Path | None = None,
        *,
        monitor_val: str | None = "val_loss",
        loss_key: str = "loss",
        optimizer_index: int = 0,
        log_lr_multiplier: bool = True,
        **guard_options: Any,
    ) -> None:
        taken = sorted(set(guard_options) & set(FROM_TRAINER))
        if taken:
            name = taken[0]
            raise TypeError(
                f"UnstuckCallback: {name}= comes from the Trainer ({FROM_TRAINER[name]})"
            )
        unknown = sorted(set(guard_options) - GUARD_OPTIONS)
        if unknown:
            raise TypeError(
                f"UnstuckCallback: unknown Guard option {unknown[0]!r}; "
                f"known: {', '.join(sorted(GUARD_OPTIONS))}"
            )
        if not isinstance(optimizer_index, int) or optimizer_index < 0:
            raise ValueError(
                f"UnstuckCallback: optimizer_index must be an int >= 0, got {optimizer_index!r}"
            )
        if monitor_val is not None and not isinstance(monitor_val, str):
            raise TypeError(
                f"UnstuckCallback: monitor_val must be a str or None, got {monitor_val!r}"
            )
        if not isinstance(loss_key, str):
            raise TypeError(f"UnstuckCallback: loss_key must be a str, got {loss_key!r}")
        self.policy = policy
        self.run_dir = run_dir
        self.monitor_val = monitor_val
        self.loss_key = loss_key
        self.optimizer_index = optimizer_index
        self.log_lr_multiplier = bool(log_lr_multiplier)
        self.guard_options = dict(guard_options)
        self._guard: Guard | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None  # loaded before the Guard exists
        self._loss_sum: torch.Tensor | None = None  # this optimizer step's micro-batch losses
        self._loss_count = 0
        self._stepped = False  # the watched optimizer reached its step since the last loss
        self._in_step = False  # a micro-batch of the current optimizer step has started
        self._skipping = False  # the current optimizer step is one a rewind asked to skip
        self._clip_base: float | None = None  # the Trainer's gradient_clip_val, when by norm
        self._warned_missing_val = False
        self._console = contextlib.ExitStack()  # unstuck's lines above Lightning's progress bar

    # -- what the user reads ------------------------------------------------------------------
    @property
    def guard(self) -> Guard | None:
        """The Guard of the current (or last) fit in this process; ``None`` before one."""
        return self._guard

    @property
    def state_key(self) -> str:
        return self._generate_state_key(optimizer_index=self.optimizer_index)

    # -- building the Guard -------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in setup/on_fit_start: the optimizers exist, DDP has broadcast rank 0's
        # weights, and Lightning has restored the optimizer and scheduler state of a resumed
        # run, so restoring the Guard's own state (which may put a snapshot back) comes last.
        optimizers = trainer.optimizers
        if self.optimizer_index >= len(optimizers):
            raise ValueError(
                f"UnstuckCallback: optimizer_index={self.optimizer_index} but the Trainer has "
                f"{len(optimizers)} optimizer(s)"
            )
        optimizer = optimizers[self.optimizer_index]
        schedulers = [
            config.scheduler
            for config in trainer.lr_scheduler_configs
            if config.scheduler.optimizer is optimizer
        ]
        scheduler: Any = (
            None
            if not schedulers
            else schedulers[0]
            if len(schedulers) == 1
            else _Schedulers(schedulers)
        )
        options = dict(self.guard_options)
        if not trainer.is_global_zero:
            options["console"] = False  # one console and one run store, on rank 0
        meta = {"framework": "lightning", "world_size": trainer.world_size}
        options["meta"] = {**meta, **dict(options.get("meta") or {})}
        guard = Guard(
            pl_module,
            optimizer,
            scheduler,
            policy=self.policy,
            run_dir=self.run_dir if trainer.is_global_zero else None,
            scaler=getattr(trainer.precision_plugin, "scaler", None),
            **options,
        )
        self._guard, self._optimizer = guard, optimizer
        # Lightning calls optimizer.step(closure): the step pre-hook fires before the closure
        # runs the forward and backward, where .grad still holds the previous step's gradients
        # (or nothing after zero_grad), so the gradients are read in on_before_optimizer_step.
        guard.read_gradients_manually()
        self._loss_sum, self._loss_count, self._stepped = None, 0, False
        self._in_step = self._skipping = False
        self._clip_base = _norm_clip_value(trainer)
        if self._clip_base is not None:
            guard.clip_threshold(self._clip_base)  # the rescue may change Lightning's threshold
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            guard.load_state_dict(state)
        if trainer.is_global_zero and _draws_a_tqdm_bar(trainer):
            self._console.enter_context(console_above_progress_bars())

    # -- the hot path -------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        guard = self._guard
        if guard is None or guard.closed or self._in_step:
            return
        # The first micro-batch of an optimizer step: decide the rewind's skip for all of them
        # now, before Lightning's optimizer.step(closure) fires the step's pre-hooks.
        self._in_step = True
        self._skipping = guard.skip_step()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        guard = self._guard
        if guard is None or guard.closed or not _is_watched(optimizer, self._optimizer):
            return
        if self._skipping:
            # Lightning cannot leave the batch out; without gradients the step changes nothing
            # (AMP has unscaled them before this hook; Lightning's clipping finds none to clip).
            guard.drop_gradients()  # the Guard holds the precision plugin's GradScaler
            self._stepped = True
            return
        n = guard.optimizer_steps  # this step's index: the post-hook has not counted it yet
        guard.read_gradients()
        if self._clip_base is not None:
            threshold = guard.clip_threshold(self._clip_base)
            trainer.gradient_clip_val = threshold  # Lightning clips right after this hook
            if n % CLIP_RECORD_EVERY == 0:
                grads = [p.grad for p in guard.parameters if p.grad is not None]
                if grads:
                    total = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
                    guard.record_clip(total, threshold)
        self._stepped = True

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
    ) -> None:
        guard = self._guard
        if guard is None or guard.closed:
            return
        loss = _step_loss(outputs, self.loss_key)
        if loss is not None:
            loss = loss.detach()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        if not self._stepped:
            return  # accumulating: the optimizer has not stepped yet
        self._stepped = self._in_step = False
        total, count = self._loss_sum, self._loss_count
        self._loss_sum, self._loss_count = None, 0
        if self._skipping:
            return  # a skipped step: its loss is the spike's data, never observed
        if total is None:
            return  # training_step returned None: Lightning skipped this batch
        # Automatic optimization divides each micro-batch loss by accumulate_grad_batches; the
        # sum over a full accumulation is then the mean (a short last one is rescaled).
        per_step = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        if per_step != count:
            total = total * (per_step / count)
        guard.step(total, batch=batch)
        if self.log_lr_multiplier:
            # a CPU tensor: a float would be copied to the module's device on every step
            value = torch.tensor(guard.lr_multiplier)
            pl_module.log("unstuck/lr_multiplier", value, on_step=True, on_epoch=False)
        if guard.should_stop:  # the same on every rank: the Guard decides in step across ranks
            self._stop(trainer, guard.stop_reason)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        guard = self._guard
        if trainer.sanity_checking or guard is None or guard.closed:
            return
        if self.monitor_val is not None:
            value = trainer.callback_metrics.get(self.monitor_val)
            if value is None:
                if not self._warned_missing_val:
                    self._warned_missing_val = True
                    logger.warning(
                        "unstuck: no %r in trainer.callback_metrics (logged: %s), so validation "
                        "is not watched; log it with self.log(%r, loss) in validation_step, "
                        "pass monitor_val=<the name you log>, or monitor_val=None",
                        self.monitor_val,
                        ", ".join(sorted(trainer.callback_metrics)) or "nothing",
                        self.monitor_val,
                    )
            else:
                guard.validate(value)  # a tensor or a float; read to the host there

    # -- the end ------------------------------------------------------------------------------
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        guard = self._guard
        if guard is None or guard.closed:
            return
        if trainer.world_size == 1:
            guard.close()
        else:
            # Closing flushes, and a flush runs collectives that a failed rank never joins.
            logger.warning(
                "unstuck: training failed on rank %d; the Guard is left open (no final flush)",
                trainer.global_rank,
            )

    def _close(self, trainer: pl.Trainer) -> None:
        guard = self._guard
        if guard is None or guard.closed:
            return
        try:
            guard.close()
        finally:
            self._console.close()  # the summary is printed above the bar, then lines go back
        if self._clip_base is not None:
            trainer.gradient_clip_val = self._clip_base

    @staticmethod
    def _stop(trainer: pl.Trainer, reason: str) -> None:
        if not trainer.should_stop:
            logger.info("unstuck: stopping the Trainer (%s)", reason)
        trainer.should_stop = True

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The Guard's state (tensors and primitives), saved in ``checkpoint["callbacks"]``."""
        if self._guard is not None:
            return {"version": STATE_VERSION, "guard": self._guard.state_dict()}
        if self._pending_state is not None:
            return {"version": STATE_VERSION, "guard": self._pending_state}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning calls this before the Guard exists; the state is applied when it is built."""
        if not state_dict:
            return
        version = state_dict.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"UnstuckCallback.load_state_dict: state version {version!r} is not "
                f"{STATE_VERSION}; it was saved by an incompatible unstuck"
            )
        guard_state = dict(state_dict["guard"])
        if self._guard is not None and not self._guard.closed:
            self._guard.load_state_dict(guard_state)
        else:
            self._pending_state = guard_state

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks into each worker; a live Guard holds hooks and threads.
        state = self.__dict__.copy()
        state.update(_guard=None, _optimizer=None, _loss_sum=None)
        return state


def _is_watched(optimizer: Any, watched: torch.optim.Optimizer | None) -> bool:
    """Whether ``optimizer`` is the watched one, or a ``LightningOptimizer`` wrapping it."""
    return optimizer is watched or getattr(optimizer, "optimizer", None) is watched


def _norm_clip_value(trainer: pl.Trainer) -> float | None:
    """The Trainer's ``gradient_clip_val`` when it clips by norm, else ``None``."""
    value = trainer.gradient_clip_val
    algorithm = str(getattr(trainer.gradient_clip_algorithm, "value", "norm"))
    if value is None or float(value) <= 0 or algorithm != "norm":
        return None
    return float(value)
