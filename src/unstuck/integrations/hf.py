"""unstuck inside the Hugging Face ``Trainer``, as one callback.

>>> from unstuck.integrations.hf import UnstuckCallback              # doctest: +SKIP
>>> trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,
...                   callbacks=[UnstuckCallback(policy="rescue", run_dir="runs/exp1")])
>>> trainer.train()
>>> UnstuckCallback.of(trainer).guard.plateaus

The callback builds a :class:`~unstuck.Guard` over the Trainer's model, its (unwrapped) torch
optimizer and its LR scheduler just before the first optimizer step (at ``on_train_begin`` when
resuming or given an explicit ``loss_source``). The Guard's optimizer hooks
read the gradients exactly where ``on_pre_optimizer_step`` does (after the Trainer's clipping).
The loss of every optimizer step comes from the model's own forward (HF models return ``loss``
when given labels); a model or trainer that computes its loss outside the forward falls back to
the mean loss the Trainer logs every ``logging_steps`` (docs/hf.md has the trade-off).
``eval_loss`` goes to ``guard.validate``. The LR multiplier composes with the Trainer's
schedule, ``LambdaLR`` included: it is applied around ``optimizer.step`` and the schedule's
value is put back after, so ``lr_scheduler.get_last_lr()`` and the logged ``learning_rate`` stay
the schedule's. A step the rewind asks to skip is decided in ``on_step_begin`` and made a no-op
in ``on_pre_optimizer_step`` (the gradients set to ``None``, which torch's optimizers pass
over); its loss is not fed and its optimizer step is hidden from the signals, though the Trainer
still runs and counts it (docs/hf.md). State is exported through ``ExportableState`` (restored
with ``restore_callback_states_from_checkpoint=True``): the JSON part names a sidecar file
``unstuck_guard.pt`` (one per rank under DDP) written into each checkpoint folder, because the
Guard's state holds tensors (the θ₀ sample, snapshots of a pending action) that
``trainer_state.json`` cannot.

Importing this module imports transformers; ``import unstuck`` never does.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from unstuck.integrations.defaults import DEFAULT_FLUSH_EVERY
from unstuck.integrations.loop import Guard
from unstuck.rescue import make_policy
from unstuck.rescue.engine import DEFAULT_COOLDOWN, DEFAULT_HORIZON

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import ExportableState
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "unstuck.integrations.hf needs transformers: pip install 'unstuck[hf]'"
    ) from exc

__all__ = ["GUARD_FILE", "RANK_FILE", "UnstuckCallback"]

logger = logging.getLogger("unstuck")

GUARD_FILE = "unstuck_guard.pt"  # the Guard's state, beside trainer_state.json in a checkpoint
# Under DDP each rank saves its own (its snapshots carry its own RNG state, docs/distributed.md).
RANK_FILE = "unstuck_guard-rank{rank}.pt"
LOSS_SOURCES = ("auto", "forward", "log")
# With the logged mean (one point per logging step), the Guard's step-counted settings are
# divided by logging_steps so decisions come as often, in optimizer steps, as in a plain loop;
# the verdict after an action needs 8 blocks of at least 2 points (rescue/verify.py), hence
# the floor on the horizon.
MIN_LOG_HORIZON = 32
# Options that belong to the Trainer, not to the callback.
TRAINER_OWNED = {
    "model": "the Trainer's model is used",
    "optimizer": "the Trainer's optimizer is used",
    "scheduler": "the Trainer's lr_scheduler is used",
    "accumulation_steps": "the Trainer owns accumulation (gradient_accumulation_steps)",
}
GUARD_OPTIONS = frozenset(inspect.signature(Guard).parameters) - {"policy", "run_dir"}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> str:
    """The folder the Trainer saves this step's checkpoint to (outside hyperparameter search)."""
    name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
    return os.path.abspath(os.path.join(args.output_dir or ".", name))


def _file_name(args: TrainingArguments) -> str:
    rank = int(args.process_index)
    return GUARD_FILE if rank == 0 else RANK_FILE.format(rank=rank)


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` (its hooks fire there)."""
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer):
        return inner
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    raise TypeError(
        f"UnstuckCallback: the Trainer's optimizer is a {type(optimizer).__name__}, not a "
        "torch.optim.Optimizer; unstuck reads gradients through torch's optimizer step hooks"
    )


class UnstuckCallback(TrainerCallback, ExportableState):
    """A :class:`~unstuck.Guard` over the HF Trainer's run.

    Args:
        policy: as :class:`~unstuck.Guard` (``"observe"``, ``"rescue"``, ``"branch"``, a list
            of action names, or a ``Policy``).
        run_dir: the Guard's run store directory (under DDP the Guard has rank 0 write it).
        loss_source: ``"forward"``: the ``loss`` the model's forward returns on every training
            micro-batch, one point per optimizer step; ``"log"``: the mean loss the Trainer
            logs, one point per logging step; ``"auto"`` (default): ``"forward"`` when the
            first step's forward returned a loss, else ``"log"``.
        **guard_options: any other :class:`~unstuck.Guard` keyword (``flush_every``,
            ``horizon``, ``detector_options``, ``tensorboard``, ``console``, ...). Unknown names
            are a ``TypeError`` here, not at the first step.

    Attributes:
        guard: the live Guard (``None`` before the first optimizer step of ``train()``).
        loss_source_used: ``"forward"`` or ``"log"`` once decided.
    """

    def __init__(
        self,
        policy: Any = "observe",
        run_dir: str | os.PathLike[str] | None = None,
        *,
        loss_source: str = "auto",
        **guard_options: Any,
    ) -> None:
        if loss_source not in LOSS_SOURCES:
            raise ValueError(
                f"UnstuckCallback: loss_source must be one of {', '.join(LOSS_SOURCES)}, "
                f"got {loss_source!r}"
            )
        for name in guard_options:
            if name in TRAINER_OWNED:
                raise TypeError(
                    f"UnstuckCallback: {name}= is not an option here: {TRAINER_OWNED[name]}"
                )
            if name not in GUARD_OPTIONS:
                raise TypeError(
                    f"UnstuckCallback: unknown option {name!r}; Guard takes "
                    f"{', '.join(sorted(GUARD_OPTIONS - set(TRAINER_OWNED)))}"
                )
        make_policy(policy)  # an unknown policy or action name fails here, not at step 1
        self.policy = policy
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        self.loss_source = loss_source
        self.guard_options = dict(guard_options)
        self.guard: Guard | None = None
        self.loss_source_used: str | None = None
        # Set by the Trainer from the checkpoint (ExportableState attributes) when resuming.
        self.guard_file: str | None = None
        self.guard_step: int | None = None
        self.guard_mode: str | None = None
        self.unsaved_options: list[str] = []
        self._losses: list[torch.Tensor] = []
        self._sum_losses = False
        self._hook: Any = None
        self._context: dict[str, Any] = {}  # the Trainer's objects until the Guard is built
        self._args: TrainingArguments | None = None
        self._trainer_state: TrainerState | None = None
        self._closed = False
        self._warned_no_loss = False
        self._skipping = False  # the current optimizer step is one a rewind asked to skip
        self._skipped_since_log = False  # the Trainer's next logged mean holds a skipped step

    @classmethod
    def of(cls, trainer: Any) -> UnstuckCallback:
        """The callback the Trainer runs, which is a new instance after a resume that restored
        callback states (the Trainer rebuilds stateful callbacks from their saved arguments)."""
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, cls):
                return callback
        raise LookupError("this Trainer has no UnstuckCallback")

    # -- ExportableState ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON for ``trainer_state.json``: the arguments and where the Guard's state is saved."""
        args: dict[str, Any] = {
            "policy": self.policy,
            "run_dir": self.run_dir,
            "loss_source": self.loss_source,
        }
        args.update(self.guard_options)
        unsaved = sorted(name for name, value in args.items() if not _jsonable(value))
        attributes: dict[str, Any] = {
            "guard_file": None,
            "guard_step": None,
            "guard_mode": None,
            "unsaved_options": unsaved,
        }
        args_, state_ = self._args, self._trainer_state
        if self.guard is not None and args_ is not None and state_ is not None:
            # Written by on_save, which the Trainer calls right after this checkpoint.
            path = os.path.join(_checkpoint_folder(args_, state_), GUARD_FILE)
            attributes.update(
                guard_file=path, guard_step=self.guard.steps, guard_mode=self.loss_source_used
            )
        return {
            "args": {k: v for k, v in args.items() if k not in unsaved},
            "attributes": attributes,
        }

    # -- events ---------------------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if self.guard is not None and not self._closed:
            self.guard.close()  # a second train() on the same callback starts a new Guard
        self.guard = None
        self._closed = False
        self._warned_no_loss = False
        self._losses = []
        self._skipping = self._skipped_since_log = False
        self._args, self._trainer_state = args, state
        if model is None:
            raise ValueError("UnstuckCallback: the Trainer passed no model to on_train_begin")
        if self._hook is not None:
            self._hook.remove()
        self._hook = model.register_forward_hook(self._capture, with_kwargs=True)
        restoring = self.guard_file is not None and args.restore_callback_states_from_checkpoint
        if restoring:
            if self.unsaved_options:
                logger.warning(
                    "unstuck: resumed UnstuckCallback lacks %s: the Trainer rebuilds callbacks "
                    "from JSON and these options were not JSON; pass them by name (a policy "
                    "as a string or a list of action names)",
                    ", ".join(self.unsaved_options),
                )
            self._build(self.guard_mode or "forward", args, state, model, kwargs, restore=True)
        elif self.loss_source != "auto":
            self._build(self.loss_source, args, state, model, kwargs)
        else:
            self._context = {"model": model, **kwargs}  # built at the first optimizer step

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        guard = self.guard
        if guard is None or self._closed:
            return  # before the Guard exists nothing can have asked for a skip
        every = max(int(state.logging_steps or 1), 1)
        if self.loss_source_used == "log" and state.global_step % every:
            # With the logged mean a Guard step is a logging window: one skip is a whole window,
            # decided at its first optimizer step, so a skipped window is one dropped log point.
            return
        self._skipping = guard.skip_step()

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._skipping and self.guard is not None and not self._closed:
            # The Trainer cannot leave the batch out; without gradients the step changes nothing
            # (an fp16 GradScaler is made to unscale first, so its step and update still work).
            self.guard.drop_gradients(getattr(kwargs.get("optimizer"), "scaler", None))
            return
        if self.guard is None and not self._closed:
            # "auto": the first step's forward passes have run; did they return a loss?
            mode = "forward" if self._losses else "log"
            if mode == "log":
                logger.info(
                    "unstuck: the model's forward returned no loss (a custom compute_loss, label "
                    "smoothing or compute_loss_func); using the loss the Trainer logs every "
                    "%d steps",
                    state.logging_steps,
                )
            context = {**self._context, **kwargs}
            self._context = {}
            self._build(mode, args, state, context.pop("model"), context)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        guard = self.guard
        if guard is None or self._closed:
            return control
        if self._skipping:
            self._skipped_since_log = True  # its loss is the spike's data: never observed
        elif self.loss_source_used == "forward":
            if self._losses:
                stacked = torch.stack(self._losses)
                # With num_items_in_batch each micro-batch loss is already divided by the whole
                # step's token count (their sum is the step's loss); without it each is a mean.
                guard.step(stacked.sum() if self._sum_losses else stacked.mean())
            elif not self._warned_no_loss:
                self._warned_no_loss = True
                logger.warning(
                    "unstuck: loss_source='forward' but the model's forward returned no loss at "
                    "step %d; steps without one are not fed (use loss_source='log')",
                    state.global_step,
                )
        self._losses = []
        if guard.should_stop:
            control.should_training_stop = True
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        guard = self.guard
        if guard is None or self._closed or self.loss_source_used != "log" or not logs:
            return control
        loss = logs.get("loss")
        if "loss" in logs and self._skipped_since_log:
            # The Trainer's mean covers the skipped steps' losses too, and cannot be taken apart.
            self._skipped_since_log = False
            return control
        if isinstance(loss, (int, float)):
            guard.step(float(loss))
            if guard.should_stop:
                control.should_training_stop = True
        return control

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.guard is None or self._closed or not metrics:
            return
        value = metrics.get("eval_loss")
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.guard.validate(float(value))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.guard is None or self._closed:
            return
        folder = _checkpoint_folder(args, state)
        if not os.path.isdir(folder):
            # Another node's disk, or a hyperparameter-search run folder.
            logger.warning("unstuck: checkpoint folder %s not found; Guard state not saved", folder)
            return
        path = os.path.join(folder, _file_name(args))
        torch.save(self.guard.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.guard is not None and not self._closed:
            self.guard.close()
        self._closed = True

    # -- helpers --------------------------------------------------------------------------------
    def _capture(
        self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any
    ) -> None:
        """Forward hook: keep the loss of a training forward (grad on, train mode)."""
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach().reshape(()))
            self._sum_losses = kwargs.get("num_items_in_batch") is not None

    def _build(
        self,
        mode: str,
        args: TrainingArguments,
        state: TrainerState,
        model: torch.nn.Module,
        context: Mapping[str, Any],
        *,
        restore: bool = False,
    ) -> None:
        self.loss_source_used = mode
        options = dict(self.guard_options)
        if mode == "log":
            every = max(int(state.logging_steps or 1), 1)
            options.setdefault("flush_every", max(1, round(DEFAULT_FLUSH_EVERY / every)))
            options.setdefault("horizon", max(MIN_LOG_HORIZON, round(DEFAULT_HORIZON / every)))
            options.setdefault("cooldown", round(DEFAULT_COOLDOWN / every))
        # The same arguments on every rank: under DDP the Guard itself has rank 0 record and
        # print, and makes its collectives at the same step everywhere (docs/distributed.md).
        self.guard = Guard(
            model,
            _torch_optimizer(context.get("optimizer")),
            context.get("lr_scheduler"),
            policy=self.policy,
            run_dir=self.run_dir,
            **options,
        )
        if restore:
            self._restore(args, state)

    def _restore(self, args: TrainingArguments, state: TrainerState) -> None:
        assert self.guard is not None
        folders = [_checkpoint_folder(args, state)]
        if self.guard_file:
            folders.insert(0, os.path.dirname(self.guard_file))
        if isinstance(args.resume_from_checkpoint, str):
            folders.append(args.resume_from_checkpoint)
        # This rank's own file, else rank 0's: identical decisions, rank 0's RNG in snapshots.
        names = dict.fromkeys([_file_name(args), GUARD_FILE])
        candidates = [os.path.join(folder, name) for folder in folders for name in names]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        self.guard_file = None  # consumed: a later train() without resuming starts fresh
        if path is None:
            logger.warning(
                "unstuck: %s not found in the checkpoint (looked at %s); the Guard starts fresh",
                GUARD_FILE,
                ", ".join(candidates),
            )
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        step = saved.get("hub", {}).get("step")
        if self.guard_step is not None and step != self.guard_step:
            logger.warning(
                "unstuck: %s holds Guard step %s but the checkpoint recorded %s; loading it anyway",
                path,
                step,
                self.guard_step,
            )
        self.guard.load_state_dict(saved)
