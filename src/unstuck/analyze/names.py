"""The one table that maps the names logs use to unstuck's canonical series names.

Every reader (TensorBoard tags, HF ``log_history`` keys, Lightning and Keras CSV columns,
MLflow metric keys) passes its raw names through :func:`canonical_names`, so a new alias is
added here once and every format knows it. Matching ignores case, and spaces and hyphens read
as underscores (a CSV's ``Train Loss`` or ``train-loss`` is ``train_loss``). When a log holds
several aliases of one canonical name (``train/loss`` and ``loss``), the first in the table's
order wins and the others keep their own names. docs/analyze.md prints this table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unstuck.record.rundata import RunData

__all__ = [
    "ALIASES",
    "EPOCH_KEYS",
    "LR_NAMES",
    "LR_PREFIXES",
    "SPLIT_PREFIXES",
    "STEP_KEYS",
    "canonical_names",
    "name_key",
    "use_series",
]

# canonical name -> the names logs use for it, most specific first
ALIASES: dict[str, tuple[str, ...]] = {
    "loss": (
        "train/loss",  # HF's TensorBoard/W&B names, many hand-written loops
        "train_loss",  # Lightning (``self.log("train_loss")``), MLflow examples
        "loss/train",  # ``add_scalar("Loss/train", ...)``, PyTorch's TensorBoard tutorial
        "train/epoch_loss",  # Keras' TensorBoard callback, ``train/`` run folder
        "training_loss",
        "train/loss_step",
        "train_loss_step",  # Lightning's ``self.log(..., on_step=True, on_epoch=True)``
        "loss_train",
        "trn_loss",
        "loss",  # Keras CSVLogger, HF ``log_history`` train rows, unstuck's run store
        "train_loss_epoch",  # Lightning's epoch means: sparse, used when nothing denser is
        "train/loss_epoch",
        "epoch_loss",
        "running_loss",  # PyTorch's CIFAR-10 tutorial prints it
        "batch_loss",
        "total_loss",  # detectron2's printout, multi-term losses
        # A negative log-likelihood is the training loss when nothing else is (opal-v2 logs
        # only ``train/nll_loss``).
        "train/nll_loss",
        "train_nll_loss",
        "nll_loss",
    ),
    "val_loss": (
        "val_loss",  # Keras CSVLogger, Lightning, unstuck's run store
        "val/loss",
        "eval/loss",  # HF's TensorBoard names
        "eval_loss",  # HF ``log_history`` eval rows
        "validation/loss",
        "valid/loss",
        "valid_loss",
        "validation_loss",
        "loss/val",
        "loss/valid",
        "loss/validation",
        "validation/epoch_loss",  # Keras' TensorBoard callback, ``validation/`` run folder
        "val/epoch_loss",
        "val_loss_epoch",  # Lightning's ``on_epoch=True`` name
        "val/loss_epoch",
        "loss_val",
        "loss_valid",
        "dev_loss",
        "dev/loss",
        # A held-out "test" split is the validation loss of a log that has no other: PyTorch's
        # TensorBoard tutorial logs ``Loss/test``, its MNIST example prints a test loss.
        "test_loss",
        "test/loss",
        "loss/test",
        "loss_test",
        "valid_loss_epoch",  # Lightning's epoch mean of a ``valid_loss`` logged per step
        "val/nll_loss",
        "val_nll_loss",
        "eval/nll_loss",
        "eval_nll_loss",
    ),
    "grad_norm": (
        "grad_norm",  # HF ``log_history`` and TensorBoard (``train/grad_norm``), unstuck
        "train/grad_norm",
        "gradient_norm",
        "grad_norm/total",
        "grad_2.0_norm_total",  # Lightning's ``grad_norm`` utility
    ),
}

# The x axis of a generic log (CSV, JSON lines, text), most specific first: a global step ...
STEP_KEYS: tuple[str, ...] = (
    "step",
    "global_step",
    "trainer/global_step",  # W&B's name for Lightning's and HF's step
    "train/global_step",
    "_step",  # W&B's own history counter
    "iteration",
    "iter",  # nanoGPT's console lines
    "num_updates",  # fairseq's console lines
    "steps",
    "current_steps",  # LLaMA-Factory's trainer_log.jsonl
)
# ... else an epoch (one point per epoch, or several: then the points are numbered in order).
EPOCH_KEYS: tuple[str, ...] = ("epoch", "train/epoch", "epochs")
# A word that names a data split -> the prefix a metric of that split carries (``val_loss``).
SPLIT_PREFIXES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "eval": "eval",
    "evaluation": "eval",
    "test": "test",
    "dev": "dev",
}

# A learning rate without a group becomes ``lr/0`` (group 0, as the Guard names it) ...
LR_NAMES: tuple[str, ...] = (
    "lr",
    "learning_rate",  # HF ``log_history``, Keras 3 CSVLogger
    "train/learning_rate",  # HF's TensorBoard names
    "train/lr",
    "epoch_learning_rate",  # Keras' TensorBoard callback
    "train/epoch_learning_rate",
    "epoch_lr",
)
# ... and one with a group keeps it: ``lr-SGD`` (Lightning's LearningRateMonitor) -> ``lr/SGD``,
# ``lr-Adam/pg1`` -> ``lr/Adam/pg1``, ``lr/1`` -> ``lr/1``.
LR_PREFIXES: tuple[str, ...] = ("lr-", "lr/", "learning_rate/", "learning_rate-")


def name_key(raw: str) -> str:
    """The form names are matched in: lower case, runs of spaces and hyphens as one ``_``."""
    return re.sub(r"[\s\-]+", "_", raw.strip().lower())


def _lr_name(raw: str) -> str | None:
    if name_key(raw) in LR_NAMES:
        return "lr/0"
    low = raw.lower()  # the prefixes tell a group by their hyphen: no separator folding here
    for prefix in LR_PREFIXES:
        if low.startswith(prefix) and len(raw) > len(prefix):
            return "lr/" + raw[len(prefix) :]
    return None


def canonical_names(
    raw_names: Iterable[str], points: Mapping[str, int] | None = None, min_points: int = 0
) -> dict[str, str]:
    """Map each raw name to the name its series gets in a :class:`RunData`.

    With ``points`` (raw name -> its number of points), an alias with fewer than ``min_points``
    gives way to the next one in the table that has enough: nanoGPT prints ``train loss`` only
    at each evaluation and ``loss`` at every iteration, and the detector needs the dense one.

    >>> canonical_names(["train/loss", "eval/loss", "train/learning_rate", "acc"])
    {'train/loss': 'loss', 'eval/loss': 'val_loss', 'train/learning_rate': 'lr/0', 'acc': 'acc'}
    """
    names = list(dict.fromkeys(raw_names))
    lower = {name_key(n): n for n in reversed(names)}  # the first spelling of each wins
    out: dict[str, str] = {}
    for canonical, aliases in ALIASES.items():
        present = [lower[a] for a in aliases if a in lower and lower[a] not in out]
        dense = [r for r in present if points is None or points.get(r, 0) >= min_points]
        if present:
            out[(dense or present)[0]] = canonical
    taken = set(out.values())
    for raw in names:
        if raw in out:
            continue
        lr = _lr_name(raw)
        if lr is not None and lr not in taken:
            out[raw] = lr
        elif raw in taken or raw in ALIASES or (lr is not None and raw == lr):
            out[raw] = f"{raw} (raw)"  # a raw name that collides with a canonical one
        else:
            out[raw] = raw
        taken.add(out[raw])
    return out


def use_series(run: RunData, canonical: str, name: str) -> None:
    """Analyse the series ``name`` as ``canonical`` (``loss`` or ``val_loss``): for tags the
    table does not know (``Loss/total``). A series already holding that name goes back to its
    raw name. ``meta["names"]`` and ``meta["notes"]`` record the choice."""
    if canonical not in ALIASES:
        raise ValueError(f"use_series: {canonical!r} is not one of {', '.join(ALIASES)}")
    if name not in run.series:
        known = ", ".join(sorted(run.series))
        raise ValueError(f"no series {name!r} in {run.source}; its series: {known}")
    if name == canonical:
        return
    names: dict[str, str] = run.meta.setdefault("names", {})
    if canonical in run.series:
        raw = next((r for r, c in names.items() if c == canonical), canonical + " (was)")
        moved = raw if raw not in run.series and raw not in ALIASES else f"{raw} (raw)"
        run.series[moved] = run.series.pop(canonical)
        names.update({r: moved for r, c in names.items() if c == canonical})
    run.series[canonical] = run.series.pop(name)
    names.update({r: canonical for r, c in names.items() if c == name} or {name: canonical})
    run.meta.setdefault("notes", []).append(f"{name} analysed as {canonical}")
