"""Sinks against the real libraries: TensorBoard event files read back with TensorBoard's own
EventAccumulator; MLflow against a local SQLite tracking store."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from _report_support import HOSTILE, require
from unstuck.record.sinks import (
    MlflowSink,
    Sink,
    TensorBoardSink,
    markdown_escape,
    mlflow_name,
)
from unstuck.types import ActionRecord, Finding, Remedy

ROWS = [
    ("loss", 0, 2.5),
    ("loss", 8, 2.25),
    ("loss", 16, 0.1),  # not exact in float32
    ("loss", 24, math.nan),
    ("grad_norm/0.weight", 15, 0.125),
    ("grad_norm/0.weight", 31, math.inf),
    ("val_loss", 15, 3.0),
]
FINDING = Finding(
    cause="lr_too_low",
    confidence=0.75,
    evidence={"update_ratio_median": 1.2e-6, "note": HOSTILE},
    step=16,
    summary="update/weight ratio 1.2e-06 is *far* below 1e-4 <b>bold</b>",
    remedies=(Remedy("lr_scale", {"factor": 10.0}, automatic=True),),
)
ACTION = ActionRecord(
    "lr_scale", 16, "lr_too_low 0.75: steps too small", params={"factor": 10.0, "label": "lr ×10"}
)
STATE = {
    "series": "train",
    "from": "slow",
    "to": "plateau",
    "plateau": {"series": "train", "start": 0, "end": None, "kind": "early", "confidence": 1.0},
    "stats": {"points": 24},
}


def _events() -> list[tuple[str, int, dict]]:
    outcome = ActionRecord(**{**ACTION.__dict__, "outcome": "kept", "verified_step": 32})
    outcome.evidence = {"verdict_change": -0.2, "verdict_stderr": 0.01, "verdict_log_scale": True}
    return [
        ("state", 16, STATE),
        ("finding", 16, FINDING.to_dict()),
        ("action", 16, ACTION.to_dict()),
        ("probe", 17, {"probe": "curvature", "status": "ok", "lambda_max": 1.5}),
        ("action_outcome", 32, outcome.to_dict()),
    ]


def test_sinks_implement_the_interface() -> None:
    assert issubclass(TensorBoardSink, Sink) and issubclass(MlflowSink, Sink)
    with pytest.raises(TypeError):
        Sink()  # type: ignore[abstract]


def test_mlflow_name_mapping() -> None:
    assert mlflow_name("grad_norm/0.weight") == "grad_norm/0.weight"
    assert mlflow_name("loss_component/a:b<c>") == "loss_component/a_b_c_"
    assert mlflow_name("/a//b/./c/../") == "_/a/_/b/_/c/__/_"
    long = mlflow_name("x" * 300)
    assert len(long) == 250 and long != mlflow_name("x" * 301)


def test_markdown_escape() -> None:
    assert markdown_escape("lr_too_low *x* [a](b) <b>\n# h") == (
        r"lr\_too\_low \*x\* \[a\](b) &lt;b&gt; # h"
    )


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_round_trip(tmp_path: pathlib.Path) -> None:
    require("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path / "tb")
    sink.log_metrics(ROWS[:4])
    sink.log_metrics(ROWS[4:])
    for kind, step, payload in _events():
        sink.log_event(kind, step, payload)
    sink.flush()
    sink.close(tmp_path / "report.html")
    sink.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        sink.log_metrics(ROWS)

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"loss", "grad_norm/0.weight", "val_loss"}
    for name in ("loss", "grad_norm/0.weight", "val_loss"):
        logged = [(s, v) for n, s, v in ROWS if n == name]
        read = [(e.step, e.value) for e in acc.Scalars(name)]
        assert [s for s, _ in read] == [s for s, _ in logged]
        expected = np.float32([v for _, v in logged])  # TensorBoard keeps float32
        np.testing.assert_array_equal(np.float32([v for _, v in read]), expected)

    def texts(tag: str) -> list[tuple[int, str]]:
        events = acc.Tensors(f"{tag}/text_summary")
        return [(e.step, e.tensor_proto.string_val[0].decode("utf-8")) for e in events]

    assert "unstuck/findings/text_summary" in tags["tensors"]
    ((step, finding),) = texts("unstuck/findings")
    assert step == FINDING.step
    assert markdown_escape(FINDING.summary) in finding
    assert r"lr\_too\_low" in finding
    assert "update\\_ratio\\_median" in finding
    assert HOSTILE not in finding and "&lt;/script&gt;" in finding
    actions = texts("unstuck/actions")
    assert [s for s, _ in actions] == [16, 32]
    assert "lr ×10" in actions[0][1] and "pending" in actions[0][1]
    assert "kept" in actions[1][1] and "Δ log loss -0.2" in actions[1][1]
    ((_, state),) = texts("unstuck/state")
    assert "slow → plateau" in state and "early plateau since step 0" in state
    ((_, probe),) = texts("unstuck/probes")
    assert "curvature probe" in probe and "lambda\\_max: 1.5" in probe
    ((_, report),) = texts("unstuck/report")
    assert "report.html" in report


def test_tensorboard_sink_accepts_what_a_guard_records(tmp_path: pathlib.Path) -> None:
    """The rows and events of a real guarded run (read from its store) go through as they are."""
    require("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from _report_support import guarded_run
    from unstuck.record import read_events, read_metrics

    guarded_run(tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    with TensorBoardSink(tmp_path / "tb") as sink:
        for name, (steps, values) in metrics.items():
            sink.log_metrics([(name, s, v) for s, v in zip(steps, values)])
        for event in read_events(tmp_path / "run"):
            sink.log_event(event["kind"], event["step"], event["payload"])
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(metrics)
    assert len(acc.Scalars("loss")) == len(metrics["loss"][0])


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """A local SQLite tracking store (its first initialisation takes a few seconds)."""
    require("mlflow", "mlflow")
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    experiment = mlflow.create_experiment("unstuck-test", artifact_location=str(root / "art"))
    yield mlflow, experiment, root
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def test_mlflow_without_an_active_run_is_one_clear_error(mlflow_store) -> None:
    mlflow, _, _ = mlflow_store
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match=r"call mlflow\.start_run\(\) first") as info:
        MlflowSink()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("synchronous", [False, True])
def test_mlflow_round_trip(mlflow_store, tmp_path: pathlib.Path, synchronous: bool) -> None:
    mlflow, experiment, _ = mlflow_store
    report = tmp_path / "report.html"
    report.write_text("<!DOCTYPE html><title>r</title>", encoding="utf-8")
    rows = [*ROWS, ("odd:name<x>", 3, 1.0)]
    with mlflow.start_run(experiment_id=experiment) as run:
        sink = MlflowSink(synchronous=synchronous)
        sink.log_metrics(rows[:4])
        sink.log_metrics(rows[4:])
        for kind, step, payload in _events():
            sink.log_event(kind, step, payload)
        sink.close(report_path=report)
        assert mlflow.active_run().info.run_id == run.info.run_id  # not ended: not ours
    client = mlflow.MlflowClient()
    run_id = run.info.run_id
    for name in ("loss", "grad_norm/0.weight", "val_loss", "odd:name<x>"):
        logged = [(s, v) for n, s, v in rows if n == name]
        history = client.get_metric_history(run_id, mlflow_name(name))
        read = sorted((m.step, m.value) for m in history)
        assert [s for s, _ in read] == [s for s, _ in logged]
        for (_, got), (_, want) in zip(read, logged):
            if math.isnan(want):
                assert math.isnan(got)
            elif math.isinf(want):
                assert got == math.copysign(1.7976931348623157e308, want)  # MLflow's SQL ±inf
            else:
                assert got == want
    tags = client.get_run(run_id).data.tags
    assert tags["unstuck.finding.lr_too_low"] == f"0.75 · {FINDING.summary}"
    assert tags["unstuck.causes"] == "lr_too_low"
    assert tags["unstuck.action.16.lr_scale"].startswith("lr ×10 → kept · Δ log loss -0.2")
    assert tags["unstuck.state.train"].startswith("step 16: train slow → plateau")
    assert "lambda_max=1.5" in tags["unstuck.probe.curvature.17"]
    artifacts = [a.path for a in client.list_artifacts(run_id, "unstuck")]
    assert artifacts == ["unstuck/report.html"]


def test_mlflow_start_true_starts_and_ends_its_run(mlflow_store) -> None:
    mlflow, experiment, _ = mlflow_store
    mlflow.set_experiment(experiment_id=experiment)
    sink = MlflowSink(start=True, synchronous=True)
    assert mlflow.active_run().info.run_id == sink.run_id
    long_summary = "x" * 9000
    sink.log_event("finding", 1, {**FINDING.to_dict(), "summary": long_summary})
    sink.log_metrics(
        [(f"grad_norm/layer{i}.weight", s, float(s)) for i in range(30) for s in range(40)]
    )  # 1,200 rows: two batches
    sink.close()
    assert mlflow.active_run() is None
    client = mlflow.MlflowClient()
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED"
    tag = run.data.tags["unstuck.finding.lr_too_low"]
    assert len(tag) == 5000 and tag.endswith("…")
    assert len(client.get_metric_history(sink.run_id, "grad_norm/layer29.weight")) == 40


def test_mlflow_colliding_names_stay_apart(mlflow_store) -> None:
    mlflow, experiment, _ = mlflow_store
    with mlflow.start_run(experiment_id=experiment) as run:
        sink = MlflowSink(synchronous=True)
        sink.log_metrics([("a:b", 0, 1.0), ("a<b", 0, 2.0)])
        sink.close()
    assert sink.name_for("a:b") == "a_b"
    other = sink.name_for("a<b")
    assert other.startswith("a_b_") and len(other) == len("a_b_") + 8
    client = mlflow.MlflowClient()
    assert client.get_metric_history(run.info.run_id, "a_b")[0].value == 1.0
    assert client.get_metric_history(run.info.run_id, other)[0].value == 2.0


# --------------------------------------------------------------------------- the Guard's sinks


def test_guard_mirrors_its_run_to_tensorboard_and_writes_the_report(tmp_path: pathlib.Path):
    require("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from _report_support import guarded_run
    from unstuck.record import read_metrics

    guard = guarded_run(tmp_path / "run", tensorboard=tmp_path / "tb")
    assert guard.findings and guard.actions
    stored = read_metrics(tmp_path / "run", names=["loss", "lr_multiplier"])
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == stored["loss"][0]
    np.testing.assert_allclose(
        [e.value for e in acc.Scalars("loss")], stored["loss"][1], rtol=1e-6
    )  # float32 in TensorBoard
    assert [e.value for e in acc.Scalars("lr_multiplier")][-1] == pytest.approx(guard.lr_multiplier)
    texts = " ".join(
        t.tensor_proto.string_val[0].decode()
        for tag in acc.Tags()["tensors"]
        for t in acc.Tensors(tag)
    )
    assert guard.findings[0].cause.replace("_", "\\_") in texts
    assert 0 < (tmp_path / "run" / "report.html").stat().st_size < 1_000_000  # inline SVG


def test_guard_logs_to_the_active_mlflow_run(mlflow_store, tmp_path: pathlib.Path) -> None:
    from _report_support import guarded_run

    mlflow, experiment, _ = mlflow_store
    client = mlflow.tracking.MlflowClient()
    with mlflow.start_run(experiment_id=experiment) as run:
        guard = guarded_run(tmp_path / "run", mlflow=True)
    data = client.get_run(run.info.run_id).data
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) == guard.steps
    finding = guard.findings[0].cause
    assert any(finding in key for key in data.tags), sorted(data.tags)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "unstuck")]
    assert artifacts == ["unstuck/report.html"]


def test_guard_rejects_bad_sink_arguments_before_touching_anything(tmp_path: pathlib.Path):
    import torch

    import unstuck
    from conftest import tiny_mlp

    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="tensorboard must be a directory"):
        unstuck.Guard(model, optimizer, tensorboard=3, run_dir=tmp_path / "a")
    with pytest.raises(TypeError, match="mlflow must be"):
        unstuck.Guard(model, optimizer, mlflow="yes", run_dir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not optimizer._optimizer_step_pre_hooks  # no hooks left behind
