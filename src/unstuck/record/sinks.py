"""Sinks: mirror what the run store receives into TensorBoard or MLflow.

A sink takes exactly what the Guard gives its :class:`~unstuck.record.store.RunStore`: metric
rows ``(name, step, value)`` and events ``(kind, step, payload)`` with the kinds ``state``,
``finding``, ``action``, ``action_outcome`` and ``probe``. So a team that already watches
TensorBoard or MLflow sees the plateaus, findings and actions next to its own curves, without
opening the store. The libraries are imported when a sink is created, never by ``import
unstuck``. Names and tags are documented in ``docs/sinks.md``.

Example::

    sink = TensorBoardSink("runs/exp1/tb")
    sink.log_metrics([("loss", 0, 2.31), ("grad_norm/fc1.weight", 0, 0.7)])
    sink.log_event("finding", 0, finding.to_dict())
    sink.close()
"""

from __future__ import annotations

import abc
import hashlib
import html
import importlib
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "EVENT_TAGS",
    "MLFLOW_TAG_LIMIT",
    "MlflowSink",
    "Sink",
    "TensorBoardSink",
    "describe_event",
    "markdown_escape",
    "mlflow_name",
]

logger = logging.getLogger(__name__)

# TensorBoard text tags per event kind (torch's SummaryWriter stores them as "<tag>/text_summary")
EVENT_TAGS = {
    "state": "unstuck/state",
    "finding": "unstuck/findings",
    "action": "unstuck/actions",
    "action_outcome": "unstuck/actions",
    "probe": "unstuck/probes",
}
MLFLOW_TAG_LIMIT = 5000  # characters per tag value: the smallest limit across MLflow 2.x/3.x
MLFLOW_KEY_LIMIT = 250  # characters per metric name / tag key (mlflow MAX_ENTITY_KEY_LENGTH)
MLFLOW_BATCH = 1000  # metrics per log_batch request (mlflow MAX_METRICS_PER_BATCH)
MLFLOW_MAX_PENDING = 64  # async batches kept before the oldest half is awaited (bounds memory)
MAX_ITEMS = 8  # items of a list or dict shown in an event's text
_MLFLOW_BAD = re.compile(r"[^\w.\- /]")  # MLflow allows these (and ':' except on Windows)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~!])")  # inline markup; "<" and "&" are entities


def _require(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {extra}: pip install 'unstuck[{extra}]'") from exc


# --------------------------------------------------------------------------- event text


def _fmt(value: Any, depth: int = 0) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    if isinstance(value, Mapping) and depth < 2:
        items = list(value.items())
        body = ", ".join(f"{k}: {_fmt(v, depth + 1)}" for k, v in items[:MAX_ITEMS])
        return "{" + body + (", …" if len(items) > MAX_ITEMS else "") + "}"
    if isinstance(value, (list, tuple)) and depth < 2:
        body = ", ".join(_fmt(v, depth + 1) for v in value[:MAX_ITEMS])
        return "[" + body + (f", … ({len(value)} items)" if len(value) > MAX_ITEMS else "") + "]"
    return str(value)


def _verdict(evidence: Mapping[str, Any]) -> str:
    change = evidence.get("verdict_change")
    if not isinstance(change, (int, float)) or isinstance(change, bool):
        return ""
    stderr = evidence.get("verdict_stderr")
    unit = "log loss" if evidence.get("verdict_log_scale") else "loss"
    err = f" ± {_fmt(float(stderr))}" if isinstance(stderr, (int, float)) else ""
    return f"Δ {unit} {_fmt(float(change))}{err}"


def describe_event(kind: str, step: int, payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A one-line headline and the details (key → value) for an event, as plain text."""
    p = dict(payload)
    if kind == "state":
        head = f"step {step}: {p.get('series', 'train')} {p.get('from', '?')} → {p.get('to', '?')}"
        plateau = p.get("plateau")
        if isinstance(plateau, Mapping):
            head += (
                f" ({plateau.get('kind', '')} plateau since step {plateau.get('start')}, "
                f"confidence {_fmt(plateau.get('confidence'))})"
            )
        return head, dict(p.get("stats") or {})
    if kind == "finding":
        head = (
            f"step {step}: {p.get('cause', '?')} {_fmt(p.get('confidence'))} "
            f"({p.get('series', 'train')}): {p.get('summary', '')}"
        )
        details = dict(p.get("evidence") or {})
        remedies = p.get("remedies") or []
        if remedies:
            details["remedies"] = [r.get("action") for r in remedies if isinstance(r, Mapping)]
        return head, details
    if kind in ("action", "action_outcome"):
        params = p.get("params") or {}
        label = params.get("label", p.get("name", "?")) if isinstance(params, Mapping) else "?"
        outcome = str(p.get("outcome", "pending")).replace("_", " ")
        if kind == "action":
            head = f"step {step}: {label} ({p.get('name')}) → {outcome}, because {p.get('reason')}"
        else:
            head = f"step {step}: {label} ({p.get('name')}, applied at step {p.get('step')}) → "
            head += outcome + (
                f": {_verdict(p.get('evidence') or {})}" if p.get("evidence") else ""
            )
        return head, {"params": params, "evidence": p.get("evidence") or {}}
    if kind == "probe":
        name = p.pop("probe", "probe")
        return f"step {step}: {name} probe", p
    return f"step {step}: {kind}", p


def markdown_escape(text: str) -> str:
    """Text that TensorBoard's markdown renders literally, on one line.

    Line breaks become spaces (so no run-supplied text starts a line, where ``#``, ``-`` or
    ``1.`` would be markup), ``&``, ``<``, ``>`` become HTML entities, and the inline markup
    characters ``\\ ` * _ [ ] | ~ !`` get a backslash.
    """
    one_line = " ".join(text.splitlines())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def _markdown(kind: str, step: int, payload: Mapping[str, Any]) -> str:
    head, details = describe_event(kind, step, payload)
    lines = [f"**{markdown_escape(head)}**"]
    if details:
        lines.append("")
        lines += [
            f"- {markdown_escape(str(k))}: {markdown_escape(_fmt(v))}" for k, v in details.items()
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the interface


class Sink(abc.ABC):
    """Receives what the run store receives. Subclasses implement the three methods below.

    ``log_metrics`` and ``log_event`` are called on the training thread at each Guard flush, so
    they should hand work off rather than wait on a network (both sinks here do).
    """

    @abc.abstractmethod
    def log_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        """Record ``(name, step, value)`` rows; NaN and ±inf may occur (they are data)."""

    @abc.abstractmethod
    def log_event(self, kind: str, step: int, payload: Mapping[str, Any]) -> None:
        """Record one event (``state``, ``finding``, ``action``, ``action_outcome``, ``probe``)."""

    def flush(self) -> None:  # noqa: B027 - optional hook, a no-op unless a sink buffers
        """Push what is buffered (optional; ``close`` always does)."""

    @abc.abstractmethod
    def close(self, report_path: Path | None = None) -> None:
        """Finish; attach or mention the HTML report when one was written. Idempotent."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- TensorBoard


class TensorBoardSink(Sink):
    """Writes metrics as TensorBoard scalars and events as text, into ``log_dir``.

    Scalars: tag = the metric name as given (``loss``, ``grad_norm/fc1.weight``: TensorBoard
    groups by the part before the first ``/``), one point per row at its step. TensorBoard
    stores scalars as 32-bit floats. Non-finite values are written as they are: TensorBoard
    keeps NaN and ±inf and its charts show them as such, so a NaN loss stays visible.
    Events: markdown text under ``unstuck/state``, ``unstuck/findings``, ``unstuck/actions``
    (both ``action`` and ``action_outcome``), ``unstuck/probes`` (other kinds:
    ``unstuck/<kind>``); torch's writer stores a text tag as ``<tag>/text_summary``.
    Run-supplied text is markdown-escaped. Writing goes through torch's
    ``SummaryWriter``, which writes the event file on its own thread.

    >>> sink = TensorBoardSink("runs/exp1/tb")  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, flush_secs: int = 30) -> None:
        module = _require("torch.utils.tensorboard", "tensorboard", "TensorBoardSink")
        self.log_dir = Path(log_dir)
        self._writer = module.SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("TensorBoardSink is closed; create a new one to keep logging")

    def log_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        self._check_open()
        for name, step, value in rows:
            self._writer.add_scalar(str(name), float(value), int(step))

    def log_event(self, kind: str, step: int, payload: Mapping[str, Any]) -> None:
        self._check_open()
        tag = EVENT_TAGS.get(kind, f"unstuck/{kind}")
        self._writer.add_text(tag, _markdown(kind, int(step), payload), int(step))

    def flush(self) -> None:
        if not self._closed:
            self._writer.flush()

    def close(self, report_path: Path | None = None) -> None:
        if self._closed:
            return
        if report_path is not None:
            text = f"HTML report: {markdown_escape(str(Path(report_path).resolve()))}"
            self._writer.add_text("unstuck/report", text, 0)
        self._writer.close()
        self._closed = True


# --------------------------------------------------------------------------- MLflow


def mlflow_name(name: str) -> str:
    """A metric name or tag key MLflow accepts, mapped deterministically.

    Letters, digits, ``_ - . /`` and spaces are kept; any other character (``:`` too, which
    Windows stores refuse) becomes ``_``; empty, ``.`` and ``..`` path segments become ``_``,
    ``_`` and ``__`` (MLflow refuses names that normalise to another path); a name longer than
    250 characters is cut to 241 plus ``_`` and 8 hex digits of its SHA-1. ``grad_norm/0.weight``
    stays as it is.
    """
    out = _MLFLOW_BAD.sub("_", str(name))
    segments = ["__" if s == ".." else (s if s not in ("", ".") else "_") for s in out.split("/")]
    out = "/".join(segments)
    if len(out) > MLFLOW_KEY_LIMIT:
        out = out[: MLFLOW_KEY_LIMIT - 9] + "_" + _digest(str(name))
    return out


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).hexdigest()[:8]


def _truncate(text: str, limit: int = MLFLOW_TAG_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MlflowSink(Sink):
    """Logs metrics, findings and actions to an MLflow run.

    The run: ``run`` (an ``mlflow`` run object or a run id), else the active run
    (``mlflow.active_run()``); with none active it raises, unless ``start=True``, which starts
    a run with ``mlflow.start_run()`` and ends it in ``close``. The client uses the tracking
    URI current when the sink is created.

    Metrics: each ``log_metrics`` call (one per Guard flush) becomes ``log_batch`` requests of
    at most 1,000 metrics, sent asynchronously by MLflow's own logging queue unless
    ``synchronous=True``; ``close`` waits for them. Names go through :func:`mlflow_name`; two
    names that map to the same result are kept apart by an ``_`` + 8-hex suffix on the later
    one. Non-finite values are sent as they are: MLflow's stores keep NaN and store ±inf as
    ±1.8e308. Tags (values cut to 5,000 characters): ``unstuck.finding.<cause>`` =
    ``"<confidence> · <summary>"`` (the latest finding of that cause), ``unstuck.causes`` =
    every cause found so far, ``unstuck.action.<step>.<name>`` = ``"<label> → <outcome> ·
    <reason or verdict>"`` (updated by the outcome), ``unstuck.state.<series>`` = the latest
    state change, ``unstuck.probe.<probe>.<step>`` = the probe's values. ``close`` uploads the
    report as an artifact under ``unstuck/``.

    >>> mlflow.start_run()  # doctest: +SKIP
    >>> sink = MlflowSink()  # doctest: +SKIP
    """

    def __init__(self, run: Any = None, *, start: bool = False, synchronous: bool = False) -> None:
        mlflow = _require("mlflow", "mlflow", "MlflowSink")
        entities = importlib.import_module("mlflow.entities")
        self._mlflow = mlflow
        self._Metric = entities.Metric
        self._RunTag = entities.RunTag
        self._started = False
        if run is None:
            active = mlflow.active_run()
            if active is None:
                if not start:
                    raise RuntimeError(
                        "MlflowSink: no active MLflow run; call mlflow.start_run() first, "
                        "pass run=<run or run id>, or MlflowSink(start=True) to start one"
                    )
                active = mlflow.start_run()
                self._started = True
            run_id = str(active.info.run_id)
        elif isinstance(run, str):
            run_id = run
        else:
            run_id = str(run.info.run_id)
        self.run_id = run_id
        self.synchronous = bool(synchronous)
        self._client = mlflow.MlflowClient()
        self._names: dict[str, str] = {}  # original name -> MLflow name
        self._taken: dict[str, str] = {}  # MLflow name -> original name
        self._causes: list[str] = []
        self._pending: list[Any] = []  # async RunOperations to wait for on flush/close
        self._last_tags: Any = None  # the latest async tag batch, awaited before the next
        self._errors: list[str] = []  # async failures seen on the training thread, not raised yet
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("MlflowSink is closed; create a new one to keep logging")

    def name_for(self, name: str) -> str:
        """The MLflow name this sink uses for a metric (see :func:`mlflow_name`)."""
        mapped = self._names.get(name)
        if mapped is None:
            mapped = mlflow_name(name)
            if self._taken.get(mapped, name) != name:  # a different name got there first
                mapped = mlflow_name(mapped[: MLFLOW_KEY_LIMIT - 9]) + "_" + _digest(name)
            self._names[name] = mapped
            self._taken[mapped] = name
        return mapped

    def _send(self, metrics: Sequence[Any] = (), tags: Sequence[Any] = ()) -> None:
        if tags and self._last_tags is not None:
            # MLflow's async queue may store batches out of order; a tag overwritten later
            # (an action's outcome) must land after its first value. Events are rare, and
            # the previous tag batch is normally stored long before the next event.
            self._settle(self._last_tags)
            self._last_tags = None
        if len(self._pending) >= MLFLOW_MAX_PENDING:  # normally long done: only bounds memory
            for ops in self._pending[: MLFLOW_MAX_PENDING // 2]:
                self._settle(ops)
            del self._pending[: MLFLOW_MAX_PENDING // 2]
        ops = self._client.log_batch(
            self.run_id, metrics=list(metrics), tags=list(tags), synchronous=self.synchronous
        )
        if ops is not None:
            self._pending.append(ops)
            if tags:
                self._last_tags = ops

    def _settle(self, ops: Any) -> None:
        """Wait for an async batch; a failure is logged now and raised by flush/close."""
        try:
            ops.wait()
        except Exception as exc:
            logger.warning("MlflowSink: logging to run %s failed: %s", self.run_id, exc)
            self._errors.append(str(exc))

    def log_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        self._check_open()
        now = int(time.time() * 1000)
        metrics = [self._Metric(self.name_for(str(n)), float(v), now, int(s)) for n, s, v in rows]
        for i in range(0, len(metrics), MLFLOW_BATCH):
            self._send(metrics=metrics[i : i + MLFLOW_BATCH])

    def log_event(self, kind: str, step: int, payload: Mapping[str, Any]) -> None:
        self._check_open()
        tags = self._tags(kind, int(step), payload)
        if tags:
            self._send(tags=[self._RunTag(mlflow_name(k), _truncate(v)) for k, v in tags.items()])

    def _tags(self, kind: str, step: int, payload: Mapping[str, Any]) -> dict[str, str]:
        head, details = describe_event(kind, step, payload)
        if kind == "finding":
            cause = str(payload.get("cause", "unknown"))
            if cause not in self._causes:
                self._causes.append(cause)
            confidence = _fmt(payload.get("confidence"))
            return {
                f"unstuck.finding.{cause}": f"{confidence} · {payload.get('summary', '')}",
                "unstuck.causes": ", ".join(self._causes),
            }
        if kind in ("action", "action_outcome"):
            params = payload.get("params") or {}
            label = params.get("label", payload.get("name")) if isinstance(params, Mapping) else ""
            outcome = str(payload.get("outcome", "pending"))
            why = (
                _verdict(payload.get("evidence") or {}) or str(payload.get("reason", ""))
                if kind == "action_outcome"
                else str(payload.get("reason", ""))
            )
            key = f"unstuck.action.{payload.get('step', step)}.{payload.get('name', 'action')}"
            return {key: f"{label} → {outcome} · {why}"}
        if kind == "state":
            return {f"unstuck.state.{payload.get('series', 'train')}": head}
        if kind == "probe":
            name = str(payload.get("probe", "probe"))
            body = ", ".join(f"{k}={_fmt(v)}" for k, v in details.items())
            return {f"unstuck.probe.{name}.{step}": body}
        return {f"unstuck.{kind}.{step}": head}

    def flush(self) -> None:
        """Wait until every batch handed to MLflow so far is stored; raise if any failed."""
        pending, self._pending = self._pending, []
        self._last_tags = None
        for ops in pending:
            self._settle(ops)
        errors, self._errors = self._errors, []
        if errors:
            raise RuntimeError(
                f"MlflowSink: {len(errors)} logging request(s) to run {self.run_id} failed; "
                f"first: {errors[0]}"
            )

    def close(self, report_path: Path | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            if report_path is not None:
                self._client.log_artifact(self.run_id, str(report_path), artifact_path="unstuck")
        finally:
            if self._started:
                active = self._mlflow.active_run()
                if active is not None and active.info.run_id == self.run_id:
                    self._mlflow.end_run()
                else:
                    self._client.set_terminated(self.run_id)
