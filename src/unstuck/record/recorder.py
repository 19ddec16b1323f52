"""One place a run's records go: the run store, the sinks, and the report written at the end.

The Guard and the Keras callback both record through a :class:`Recorder`, so a run store, a
TensorBoard log or an MLflow run reads the same whichever of them watched the training.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unstuck.record.console import LOGGER_NAME
from unstuck.record.store import RunStore
from unstuck.types import Plateau, primitive

__all__ = ["Recorder", "make_sinks", "state_payload"]

logger = logging.getLogger(LOGGER_NAME)


def make_sinks(owner: str, tensorboard: Any, mlflow: Any, *, build: bool = True) -> list[Any]:
    """The sinks asked for (``owner`` names the caller in errors); with ``build=False`` (ranks
    other than 0) the arguments are checked the same way but nothing is opened."""
    from unstuck.record.sinks import MlflowSink, Sink, TensorBoardSink

    sinks: list[Any] = []
    if tensorboard is not None:
        if not isinstance(tensorboard, (str, os.PathLike)):
            raise TypeError(
                f"{owner}: tensorboard must be a directory path, got {type(tensorboard).__name__}"
            )
        if build:
            sinks.append(TensorBoardSink(tensorboard))
    if isinstance(mlflow, Sink):
        if build:
            sinks.append(mlflow)
    elif mlflow is True:
        if not build:
            return sinks
        try:
            sinks.append(MlflowSink())
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
    elif mlflow not in (False, None):
        raise TypeError(
            f"{owner}: mlflow must be True, False or an MlflowSink, got {type(mlflow).__name__}"
        )
    return sinks


def state_payload(
    series: str, before: str, state: str, plateau: Plateau | None, stats: Mapping[str, Any]
) -> dict[str, Any]:
    """The payload of a ``state`` event: the detector of ``series`` went from ``before`` to
    ``state``, with the plateau it holds open (if any) and its statistics."""
    return {
        "series": series,
        "from": str(before),  # plain str: a DetectorState is stored as its value
        "to": str(state),
        "plateau": plateau.to_dict() if plateau else None,
        "stats": primitive(stats),
    }


class Recorder:
    """The run store (with a ``run_dir``) and the sinks, fed the same rows and events.

    Everything is opened here, so a store or sink that cannot be written fails before the first
    training step. ``build=False`` checks the arguments and records nothing (the ranks other
    than 0: they make rank 0's decisions, and a store of their own would repeat them).
    """

    def __init__(
        self,
        owner: str,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
        tensorboard: Any = None,
        mlflow: Any = False,
        report: bool = True,
        build: bool = True,
    ) -> None:
        if run_dir is not None:
            if not isinstance(run_dir, (str, os.PathLike)):
                raise TypeError(
                    f"{owner}: run_dir must be a directory path or None, "
                    f"got {type(run_dir).__name__}"
                )
            if not os.fspath(run_dir).strip():
                raise ValueError(
                    f"{owner}: run_dir is an empty path, which would write into the working "
                    "directory; pass a directory such as run_dir='runs/exp1', or run_dir=None"
                )
        self.sinks = make_sinks(owner, tensorboard, mlflow, build=build)
        try:
            self.store = (
                RunStore(run_dir, meta=dict(meta or {})) if run_dir is not None and build else None
            )
        except BaseException:
            for sink in self.sinks:
                sink.close()
            raise
        self.write_report = bool(report)
        self.closed = False
        self._sink_failed = False  # a sink's write failure is said once

    @property
    def run_dir(self) -> Path | None:
        """The directory of the run store; ``None`` when nothing goes to disk."""
        return None if self.store is None else self.store.path.parent

    def log_metrics(self, rows: list[tuple[str, int, float]]) -> None:
        if self.store is not None:
            self.store.log_metrics(rows)
        for sink in self.sinks:
            sink.log_metrics(rows)

    def log_event(self, kind: str, step: int, payload: Mapping[str, Any]) -> None:
        if self.store is not None:
            self.store.log_event(kind, step, payload)
        for sink in self.sinks:
            sink.log_event(kind, step, payload)

    def update_meta(self, **meta: Any) -> None:
        """Merge entries into the run's metadata (no-op without a store)."""
        if self.store is not None:
            self.store.update_meta(**meta)

    def flush(self, *, wait: bool) -> None:
        """Hand the buffered rows to the store's writer thread; ``wait=True`` also waits for the
        commit (then a killed process keeps them) and flushes the sinks."""
        if self.store is not None:
            try:
                self.store.flush(wait=wait)
            except RuntimeError as exc:  # a failed commit: the writer already warned once
                logger.debug("unstuck: %s", exc)
        if wait:
            for sink in self.sinks:
                try:
                    sink.flush()
                except OSError as exc:  # a sink's disk filled up: the same as the store's
                    if not self._sink_failed:
                        logger.warning(
                            "unstuck: %s could not write (%s); training goes on without it",
                            type(sink).__name__,
                            exc,
                        )
                    self._sink_failed = True

    def close(self, **meta: Any) -> Path | None:
        """Merge ``meta`` into the run's metadata, close the store, write the report (when asked
        ), close the sinks; returns the report's path. Idempotent."""
        if self.closed:
            return None
        self.closed = True
        report_path = None
        try:
            if self.store is not None:
                if meta:
                    self.store.update_meta(**meta)
                try:
                    self.store.close()
                except RuntimeError as exc:  # a failed commit: the writer already warned once
                    logger.debug("unstuck: %s", exc)
                report_path = self._report()
        finally:
            for sink in self.sinks:
                sink.close(report_path)
        return report_path

    def _report(self) -> Path | None:
        """Write ``run_dir/report.html`` from the closed store: this run's, by its run id (other
        runs may share the file). A store the disk could not hold gets no report, not an error:
        the training it recorded has finished."""
        if not self.write_report or self.store is None:
            return None
        try:
            from unstuck.record.report import write_report
            from unstuck.record.rundata import load_run

            run = load_run(self.store.path, run_id=self.store.run_id)
            return write_report(run, self.store.path.parent / "report.html")
        except ImportError as exc:
            logger.info("unstuck: no HTML report (%s)", exc)
            return None
        except (OSError, ValueError, sqlite3.Error) as exc:
            logger.warning(
                "unstuck: no HTML report for %s (%s); `unstuck report %s` writes it later",
                self.store.path.parent,
                exc,
                self.store.path.parent,
            )
            return None
