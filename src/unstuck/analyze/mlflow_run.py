"""One MLflow run -> RunData, through ``MlflowClient`` (any backend MLflow itself reads).

Passed as ``mlflow:RUN_ID`` with ``--tracking-uri URI`` (default: ``MLFLOW_TRACKING_URI``, as
MLflow's own default), or as the path of an MLflow SQLite file (``mlflow.db``) with
``--run RUN_ID`` (optional when the file holds a single run). Every metric key of the run
becomes a series over MLflow's ``step``, from ``get_metric_history`` (the full history, not the
latest value). The run's name, experiment, status and params go to ``meta``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unstuck.analyze._common import LogFormatError, build_run, require
from unstuck.record.rundata import RunData

__all__ = ["MLFLOW_PREFIX", "read_mlflow", "sqlite_uri"]

MLFLOW_PREFIX = "mlflow:"
LIST_LIMIT = 20  # run ids listed in an error


def sqlite_uri(path: str | os.PathLike[str]) -> str:
    """The tracking URI of an MLflow SQLite file."""
    # sqlite:/// + an absolute POSIX path gives the four slashes SQLAlchemy wants
    return "sqlite:///" + Path(path).resolve().as_posix()


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
    run_id: str | None, tracking_uri: str | None = None, *, source: str | None = None
) -> RunData:
    """Read every metric history of one MLflow run.

    ``run_id`` None picks the only run of the tracking store (an error lists them otherwise).
    """
    client = _client(tracking_uri)
    where = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default store"
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
        "tracking_uri": tracking_uri,
        "params": dict(run.data.params),
    }
    return build_run(source or f"{MLFLOW_PREFIX}{run_id}", "mlflow", raw, meta)
