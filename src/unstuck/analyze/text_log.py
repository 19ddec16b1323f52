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

from unstuck.analyze._common import LogFormatError, build_run, read_text, to_float
from unstuck.analyze._records import series_from_records
from unstuck.analyze.names import ALIASES, EPOCH_KEYS, SPLIT_PREFIXES, STEP_KEYS
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
SPLIT_WORDS = frozenset(w for w, split in SPLIT_PREFIXES.items() if split != "train")  # held out
NUMBER_BEFORE = re.compile(r"\s*\d+\s+")  # the line opens "1 epoch = ..": a count, not an x
WORD_BEFORE = re.compile(rf"(?<![\w./-])({_WORD}) $")  # the word just before a name
COUNT_WORDS = frozenset({"steps", "epochs"})  # plurals count, they number nothing
X_RECORD_KEYS = frozenset({"step", "epoch"})  # the x names parse_text gives records
QUALIFIER = "\x00"  # joins that word to the name until the whole file is read
LOSS_NAMES = frozenset(ALIASES["loss"]) | frozenset(ALIASES["val_loss"])


def _x_name(name: str) -> str | None:
    """The step or epoch key ``name`` stands for: itself, or the last of two words. A plural
    counts something (``epochs: 2``, ``warmup_steps: 100``, ``Total training steps: 13002`` in
    a printed config): no x value, unless it is a known key of its own (``current_steps``)."""
    low = name.lower()
    if low in X_KEYS and low not in COUNT_WORDS:
        return low
    last = low.rsplit("_", 1)[-1]
    return last if "_" in low and last in X_KEYS and last not in COUNT_WORDS else None


def _split_of(name: str) -> str | None:
    """The held-out split a name's first word names (``Val Loss`` -> ``Val``), if any."""
    first = name.split("_", 1)[0]
    return first if "_" in name and first.lower() in SPLIT_WORDS else None


def parse_text(text: str) -> list[dict[str, float]]:
    """The records of a console log: one per line with a metric, x values filled in.

    Names keep what tells them apart: a word before a two-word name that varies across the
    file (``pal1 conf loss`` / ``pal2 conf loss``) stays in the name; a name printed twice on a
    line after a held-out one (``Train Loss .. Token Acc .. Val Loss .. Token Acc``) takes that
    split (``Val_Token_Acc``); metrics on a line whose x is a split's (``test epoch:3 ||
    Loss:x``) take the split too (``test_Loss``), and such a line without a step takes the
    step its epoch had reached.
    """
    records: list[dict[str, float]] = []
    qualified: dict[str, set[str]] = {}  # two-word name -> the words seen before it
    context: dict[str, float] = {}
    for raw_line in text.split("\n"):  # not splitlines(): a bare \r rewrites a line
        line = ANSI.sub("", raw_line.rsplit("\r", 1)[-1] or raw_line).replace("\b", "")
        xs: dict[str, float] = {}
        metrics: dict[str, float] = {}
        line_split: str | None = None  # a split named by the line's x (``test epoch``)
        split: str | None = None  # the split of the last held-out metric on the line
        for match in PAIR.finditer(line):
            name = match.group("name").replace(" ", "_")
            value = to_float(match.group("value"))
            if value is None:
                continue
            x = _x_name(name)
            if x is not None:  # one step name per file: nanoGPT prints both iter and step
                if NUMBER_BEFORE.fullmatch(line, 0, match.start()):
                    continue  # "1 epoch = 2640 batches" counts, it is no x value
                xs.setdefault("step" if x in STEP_KEYS else "epoch", value)
                line_split = line_split or _split_of(name)
                continue
            split = _split_of(name) or split
            if "_" in name and name.lower() not in LOSS_NAMES:  # a known loss is unambiguous
                before = WORD_BEFORE.search(line, 0, match.start())
                if before is not None:
                    qualified.setdefault(name, set()).add(before.group(1))
                    name = f"{before.group(1)}{QUALIFIER}{name}"
            if line_split and not _split_of(name):
                name = f"{line_split}_{name}"
            elif name in metrics and split and not _split_of(name):
                name = f"{split}_{name}"
            metrics.setdefault(name, value)
        if xs:
            same_epoch = "step" not in xs and xs.get("epoch") == context.get("epoch")
            context = {**context, **xs} if same_epoch else xs
        if metrics:
            records.append({**context, **metrics})
    return [_unqualify(record, qualified) for record in records]


def _unqualify(record: dict[str, float], qualified: dict[str, set[str]]) -> dict[str, float]:
    """Keep the word before a two-word name only where the file prints it with several."""
    out: dict[str, float] = {}
    for name, value in record.items():
        if QUALIFIER in name:
            word, short = name.split(QUALIFIER, 1)
            name = f"{word}_{short}" if len(qualified.get(short, ())) > 1 else short
        out.setdefault(name, value)
    return out


def _has_loss(record: dict[str, float]) -> bool:
    return any(name.lower() in LOSS_NAMES for name in record)


def _records_of(file: Path) -> tuple[list[dict[str, float]], int]:
    """The file's records and how many of them carry a loss."""
    text = read_text(file)
    records = parse_text(text)
    return records, sum(_has_loss(r) for r in records)


def read_text_log(path: str | os.PathLike[str], run: str | None = None) -> RunData:
    """Read a training script's printout (see the module docstring for what is understood)."""
    file = Path(path)
    records, with_loss = _records_of(file)
    if with_loss < MIN_TEXT_RECORDS:
        raise LogFormatError(
            f"{file}: {with_loss} lines name a loss as 'loss 0.41', 'loss: 0.41' or "
            f"'loss=0.41' (at least {MIN_TEXT_RECORDS} needed; known loss names: "
            f"{', '.join(ALIASES['loss'][:4])}, {', '.join(ALIASES['val_loss'][:4])} ...)"
        )
    if any(X_RECORD_KEYS & set(r) for r in records):
        # Numbers printed outside the training loop (a model summary, a config dump) carry no
        # x value and no loss: they are no rows of the log, skipped without a note.
        records = [r for r in records if X_RECORD_KEYS & set(r) or _has_loss(r)]
    raw, unit, notes = series_from_records(records)
    meta: dict[str, Any] = {"file": str(file), "step_unit": unit, "lines": len(records)}
    if notes:
        meta["notes"] = notes
    return build_run(os.fspath(path), "text", raw, meta, run=run)


def looks_like_text_log(path: Path) -> bool:
    """Whether ``path`` reads as a console log (``MIN_TEXT_RECORDS`` lines with a loss): the
    lines are counted, the series are built only when it is read."""
    try:
        return _records_of(path)[1] >= MIN_TEXT_RECORDS
    except (LogFormatError, OSError):
        return False
