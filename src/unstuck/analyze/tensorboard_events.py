"""TensorBoard event files -> RunData, read with TensorBoard's own ``EventAccumulator``.

A run is one folder of ``events.out.tfevents.*`` files, possibly with **split folders** beside
its own files: ``train/`` and ``validation/`` (Keras' TensorBoard callback), ``eval/`` ... , or
the folders ``SummaryWriter.add_scalars("Loss", {"train": ..., "val": ...})`` makes
(``Loss_train/`` holding tag ``Loss``). Their tags are read as ``<split>/<tag>`` (``train/
epoch_loss``, ``Loss/train``) and then mapped like any other name (``names.py``). Any other set
of event folders is several runs: the reader lists them and asks for one.

Both kinds of scalar are read: old-style ``simple_value`` scalars (torch's ``SummaryWriter``,
TF1) and TF2 tensor summaries of the ``scalars`` plugin (Keras' callback, ``tf.summary``).
``size_guidance`` keeps every point (TensorBoard's default keeps 10,000 per tag).
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

from unstuck.analyze import _limits
from unstuck.analyze._common import LogFormatError, build_run, check_regular, require
from unstuck.record.rundata import RunData

__all__ = ["EVENT_PREFIX", "SPLIT_DIRS", "event_dirs", "read_tensorboard"]

EVENT_PREFIX = "events.out.tfevents"
SPLIT_DIRS = frozenset(
    {"train", "training", "validation", "val", "valid", "eval", "evaluation", "test"}
)
RECORD_HEADER = 12  # a TFRecord: u64 length, u32 CRC of it, the data, u32 CRC of the data
_KEEP_ALL = {"scalars": 0, "tensors": 0, "histograms": 1, "images": 1, "audio": 1}


def event_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (itself included) that holds event files, sorted."""
    if root.is_file():
        return [root]
    found = {p.parent for p in root.rglob(EVENT_PREFIX + "*") if p.is_file()}
    return sorted(found)


def _check_records(file: Path) -> None:
    """Refuse an event file with a record claiming more than ``_limits.MAX_TB_RECORD_BYTES``
    before TensorBoard's reader allocates that much (a corrupt header claiming 2**40 bytes is a
    MemoryError there). Only the 12-byte headers are read; the data is skipped."""
    check_regular(file, folder_ok=False)
    with file.open("rb") as fh:
        while len(header := fh.read(RECORD_HEADER)) == RECORD_HEADER:
            (length,) = struct.unpack("<Q", header[:8])
            if length > _limits.MAX_TB_RECORD_BYTES:
                raise LogFormatError(
                    f"{file} has a record claiming {length} bytes, over the "
                    f"{_limits.MAX_TB_RECORD_BYTES} an event record may be (a corrupt file?)"
                )
            fh.seek(length + 4, os.SEEK_CUR)


def _load(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Scalars of one event folder (or one event file) as ``{tag: (steps, values)}``."""
    files = [path] if path.is_file() else sorted(path.glob(EVENT_PREFIX + "*"))
    for file in files:
        _check_records(file)
    accumulator = require("tensorboard.backend.event_processing.event_accumulator", "tensorboard")
    tensor_util = require("tensorboard.util.tensor_util", "tensorboard")
    acc: Any = accumulator.EventAccumulator(str(path), size_guidance=_KEEP_ALL)
    acc.Reload()
    tags = acc.Tags()
    out: dict[str, tuple[list[int], list[float]]] = {}
    for tag in tags.get("scalars", []):
        events = acc.Scalars(tag)
        out[tag] = ([int(e.step) for e in events], [float(e.value) for e in events])
    for tag in tags.get("tensors", []):
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars" or tag in out:
            continue
        steps, values = [], []
        for e in acc.Tensors(tag):
            array = tensor_util.make_ndarray(e.tensor_proto)
            if array.size == 1:
                steps.append(int(e.step))
                values.append(float(array.reshape(-1)[0]))
        out[tag] = (steps, values)
    return out


def _scalars_prefix(name: str, tags: dict[str, Any]) -> str | None:
    """``Loss_train`` holding only tag ``Loss`` (``add_scalars``) reads as ``Loss/train``."""
    if len(tags) != 1:
        return None
    (tag,) = tags
    stem = tag.replace("/", "_") + "_"
    if name.startswith(stem) and len(name) > len(stem):
        return f"{tag}/{name[len(stem) :]}"
    return None


def _group(root: Path, loaded: dict[Path, dict[str, Any]]) -> dict[Path, list[tuple[str, Path]]]:
    """Runs by their folder, each a list of (series prefix, event folder) parts.

    A split folder (``train/``, ``validation/`` ...) and an ``add_scalars`` folder belong to
    the run of their parent folder; every other event folder is a run of its own.
    """
    runs: dict[Path, list[tuple[str, Path]]] = defaultdict(list)
    for d, tags in loaded.items():
        if d != root and d.is_dir():
            if d.name.lower() in SPLIT_DIRS:
                runs[d.parent].append((d.name + "/", d))
                continue
            scalars = _scalars_prefix(d.name, tags)
            if scalars is not None:
                runs[d.parent].append((scalars, d))
                continue
        runs[d].append(("", d))
    return runs


def read_tensorboard(path: str | os.PathLike[str], run: str | None = None) -> RunData:
    """Read the scalars of one TensorBoard run under ``path`` (a folder or an event file).

    ``run`` picks one run (its folder, relative to ``path``) when ``path`` holds several.
    """
    root = Path(path)
    dirs = event_dirs(root)
    if not dirs:
        raise LogFormatError(f"no {EVENT_PREFIX}.* files under {root}")
    loaded = {d: _load(d) for d in dirs}
    runs = _group(root, loaded)
    names = {_rel(r, root): r for r in runs}
    if run is not None:
        key = run.strip("/") or "."
        if key not in names:
            raise LogFormatError(
                f"no TensorBoard run {run!r} under {root}; runs: {', '.join(sorted(names))}"
            )
        run_dir = names[key]
    elif len(runs) == 1:
        (run_dir,) = runs
    else:
        raise LogFormatError(
            f"{len(runs)} TensorBoard runs under {root}: {', '.join(sorted(names))}; "
            "pass one of them as PATH or with --run"
        )
    raw: dict[str, tuple[list[int], list[float]]] = {}
    for prefix, d in runs[run_dir]:
        for tag, points in loaded[d].items():
            name = prefix if prefix and not prefix.endswith("/") else prefix + tag
            raw[name] = points
    if not any(steps for steps, _ in raw.values()):
        raise LogFormatError(f"no scalars in the event files of {run_dir}")
    meta = {
        "step_unit": "step",
        "run": _rel(run_dir, root),
        "event_dirs": [_rel(d, root) for _, d in runs[run_dir]],
    }
    return build_run(os.fspath(path), "tensorboard", raw, meta)


def _rel(d: Path, root: Path) -> str:
    if d == root or root.is_file():
        return "."
    try:
        return d.relative_to(root).as_posix()
    except ValueError:
        return d.as_posix()
