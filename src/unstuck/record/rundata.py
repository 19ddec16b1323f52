"""One run's record in memory: the common shape the report and ``unstuck analyze`` share.

Every source — unstuck's own run store, or a log another tool wrote (TensorBoard, HF
``trainer_state.json``, Lightning and Keras CSV, MLflow) — becomes a :class:`RunData`: named
series of (step, value) points plus whatever unstuck found in them. The report renders a
``RunData`` and never reads a source itself, so each source is parsed in exactly one place.

Series names are canonical where the meaning is known: ``loss`` (training loss per step or per
logged window), ``val_loss``, ``lr/<group>`` (the user's schedule), ``lr_multiplier``
(unstuck's factor), ``grad_norm``, ``grad_norm/<parameter>``, ``update_ratio``; any other series
keeps the name the source gave it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unstuck.types import ActionRecord, Finding, Plateau

__all__ = [
    "DETECTOR_OPTIONS_KEY",
    "FLUSH_SERIES",
    "MOMENTUM_SERIES",
    "REFERENCE_CURVES_KEY",
    "REFERENCE_SERIES_KEY",
    "RUN_FACTS_KEY",
    "RunData",
    "load_run",
    "reference_curves_meta",
]

# What a Guard records so that its store can be replayed offline as the live run decided:
# the facts its rules read that are no series (parameter names and shapes, the optimizer type)
# in the metadata, one ``lr_multiplier`` row per flush (the cadence it decided at), and the
# SGD momentum per flush (add_momentum changes it).
RUN_FACTS_KEY = "facts"
DETECTOR_OPTIONS_KEY = "detector_options"  # the options its detectors ran with
REFERENCE_SERIES_KEY = "reference_series"  # names of the series loaded from reference curves
FLUSH_SERIES = "lr_multiplier"
MOMENTUM_SERIES = "optimizer_momentum"

# A run's metadata may carry reference curves to draw beside its own series: the same model
# trained without unstuck (``unstuck demo``), or a baseline the user ran. They are kept in the
# metadata, not among the run's metrics, so no rule or detector ever reads them as the run.
REFERENCE_CURVES_KEY = "reference_curves"
MAX_REFERENCE_POINTS = 1000  # points kept per reference curve (block means beyond it)


def reference_curves_meta(curves: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Metadata entry for ``Guard(meta=...)`` that holds reference curves, downsampled.

    ``curves`` maps a series name (``compare/loss``, ``compare/val_loss``) to ``(steps,
    values)``; :func:`load_run` turns each back into a series of that name.
    """
    out: dict[str, Any] = {}
    for name, (steps, values) in curves.items():
        s = np.asarray(steps, dtype=np.float64).reshape(-1)
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if s.size != v.size:
            raise ValueError(f"reference curve {name!r}: {s.size} steps but {v.size} values")
        block = max(1, -(-s.size // MAX_REFERENCE_POINTS))
        if block > 1:
            # Block means, each dated at its last step; a short last block is kept as it is.
            starts = np.arange(0, s.size, block)
            v = np.add.reduceat(v, starts) / np.diff(np.append(starts, s.size))
            s = s[np.minimum(starts + block, s.size) - 1]
        out[name] = {"steps": [int(x) for x in s], "values": [float(x) for x in v]}
    return {REFERENCE_CURVES_KEY: out}


@dataclass
class RunData:
    """A run's series, plateaus, findings, actions and probe results."""

    source: str  # the path (or URI and run id) it was read from
    format: str  # "unstuck", "tensorboard", "hf", "lightning", "keras" or "mlflow"
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    plateaus: list[Plateau] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    actions: list[ActionRecord] = field(default_factory=list)  # final outcome of each action
    probes: list[dict[str, Any]] = field(default_factory=list)  # probe event payloads, with step
    meta: dict[str, Any] = field(default_factory=dict)

    def add_series(self, name: str, steps: Any, values: Any) -> None:
        """Store a series sorted by step, as float64 arrays (steps as int64)."""
        s = np.asarray(steps, dtype=np.int64).reshape(-1)
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if s.size != v.size:
            raise ValueError(f"series {name!r}: {s.size} steps but {v.size} values")
        order = np.argsort(s, kind="stable")
        self.series[name] = (s[order], v[order])

    @classmethod
    def from_store(cls, path: str | os.PathLike[str], run_id: str | None = None) -> RunData:
        """Read one run of unstuck's own run store; see :func:`load_run`."""
        return load_run(path, run_id)


def load_run(path: str | os.PathLike[str], run_id: str | None = None) -> RunData:
    """Read one run (the latest by default) of a run store into a :class:`RunData`.

    ``path`` is the ``run_dir`` a Guard wrote or its ``unstuck.sqlite``. The store keeps events,
    not objects, so this rebuilds them: a plateau is the last version of each (series, start)
    seen in a ``state`` event's payload, closed at the step where its series left the plateau
    state (the detector closes it there; the event then carries no plateau); an action is its
    ``action`` event updated by the ``action_outcome`` event for the same step and name;
    findings and probe payloads (with their ``step``) are kept in order. ``meta`` holds the
    run's metadata plus ``run_id``, ``status``, ``started_at`` and ``ended_at``.

    >>> run = load_run("runs/exp1")  # doctest: +SKIP
    >>> run.series["loss"][1][-1], [f.cause for f in run.findings]  # doctest: +SKIP
    """
    from unstuck.record.store import (
        STORE_FILENAME,
        read_events,
        read_metrics,
        read_runs,
    )

    runs = read_runs(path)  # raises FileNotFoundError / ValueError with a clear message
    if not runs:
        raise ValueError(f"run store {path} holds no runs yet")
    if run_id is None:
        info = runs[-1]
    else:
        matching = [r for r in runs if r["run_id"] == run_id]
        if not matching:
            known = [r["run_id"] for r in runs]
            raise ValueError(f"no run {run_id!r} in {path}; known runs: {known}")
        info = matching[0]
    rid = str(info["run_id"])
    meta = dict(info["meta"]) if isinstance(info["meta"], dict) else {}
    meta.update(
        run_id=rid,
        status=info["status"],
        started_at=info["started_at"],
        ended_at=info["ended_at"],
    )
    source = os.fspath(path)
    if os.path.basename(source) == STORE_FILENAME:
        source = os.path.dirname(source) or "."
    curves = meta.pop(REFERENCE_CURVES_KEY, None)
    run = RunData(source=source, format="unstuck", meta=meta)
    for name, (steps, values) in read_metrics(path, rid).items():
        run.add_series(name, steps, values)
    if isinstance(curves, dict):
        for name, curve in curves.items():
            if isinstance(curve, dict) and name not in run.series:
                try:
                    run.add_series(str(name), curve.get("steps", []), curve.get("values", []))
                except (TypeError, ValueError):
                    continue  # a malformed reference curve is left out, never fatal
                run.meta.setdefault(REFERENCE_SERIES_KEY, []).append(str(name))
    _apply_events(run, read_events(path, rid))
    return run


def _apply_events(run: RunData, events: list[dict[str, Any]]) -> None:
    plateaus: dict[tuple[str, int], Plateau] = {}
    open_by_series: dict[str, tuple[str, int]] = {}
    actions: dict[tuple[int, str], ActionRecord] = {}
    for event in events:
        kind, step, payload = event["kind"], int(event["step"]), event["payload"]
        if not isinstance(payload, dict):
            continue
        if kind == "state":
            series = str(payload.get("series", "train"))
            data = payload.get("plateau")
            if isinstance(data, dict) and "start" in data:
                plateau = Plateau.from_dict({"series": series, **data})
                key = (plateau.series, int(plateau.start))
                plateaus[key] = plateau
                if plateau.end is None:
                    open_by_series[plateau.series] = key
                else:
                    open_by_series.pop(plateau.series, None)
            elif payload.get("to") != "plateau" and series in open_by_series:
                key = open_by_series.pop(series)
                old = plateaus[key]
                plateaus[key] = Plateau(
                    old.series, old.start, step, old.kind, old.confidence, old.detected_at
                )
        elif kind == "finding":
            run.findings.append(Finding.from_dict(payload))
        elif kind in ("action", "action_outcome"):
            record = ActionRecord.from_dict(payload)
            # the outcome replaces its action in place: a dict keeps first-insertion order
            actions[(int(record.step), record.name)] = record
        elif kind == "probe":
            run.probes.append({"step": step, **payload})
    run.plateaus = sorted(plateaus.values(), key=lambda p: (p.start, p.series))
    run.actions = list(actions.values())
