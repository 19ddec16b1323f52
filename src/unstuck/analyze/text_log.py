"""A console log (what a training script printed) -> RunData.

Most runs leave no structured log, only their printout: nanoGPT's ``iter 100: loss 2.3456``,
``step 500: train loss 2.03, val loss 2.10``, Keras' ``Epoch 3/10`` followed by
``8/8 - 0s - 5ms/step - loss: 0.41 - val_loss: 0.44``, HF Trainer's printed
``{'loss': 0.41, 'learning_rate': 4e-05, 'epoch': 0.5}``, PyTorch's MNIST example
``Train Epoch: 1 [640/60000 (1%)]  Loss: 0.41``, a logger's ``INFO step=100 loss=0.41``.

Each line is scanned for ``name value`` pairs: a name (one or two words, quotes allowed)
followed by ``:``, ``=`` or a space and a number that is not glued to a unit (``12ms`` is not
read). Two-word names are joined with ``_`` (``train loss`` -> ``train_loss``, which the name
table knows). A name that is a step or epoch key, or two words ending in one (``Train Epoch``,
``INFO step``), is the line's x value; a line with an x value and no metric (Keras'
``Epoch 3/10``) sets it for the lines after it. The x axis is then chosen as for any generic log
(``_records.py``). A carriage return rewrites a terminal line, so only the text after the last
one counts (progress bars); ANSI colour codes are dropped.

Recognised only when at least ``MIN_TEXT_RECORDS`` lines carry a training or validation loss:
a text file without them is no log.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from unstuck.analyze._common import LogFormatError, build_run, to_float
from unstuck.analyze._records import series_from_records
from unstuck.analyze.names import ALIASES, EPOCH_KEYS, STEP_KEYS
from unstuck.record.rundata import RunData

__all__ = ["MIN_TEXT_RECORDS", "looks_like_text_log", "parse_text", "read_text_log"]

MIN_TEXT_RECORDS = 3  # lines with a loss before a text file counts as a log
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_WORD = r"[A-Za-z][\w./-]*"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)\b"
PAIR = re.compile(
    rf"(?<![\w./-])['\"]?(?P<name>{_WORD}(?: {_WORD})?)['\"]?"
    rf"(?:\s*[:=]\s*|\s+)(?P<value>{_NUMBER})(?![\w%])(?!\.\d)",
    re.IGNORECASE,
)
X_KEYS = frozenset(STEP_KEYS) | frozenset(EPOCH_KEYS)
LOSS_NAMES = frozenset(ALIASES["loss"]) | frozenset(ALIASES["val_loss"])


def _x_name(name: str) -> str | None:
    """The step or epoch key ``name`` stands for: itself, or the last of two words."""
    low = name.lower()
    if low in X_KEYS:
        return low
    last = low.rsplit("_", 1)[-1]
    return last if "_" in low and last in X_KEYS else None


def parse_text(text: str) -> list[dict[str, float]]:
    """The records of a console log: one per line with a metric, x values filled in."""
    records: list[dict[str, float]] = []
    context: dict[str, float] = {}
    for raw_line in text.split("\n"):  # not splitlines(): a bare \r rewrites a line
        line = ANSI.sub("", raw_line.rsplit("\r", 1)[-1] or raw_line).replace("\b", "")
        xs: dict[str, float] = {}
        metrics: dict[str, float] = {}
        for match in PAIR.finditer(line):
            name = match.group("name").replace(" ", "_")
            value = to_float(match.group("value"))
            if value is None:
                continue
            x = _x_name(name)
            if x is not None:  # one step name per file: nanoGPT prints both iter and step
                xs.setdefault("step" if x in STEP_KEYS else "epoch", value)
            else:
                metrics.setdefault(name, value)
        if xs:
            context = xs
        if metrics:
            records.append({**context, **metrics})
    return records


def _has_loss(record: dict[str, float]) -> bool:
    return any(name.lower() in LOSS_NAMES for name in record)


def _records_of(file: Path) -> tuple[list[dict[str, float]], int]:
    """The file's records and how many of them carry a loss."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LogFormatError(f"{file} is not a text file") from None
    records = parse_text(text)
    return records, sum(_has_loss(r) for r in records)


def read_text_log(path: str | os.PathLike[str]) -> RunData:
    """Read a training script's printout (see the module docstring for what is understood)."""
    file = Path(path)
    records, with_loss = _records_of(file)
    if with_loss < MIN_TEXT_RECORDS:
        raise LogFormatError(
            f"{file}: {with_loss} lines name a loss as 'loss 0.41', 'loss: 0.41' or "
            f"'loss=0.41' (at least {MIN_TEXT_RECORDS} needed; known loss names: "
            f"{', '.join(ALIASES['loss'][:4])}, {', '.join(ALIASES['val_loss'][:4])} ...)"
        )
    raw, unit, notes = series_from_records(records)
    meta: dict[str, Any] = {"file": str(file), "step_unit": unit, "lines": len(records)}
    if notes:
        meta["notes"] = notes
    return build_run(os.fspath(path), "text", raw, meta)


def looks_like_text_log(path: Path) -> bool:
    """Whether ``path`` reads as a console log (``MIN_TEXT_RECORDS`` lines with a loss): the
    lines are counted, the series are built only when it is read."""
    try:
        return _records_of(path)[1] >= MIN_TEXT_RECORDS
    except (LogFormatError, OSError):
        return False
