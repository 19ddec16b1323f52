"""One MLflow run -> RunData, through ``MlflowClient`` (any backend MLflow itself reads).

Passed as ``mlflow:RUN_ID`` with ``--tracking-uri URI`` (default: ``MLFLOW_TRACKING_URI``, as
MLflow's own default), or as the path of an MLflow SQLite file (``mlflow.db``) with
``--run RUN_ID`` (optional when the file holds a single run). Every metric key of the run
becomes a series over MLflow's ``step``, from ``get_metric_history`` (the full history, not the
latest value). The run's name, experiment, status and params go to ``meta``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unstuck.analyze import _limits
from unstuck.analyze._common import LogFormatError, build_run, check_regular, require
from unstuck.record.rundata import RunData

__all__ = ["MLFLOW_PREFIX", "read_mlflow", "read_mlflow_file", "sqlite_uri"]

MLFLOW_PREFIX = "mlflow:"
LIST_LIMIT = 20  # run ids listed in an error
# The tables every MLflow SQLite store has (with a row in alembic_version): a file without them
# is not handed to MLflow, which would migrate it, i.e. write its own tables into it.
MLFLOW_TABLES = frozenset(
    {"alembic_version", "experiments", "runs", "metrics", "params", "tags", "latest_metrics"}
)


def sqlite_uri(path: str | os.PathLike[str]) -> str:
    """The tracking URI of an MLflow SQLite file."""
    # sqlite:/// + an absolute POSIX path gives the four slashes SQLAlchemy wants
    return "sqlite:///" + Path(path).resolve().as_posix()


def _check_mlflow_file(file: Path) -> None:
    """Refuse a SQLite file that is not an MLflow store, read without changing it."""
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            tables = {
                str(r[0])
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            version = None
            if "alembic_version" in tables:
                version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise LogFormatError(f"{file} is not a readable SQLite file ({exc})") from None
    missing = sorted(MLFLOW_TABLES - tables)
    if missing or version is None:
        why = f"no {', '.join(missing)} table" if missing else "no alembic version"
        raise LogFormatError(f"{file} is not an MLflow store ({why}); pass MLflow's mlflow.db")


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """MLflow and alembic log INFO lines to stderr while opening a store; the CLI prints one."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def read_mlflow_file(
    path: str | os.PathLike[str], run_id: str | None, *, source: str | None = None
) -> RunData:
    """One run of an MLflow SQLite file, read from a temporary copy: MLflow opens its store
    read-write (and migrates an older one), which must never change the user's file."""
    file = Path(path)
    size = check_regular(file, folder_ok=False).st_size
    _check_mlflow_file(file)
    if size > _limits.MAX_FILE_BYTES:
        raise LogFormatError(
            f"{file} is {size / 2**20:g} MiB, over the {_limits.MAX_FILE_BYTES / 2**20:g} MiB "
            "copied for reading; read it with mlflow:RUN_ID --tracking-uri sqlite:///PATH"
        )
    with tempfile.TemporaryDirectory(prefix="unstuck-mlflow-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        shutil.copyfile(file, copy)
        require("mlflow.tracking", "mlflow")  # its import sets its loggers' levels: quiet after
        try:
            with _quiet("mlflow", "alembic"):
                return read_mlflow(
                    run_id,
                    sqlite_uri(copy),
                    source=source or os.fspath(path),
                    where=sqlite_uri(file),
                )
        except (LogFormatError, ImportError):
            raise
        except Exception as exc:  # MLflow's own errors (alembic, SQLAlchemy) on a foreign file
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise LogFormatError(f"MLflow cannot read it: {first}") from None


def _client(tracking_uri: str | None) -> Any:
    tracking = require("mlflow.tracking", "mlflow")
    return tracking.MlflowClient(tracking_uri=tracking_uri)


def _only_run(client: Any, where: str) -> str:
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments]
    runs = client.search_runs(ids, max_results=LIST_LIMIT + 1) if ids else []
    if len(runs) == 1:
        return str(runs[0].info.run_id)
    if not runs:
        raise LogFormatError(f"no MLflow runs in {where}")
    listed = ", ".join(f"{r.info.run_id} ({r.info.run_name})" for r in runs[:LIST_LIMIT])
    more = " ..." if len(runs) > LIST_LIMIT else ""
    raise LogFormatError(f"several MLflow runs in {where}: {listed}{more}; pick one with --run")


def read_mlflow(
    run_id: str | None,
    tracking_uri: str | None = None,
    *,
    source: str | None = None,
    where: str | None = None,
) -> RunData:
    """Read every metric history of one MLflow run (``where`` names the store in errors).

    ``run_id`` None picks the only run of the tracking store (an error lists them otherwise).
    """
    client = _client(tracking_uri)
    where = (
        where or tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default store"
    )
    if not run_id:
        run_id = _only_run(client, where)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # MlflowException: not found, bad id, unreachable store
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LogFormatError(f"cannot read MLflow run {run_id!r} from {where}: {first}") from None
    raw: dict[str, tuple[list[int], list[float]]] = {}
    for key in sorted(run.data.metrics):
        history = sorted(
            client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)
        )
        raw[key] = ([int(m.step) for m in history], [float(m.value) for m in history])
    if not raw:
        raise LogFormatError(f"MLflow run {run_id} in {where} has no metrics")
    meta: dict[str, Any] = {
        "step_unit": "step",
        "run_id": run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "tracking_uri": tracking_uri if where is None else where,
        "params": dict(run.data.params),
    }
    return build_run(source or f"{MLFLOW_PREFIX}{run_id}", "mlflow", raw, meta)
