"""HF ``trainer_state.json`` -> RunData.

``log_history`` mixes three kinds of row, all with ``step`` and ``epoch``: train rows (``loss``,
``learning_rate``, ``grad_norm``), eval rows (``eval_loss`` and other ``eval_*``) and one summary
row at the end (``train_runtime``, ``train_loss`` = the mean over the whole run), which goes to
``meta["hf_summary"]``, not into a series. Every numeric key of the other rows becomes a series
over ``step``. HF's train ``loss`` is the **mean over the last ``logging_steps`` steps** (and
over ranks), so it is smoother than a per-step loss and one point per window.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unstuck.analyze._common import LogFormatError, build_run, read_text, to_float, to_step
from unstuck.record.rundata import RunData

__all__ = ["STATE_FILENAME", "find_state_file", "read_hf"]

STATE_FILENAME = "trainer_state.json"
SUMMARY_KEYS = ("train_runtime", "total_flos")  # keys only the end-of-training row has
META_KEYS = (
    "global_step",
    "max_steps",
    "num_train_epochs",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "train_batch_size",
    "best_metric",
    "best_global_step",
    "best_model_checkpoint",
)


def find_state_file(path: Path) -> Path | None:
    """``trainer_state.json`` in ``path``, else in its newest ``checkpoint-N`` folder."""
    if path.is_file():
        return path
    direct = path / STATE_FILENAME
    if direct.is_file():
        return direct
    checkpoints = [p for p in path.glob(f"checkpoint-*/{STATE_FILENAME}") if p.is_file()]

    def number(p: Path) -> int:
        tail = p.parent.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    return max(checkpoints, key=number) if checkpoints else None


def read_hf(path: str | os.PathLike[str], run: str | None = None) -> RunData:
    """Read a ``trainer_state.json`` (or the output_dir / checkpoint folder holding one)."""
    file = find_state_file(Path(path))
    if file is None:
        raise LogFormatError(f"no {STATE_FILENAME} in {path} or its checkpoint-* folders")
    try:
        state = json.loads(read_text(file))
    except json.JSONDecodeError as exc:
        raise LogFormatError(
            f"{file} is not valid JSON ({exc.msg} at line {exc.lineno}; truncated?)"
        ) from None
    except RecursionError:
        raise LogFormatError(f"{file} is JSON nested deeper than Python parses") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise LogFormatError(f"{file} has no log_history list: not an HF trainer_state.json")
    raw: dict[str, tuple[list[int], list[float]]] = {}
    epochs: dict[int, float] = {}
    summary: dict[str, Any] = {}
    for row in state["log_history"]:
        if not isinstance(row, dict):
            continue
        step = to_step(row.get("step"))
        if step is None:
            continue
        if any(k in row for k in SUMMARY_KEYS):
            summary = {k: v for k, v in row.items() if isinstance(v, (int, float, str))}
            continue
        for key, cell in row.items():
            value = to_float(cell) if not isinstance(cell, str) else None
            if key == "step" or value is None:
                continue
            if key == "epoch":
                epochs.setdefault(step, value)  # train and eval rows repeat it
                continue
            steps, values = raw.setdefault(key, ([], []))
            steps.append(step)
            values.append(value)
    if epochs:
        raw["epoch"] = (list(epochs), list(epochs.values()))
    meta: dict[str, Any] = {k: state[k] for k in META_KEYS if k in state}
    meta["step_unit"] = "step"
    meta["file"] = str(file)
    if summary:
        meta["hf_summary"] = summary
    logging_steps = state.get("logging_steps")
    meta["notes"] = [
        "HF logs the training loss at every step (logging_steps=1)"
        if logging_steps == 1
        else "HF logs the training loss as the mean over the last "
        f"{logging_steps if logging_steps else 'logging_steps'} steps at each logged step"
    ]
    return build_run(os.fspath(path), "hf", raw, meta, run=run)
