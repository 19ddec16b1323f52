"""``unstuck analyze``: readers, format detection, the offline analysis and the CLI.

The committed logs under ``tests/fixtures/logs`` were written by real frameworks
(``tests/fixtures/make_logs.py``); the MLflow one is written here into a temporary store. Each
run has the LR set to 0 on a labeled span (``labels.json``), so the loss is flat there by
construction and falls before and after it. What is checked on every format:

* the reader recovers exactly the steps, and the values, that the run handed to its logger;
* a plateau on the training loss overlaps each labeled span and closes after it (the loss
  falls again);
* no plateau on any series lies elsewhere: each overlaps a labeled span and stays inside the
  span widened by half its length on each side (the detector dates a plateau from the start
  of its flat window and closes it once the fall is significant, so the edges move a little);
* no finding reaches ``ROOT_CONFIDENCE``: the one cause here is a zero LR, which no rule can
  see from a log (docs/analyze.md), so a confident finding would be a false alarm; and none of
  the log-level readings (LR too high or too low, exploding gradients, converged) names its
  cause on them.

Four more committed runs each have a cause built in (``CAUSED``: an LR far too high, an LR far
too low, an LR jump that makes the gradient explode, a run that converged to its noise floor);
the analysis must name that cause from the log alone, but for the LR far too low, which a log at
one LR cannot tell from a run stopped early (``NOT_FROM_LOGS``): a note says so instead.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from unstuck.analyze import (
    FORMATS,
    LogFormatError,
    analyze,
    canonical_names,
    detect_format,
    load,
    loss_series,
)
from unstuck.analyze.analysis import MIN_PLATEAU_POINTS
from unstuck.analyze.mlflow_run import sqlite_uri
from unstuck.cli.main import main
from unstuck.diagnose.base import ROOT_CONFIDENCE
from unstuck.types import Plateau

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
LOGS = FIXTURES / "logs"
LABELS: dict[str, Any] = json.loads((LOGS / "labels.json").read_text())
COMMITTED = ["tensorboard", "hf", "lightning", "keras", "unstuck"]
COMMITTED += ["csv", "jsonl", "text", "keras_text"]  # logs no framework reader knows
ALL = [*COMMITTED, "mlflow"]
# The runs with a cause built in (tests/fixtures/make_logs.py): fixture -> the cause.
CAUSED = {
    "hf_lr_high": "lr_too_high",
    "lightning_lr_low": "lr_too_low",
    "tensorboard_explode": "exploding_gradients",
    "keras_converged": "converged",
}
# Built in, but not what a log can support: at one constant LR a loss creeping from its start is
# as much a run stopped early (the loss follows LR × steps while steps are small).
NOT_FROM_LOGS = frozenset({"lightning_lr_low"})
LOG_READINGS = frozenset(CAUSED.values())  # the rules with a log-level reading (or once had)
SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"

# what every "cannot read" message must name, one per known format
# What a "cannot read" error lists when the format itself is unknown (and only then).
FORMAT_WORDS = ("TensorBoard", "trainer_state.json", "Lightning and Keras CSV", "MLflow")
FORMAT_WORDS += ("unstuck run stores", "JSON lines", "printed logs", "--format {")


def _needs(fmt: str) -> None:
    if fmt == "tensorboard":
        pytest.importorskip("tensorboard")
    if fmt == "mlflow":
        pytest.importorskip("mlflow")


def _make_logs() -> Any:
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_logs
    finally:
        sys.path.remove(str(FIXTURES))
    return make_logs


@pytest.fixture(scope="module")
def mlflow_label(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real MLflow run with the labeled plateau, in MLflow's folder store (fast to create;
    the reader sees it through MlflowClient like any backend; the SQLite one is tested below)."""
    pytest.importorskip("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        yield _make_logs().make_mlflow(tmp_path_factory.mktemp("mlflow"), backend="file")


@pytest.fixture
def label(request: pytest.FixtureRequest) -> dict[str, Any]:
    fmt = request.param
    _needs(LABELS[fmt]["format"] if fmt in LABELS else fmt)
    if fmt == "mlflow":
        found: dict[str, Any] = request.getfixturevalue("mlflow_label")
        return found
    return {**LABELS[fmt], "path": str(LOGS / LABELS[fmt]["path"])}


def _load(lab: dict[str, Any]) -> Any:
    return load(lab["path"], tracking_uri=lab.get("tracking_uri"))


def _cli_args(lab: dict[str, Any]) -> list[str]:
    extra = ["--tracking-uri", lab["tracking_uri"]] if "tracking_uri" in lab else []
    return ["analyze", lab["path"], *extra]


def _overlaps(p: Plateau | dict[str, Any], span: list[int], last: int) -> bool:
    start, end = (p.start, p.end) if isinstance(p, Plateau) else (p["start"], p["end"])
    end = last if end is None else end
    return start < span[1] and end >= span[0]


def _near(p: Plateau, spans: list[list[int]]) -> bool:
    end = p.end if p.end is not None else float("inf")
    for a, b in spans:
        slack = (b - a) / 2
        if p.start < b and end >= a and p.start >= a - slack and end <= b + slack:
            return True
    return False


# --------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize("label", ALL, indirect=True)
def test_detect_format_recognises_each_fixture(label: dict[str, Any]) -> None:
    assert detect_format(label["path"]) == label["format"]


@pytest.mark.parametrize("label", [*ALL, *CAUSED], indirect=True)
def test_reader_recovers_the_logged_series(label: dict[str, Any]) -> None:
    run = _load(label)
    assert run.format == label["format"]
    assert run.meta["step_unit"] == label["step_unit"]
    for name, expected in label["expected"].items():
        steps, values = run.series[name]
        assert steps.tolist() == expected["steps"], name
        want = np.asarray(expected["values"])
        if label.get("float32"):
            want = want.astype(np.float32).astype(np.float64)  # event files hold float32
        np.testing.assert_allclose(values, want, rtol=1e-7, atol=0, err_msg=name)


@pytest.mark.parametrize("label", ALL, indirect=True)
def test_plateau_found_on_each_labeled_span_and_nowhere_else(label: dict[str, Any]) -> None:
    run = analyze(_load(label))
    last = int(run.series["loss"][0][-1])
    train = [p for p in run.plateaus if p.series == "train"]
    for span in label["spans"]:
        hits = [p for p in train if _overlaps(p, span, last)]
        assert hits, f"no train plateau on {span}: {run.plateaus}"
        assert all(p.end is not None for p in hits), "the loss fell again after the span"
    for p in run.plateaus:
        assert _near(p, label["spans"]), f"plateau away from the labeled spans: {p}"
    for f in run.findings:
        assert f.confidence < ROOT_CONFIDENCE, f"a confident false finding: {f}"
        assert f.cause not in LOG_READINGS, f"a log-level reading on a zero-LR plateau: {f}"


@pytest.mark.parametrize("label", ALL, indirect=True)
def test_json_output_parses_and_holds_the_plateaus(
    label: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_cli_args(label), "--json", "--no-report"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == label["format"]
    assert out["report"] is None
    by_name = {s["name"]: s for s in out["series"]}
    assert by_name["loss"]["points"] == len(label["expected"]["loss"]["steps"])
    assert by_name["loss"]["label"] == "train"
    last = by_name["loss"]["last_step"]
    train = [p for p in out["plateaus"] if p["series"] == "train"]
    assert all(any(_overlaps(p, s, last) for p in train) for s in label["spans"])
    assert {"capacity_limit", "overfitting", "lr_too_high", "converged"} <= set(out["rules_run"])
    if label["format"] != "unstuck":  # no log reading: it needs the update ratios
        assert "update_ratio" in out["rules_missing_inputs"]["lr_too_low"]
    if "grad_norm" in label["expected"]:
        assert "exploding_gradients" in out["rules_run"]
    assert "batch_size" in out["rules_missing_inputs"] or label["format"] == "unstuck"


def test_lightning_lr_monitor_and_epoch_columns() -> None:
    lab = LABELS["lightning"]
    run = load(LOGS / lab["path"])
    assert "train_loss_step" in lab["columns"] and "train_loss_epoch" in lab["columns"]
    assert run.meta["names"]["train_loss"] == "loss"  # train_loss_step -> train_loss -> loss
    assert "train_loss_epoch" in run.series  # the epoch aggregate keeps its name
    steps, lrs = run.series["lr/SGD"]  # LearningRateMonitor's lr-SGD
    start, end = lab["spans"][0]
    inside = (steps >= start + 5) & (steps < end)
    outside = (steps < start) | (steps >= end + 5)
    assert np.all(lrs[inside] == 0.0) and np.all(lrs[outside] > 0.0)


def test_unstuck_store_keeps_the_live_results_apart() -> None:
    run = load(LOGS / "unstuck")
    recorded = run.meta["recorded"]
    assert run.plateaus == [] and run.findings == []
    live = [p for p in recorded["plateaus"] if p["series"] == "train"]
    assert any(_overlaps(p, LABELS["unstuck"]["spans"][0], 599) for p in live)
    analyzed = analyze(run)
    assert "update_ratio" in analyzed.meta["analysis"]["evidence"]
    assert "lr_too_low" in analyzed.meta["analysis"]["rules_run"]  # the store has its inputs


@pytest.mark.parametrize("label", sorted(set(CAUSED) - NOT_FROM_LOGS), indirect=True)
def test_caused_run_is_named_from_the_log(label: dict[str, Any]) -> None:
    cause = label["cause"]
    run = analyze(_load(label))
    named = [f for f in run.findings if f.cause == cause]
    assert named, f"{cause} not named: {run.findings}"
    finding = max(named, key=lambda f: f.confidence)
    assert finding.series == "train" and finding.evidence["source"] == "log"
    if cause == "exploding_gradients":
        # a 70× jump of the global norm is an explosion: found confidently
        assert finding.confidence >= ROOT_CONFIDENCE and finding.evidence["spike_ratio"] > 70
    else:
        assert finding.confidence < ROOT_CONFIDENCE  # the LR and converged readings are hints
    if cause in ("lr_too_high", "lr_too_low"):
        assert " at LR " in finding.summary  # the logged LR is named
    # no other log-level reading fires, but for the LR jump that made the gradient explode
    others = {f.cause for f in run.findings} & LOG_READINGS - {cause}
    assert others <= ({"lr_too_high"} if cause == "exploding_gradients" else set()), others


def test_oscillation_on_a_log_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(LOGS / LABELS["hf_lr_high"]["path"])
    run = analyze(load(path))
    episodes = run.meta["analysis"]["series"]["loss"]["episodes"]
    assert episodes and {e["state"] for e in episodes} == {"oscillating"}
    assert all(e["start"] < (e["end"] or e["last"]) for e in episodes)
    assert main(["analyze", path, "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "oscillating / diverging" in out and "train  oscillating  steps 9–10" in out
    assert "lr_too_high (train)" in out
    assert main(["analyze", path, "--no-report", "--json"]) == 0
    series = {s["name"]: s for s in json.loads(capsys.readouterr().out)["series"]}
    assert series["loss"]["episodes"] == episodes


def test_diverging_episode_stays_open_on_the_explosion() -> None:
    run = analyze(load(LOGS / LABELS["tensorboard_explode"]["path"]))
    episodes = run.meta["analysis"]["series"]["loss"]["episodes"]
    assert episodes[-1]["state"] == "diverging" and episodes[-1]["end"] is None
    assert run.meta["analysis"]["series"]["loss"]["final_state"] == "diverging"


# --------------------------------------------------------------------------- errors


def test_unknown_file_is_one_line_naming_the_formats(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a training log\n")
    assert main(["analyze", str(notes)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(notes) in err
    for word in FORMAT_WORDS:
        assert word in err, word


def test_truncated_trainer_state_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    path = LOGS / LABELS["corrupt"]["path"]
    assert detect_format(path) == "hf"
    assert main(["analyze", str(path), "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not valid JSON" in err and "truncated" in err
    assert "--format {" not in err  # the format is known; the file is what is wrong


@pytest.mark.parametrize(
    ("name", "content", "why", "unknown"),
    [
        ("missing.json", None, "no such file", False),
        ("empty.csv", "", "empty", False),
        ("other.csv", "a,b\n1,2\n", "no CSV header with a step, epoch or loss column", True),
        ("blob.bin", bytes(range(256)) * 4, "binary", True),
        ("state.json", '{"global_step": 3}', "no log_history", False),
    ],
)
def test_bad_inputs_name_the_formats_only_when_the_format_is_unknown(
    tmp_path: pathlib.Path, name: str, content: str | bytes | None, why: str, unknown: bool
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(LogFormatError, match=why) as info:
        load(path)
    assert all(word in str(info.value) for word in FORMAT_WORDS) == unknown


def test_missing_optional_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_accumulator", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match=r"unstuck\[tensorboard\]"):
        load(LOGS / "tensorboard")
    with pytest.raises(ImportError, match=r"unstuck\[mlflow\]"):
        load("mlflow:0123", tracking_uri="sqlite:///nowhere.db")


def test_import_unstuck_needs_no_optional_framework() -> None:
    code = (
        "import sys, unstuck, unstuck.analyze, unstuck.cli.analyze, unstuck.cli.main\n"
        "bad = [m for m in ('tensorboard', 'mlflow', 'transformers', 'lightning', 'keras')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()


# --------------------------------------------------------------------------- readers, in detail


def test_canonical_names_table() -> None:
    names = canonical_names(
        ["train/loss", "loss", "eval/loss", "train/learning_rate", "lr-AdamW/pg1", "acc"]
    )
    assert names == {
        "train/loss": "loss",
        "loss": "loss (raw)",  # a second alias of loss keeps its own name
        "eval/loss": "val_loss",
        "train/learning_rate": "lr/0",
        "lr-AdamW/pg1": "lr/AdamW/pg1",
        "acc": "acc",
    }
    assert canonical_names(["Loss/train", "Loss/val", "epoch_lr"]) == {
        "Loss/train": "loss",
        "Loss/val": "val_loss",
        "epoch_lr": "lr/0",
    }


def test_names_match_whatever_the_separator_and_a_test_split_is_the_fallback_validation() -> None:
    """A CSV's ``Train Loss``/``Validation Loss`` headers and hyphenated names match the table;
    a held-out ``test`` loss is the validation loss only when the log has no other."""
    assert canonical_names(["Train Loss", "Validation Loss", "Learning Rate"]) == {
        "Train Loss": "loss",
        "Validation Loss": "val_loss",
        "Learning Rate": "lr/0",
    }
    assert canonical_names(["train-loss", "lr-AdamW"]) == {
        "train-loss": "loss",
        "lr-AdamW": "lr/AdamW",
    }
    assert canonical_names(["Loss/train", "Loss/test"])["Loss/test"] == "val_loss"
    both = canonical_names(["Loss/train", "Loss/test", "Loss/val"])
    assert (both["Loss/val"], both["Loss/test"]) == ("val_loss", "Loss/test")
    # Lightning's on_step + on_epoch names: the per-step series is the one analysed.
    lightning = canonical_names(
        ["train_loss_step", "train_loss_epoch", "val_loss_epoch"],
        {"train_loss_step": 400, "train_loss_epoch": 8, "val_loss_epoch": 8},
        16,
    )
    assert lightning == {
        "train_loss_step": "loss",
        "train_loss_epoch": "train_loss_epoch",
        "val_loss_epoch": "val_loss",
    }


def test_a_csv_with_spaced_headers_and_a_test_loss_is_analysed(tmp_path: pathlib.Path) -> None:
    rows = ["Step,Train Loss,Test Loss"]
    for step in range(120):
        train = 2.0 if step < 60 else 2.0 * 0.97 ** (step - 60)
        rows.append(f"{step},{train + 0.01 * ((step * 7) % 5)},{'' if step % 10 else train}")
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    run = load(tmp_path / "metrics.csv")
    assert run.format == "csv"
    assert run.series["loss"][0].size == 120 and run.series["val_loss"][0].size == 12
    assert run.meta["names"]["Test Loss"] == "val_loss"


def test_hf_output_dir_uses_the_newest_checkpoint(tmp_path: pathlib.Path) -> None:
    state = json.loads((LOGS / LABELS["hf"]["path"]).read_text())
    for step, keep in ((50, 10), (400, len(state["log_history"]))):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        part = {**state, "log_history": state["log_history"][:keep]}
        (folder / "trainer_state.json").write_text(json.dumps(part))
    assert detect_format(tmp_path) == "hf"
    run = load(tmp_path)
    assert run.series["loss"][0].size == len(LABELS["hf"]["expected"]["loss"]["steps"])
    assert run.meta["hf_summary"]["train_runtime"] > 0  # the summary row is meta, not a series
    assert "train_loss" not in run.series


def test_lightning_cut_off_last_line_and_several_versions(tmp_path: pathlib.Path) -> None:
    text = (LOGS / LABELS["lightning"]["path"]).read_text()
    cut = text[: text.rstrip("\n").rfind(",")]  # the last row loses its last fields
    for version in ("version_0", "version_1"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "metrics.csv").write_text(cut)
    run = load(tmp_path / "version_1")
    assert any("cut off" in n for n in run.meta["notes"])
    with pytest.raises(LogFormatError, match="version_0, version_1"):
        load(tmp_path)


def test_keras_na_cells_and_lr_column(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.csv"
    rows = ["epoch,loss,lr,val_loss"]
    rows += [f"{e},{2.0 - e / 50},0.1,{'NA' if e % 2 else 1.5}" for e in range(20)]
    path.write_text("\n".join(rows) + "\n")
    assert detect_format(path) == "keras"
    run = load(path)
    assert run.series["val_loss"][0].tolist() == list(range(0, 20, 2))
    assert run.series["lr/0"][1].tolist() == [0.1] * 20


def _write_scalars(folder: pathlib.Path, tags: dict[str, list[float]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for tag, values in tags.items():
        for step, value in enumerate(values):
            writer.add_scalar(tag, value, step)
    writer.close()


def test_tensorboard_layouts(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    falling = [1.0 / (s + 1) for s in range(5)]
    # Keras' callback layout: train/ and validation/ folders of one run
    _write_scalars(tmp_path / "keras" / "train", {"epoch_loss": falling})
    _write_scalars(tmp_path / "keras" / "validation", {"epoch_loss": falling[::-1]})
    run = load(tmp_path / "keras")
    assert run.series["loss"][1][0] == pytest.approx(1.0)
    assert run.series["val_loss"][1][-1] == pytest.approx(1.0)
    # add_scalars("Loss", {"train": ..., "val": ...}) folders
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "scalars"))
    for step, value in enumerate(falling):
        writer.add_scalars("Loss", {"train": value, "val": 2 * value}, step)
    writer.close()
    run = load(tmp_path / "scalars")
    assert run.series["val_loss"][1].tolist() == pytest.approx([2 * v for v in falling])
    # two unrelated runs: an error that lists them, and --run picks one
    _write_scalars(tmp_path / "two" / "a", {"loss": falling})
    _write_scalars(tmp_path / "two" / "b", {"loss": falling})
    with pytest.raises(LogFormatError, match=r"2 TensorBoard runs .*: a, b"):
        load(tmp_path / "two")
    assert load(tmp_path / "two", run="b").meta["run"] == "b"


def test_tensorboard_tf2_tensor_scalars(tmp_path: pathlib.Path) -> None:
    """TF2's ``tf.summary.scalar`` (and Keras' callback) write tensors, not simple values."""
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    writer = EventFileWriter(str(tmp_path))
    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    for step in range(4):
        value = summary_pb2.Summary.Value(
            tag="epoch_loss",
            tensor=tensor_util.make_tensor_proto(np.float32(1.0 / (step + 1))),
            metadata=meta,
        )
        writer.add_event(
            event_pb2.Event(step=step, wall_time=0.0, summary=summary_pb2.Summary(value=[value]))
        )
    writer.close()
    run = load(tmp_path)
    assert run.series["loss"][1].tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.25])


def test_mlflow_run_choice_and_unknown_run(mlflow_label: dict[str, Any]) -> None:
    uri = mlflow_label["tracking_uri"]
    run = load(f"mlflow:{mlflow_label['run_id']}", tracking_uri=uri)
    assert run.meta["run_name"] == "labeled-plateau" and run.meta["params"] == {"lr": "0.005"}
    with pytest.raises(LogFormatError, match="cannot read MLflow run 'no-such-run'"):
        load("mlflow:no-such-run", tracking_uri=uri)


@pytest.mark.slow
def test_mlflow_sqlite_file(tmp_path: pathlib.Path) -> None:
    """MLflow's default store since 3.7, passed as its .db file (creating it takes seconds)."""
    pytest.importorskip("mlflow")
    lab = _make_logs().make_mlflow(tmp_path)
    db = tmp_path / "mlflow" / "mlflow.db"
    assert lab["tracking_uri"] == sqlite_uri(db) and sqlite_uri(db).startswith("sqlite:////")
    assert detect_format(db) == "mlflow"
    run = analyze(load(db))  # the only run in the file
    assert run.meta["run_id"] == lab["run_id"]
    assert run.series["loss"][0].tolist() == lab["expected"]["loss"]["steps"]
    assert any(_overlaps(p, lab["spans"][0], 599) for p in run.plateaus if p.series == "train")


# --------------------------------------------------------------------------- analysis on logs


def _keras_log(
    tmp_path: pathlib.Path, loss: Sequence[float | str], val: Sequence[float | str]
) -> pathlib.Path:
    path = tmp_path / "log.csv"
    rows = ["epoch,loss,val_loss"] + [f"{e},{a},{b}" for e, (a, b) in enumerate(zip(loss, val))]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_overfitting_found_from_train_and_validation(tmp_path: pathlib.Path) -> None:
    epochs = np.arange(100)
    loss = 2.0 * np.exp(-epochs / 30)
    # validation follows the training loss for 40 epochs, then climbs back up
    best = 2.0 * np.exp(-40 / 30)
    val = np.where(epochs < 40, loss, best * (1 + (epochs - 40) / 30))
    run = analyze(load(_keras_log(tmp_path, loss.tolist(), val.tolist())))
    found = {(f.cause, f.series): f for f in run.findings}
    assert ("overfitting", "val") in found, run.findings
    assert found[("overfitting", "val")].confidence >= ROOT_CONFIDENCE


def test_nonfinite_loss_found_from_a_log(tmp_path: pathlib.Path) -> None:
    loss: list[float | str] = [2.0 * 0.97**e for e in range(40)]
    loss += ["nan"] * 3
    run = analyze(load(_keras_log(tmp_path, loss, [1.0] * 43)))
    nonfinite = [f for f in run.findings if f.cause == "nonfinite"]
    assert nonfinite and nonfinite[0].step == 40


def test_loss_override_and_what_is_not_a_loss(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log.csv"
    rows = ["epoch,loss,total_loss,loss_scale,val_total"]
    rows += [f"{e},{1.0 + e},{2.0 / (e + 1)},65536,{3.0 / (e + 1)}" for e in range(20)]
    path.write_text("\n".join(rows) + "\n")
    run = load(path, loss="total_loss", val_loss="val_total")
    assert run.series["loss"][1][0] == 2.0 and run.series["val_loss"][1][0] == 3.0
    assert run.series["loss (raw)"][1][0] == 1.0  # the column that was "loss" keeps its name
    assert loss_series(run) == ["loss", "val_loss", "loss (raw)"]  # never loss_scale
    assert any("total_loss analysed as loss" in n for n in run.meta["notes"])
    assert main(["analyze", str(path), "--loss", "nope", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "--loss: no series 'nope'" in err and "total_loss" in err


def test_short_series_are_reported_as_too_short(tmp_path: pathlib.Path) -> None:
    n = MIN_PLATEAU_POINTS - 1
    run = analyze(load(_keras_log(tmp_path, [1.0] * n, [1.0] * n)))
    assert run.plateaus == []
    assert run.meta["analysis"]["series"]["loss"]["too_few_points"]


# --------------------------------------------------------------------------- the command


def test_cli_table_and_report(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out" / "hf.html"
    assert main(["analyze", str(LOGS / LABELS["hf"]["path"]), "-o", str(target)]) == 0
    out = capsys.readouterr().out
    assert target.is_file() and target.stat().st_size > 0
    assert f"report: {target}" in out
    assert "loss (train)" in out and "train  steps " in out and "rules run:" in out


def test_cli_default_report_path_next_to_the_input(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "training.log.csv"
    shutil.copy(LOGS / LABELS["keras"]["path"], log)
    assert main(["analyze", str(log)]) == 0
    assert (tmp_path / "training.log-report.html").is_file()
    assert "epochs" in capsys.readouterr().out


def test_cli_report_that_cannot_be_written_still_analyzes(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "r.html"  # its parent is a file: the report cannot be written
    path = str(LOGS / LABELS["keras"]["path"])
    assert main(["analyze", path, "-o", str(target), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report"] is None and out["report_error"]
    assert not target.exists() and out["plateaus"]


def test_cli_log_without_a_loss_is_one_line_exit_2_and_no_report(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "acc.csv"
    log.write_text("step,acc\n1,0.1\n2,0.2\n3,0.3\n")
    assert main(["analyze", str(log)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "no loss series (it has: acc)" in err and "--loss NAME" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.csv"]  # no report written
    assert main(["analyze", str(log), "--loss", "acc", "--no-report"]) == 0  # the named fix


@pytest.mark.parametrize(
    ("name", "content", "lists_formats"),
    [
        ("missing.csv", None, False),  # a typo in the path needs the path, not the format list
        ("empty.log", b"", False),
        ("junk.bin", b"\x00\x01\x02 binary \xff" * 20, True),
        ("notes.txt", b"just some words\nno numbers here\n", True),
    ],
)
def test_cli_cannot_read_is_one_short_line(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes | None,
    lists_formats: bool,
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert main(["analyze", str(path), "--no-report"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"unstuck analyze: cannot read {path}: ")
    assert ("--format {" in err) == lists_formats
    assert len(err) < (420 if lists_formats else 120) + len(str(path))


def test_cli_format_flag_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(LOGS / LABELS["keras"]["path"])
    assert main(["analyze", path, "--format", "lightning", "--no-report"]) == 2
    assert "'step' column" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in FORMATS), out


def _hf_state(
    tmp_path: pathlib.Path,
    loss: Sequence[float],
    evals: Sequence[float],
    lrs: Sequence[float] | None = None,
) -> pathlib.Path:
    """A trainer_state.json: the training loss every 10 steps, ``evals`` spread over the run."""
    lrs = [1e-4] * len(loss) if lrs is None else lrs
    rows: list[dict[str, Any]] = [
        {"step": 10 * (i + 1), "epoch": i / len(loss), "loss": v, "learning_rate": lr}
        for i, (v, lr) in enumerate(zip(loss, lrs))
    ]
    every = 10 * len(loss) // max(len(evals), 1)
    rows += [{"step": every * (k + 1), "eval_loss": v} for k, v in enumerate(evals)]
    rows.sort(key=lambda r: r["step"])
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"global_step": 10 * len(loss), "log_history": rows}))
    return path


@pytest.mark.parametrize(
    ("evals", "named"),
    [
        ([0.50, 0.52, 0.55, 0.60, 0.64, 0.70], True),  # rises from the first evaluation
        ([0.90, 0.50, 0.53, 0.58, 0.61, 0.66], True),  # falls once, then rises
        ([0.90, 0.60, 0.52, 0.50, 0.47, 0.45], False),  # still falling
        ([0.50, 0.53, 0.49, 0.52, 0.50, 0.51], False),  # noise around a level
    ],
)
def test_overfitting_from_six_evaluations(
    tmp_path: pathlib.Path, evals: list[float], named: bool
) -> None:
    """Six evaluations leave the validation detector without a verdict; the short test reads
    them, and names overfitting (as a hint, below ROOT_CONFIDENCE) only on a rise."""
    loss = (2.0 * np.exp(-np.arange(300) / 80)).tolist()
    run = analyze(load(_hf_state(tmp_path, loss, evals)))
    assert run.meta["analysis"]["series"]["val_loss"]["final_state"] == "unknown"
    found = [f for f in run.findings if f.cause == "overfitting"]
    assert bool(found) == named, run.findings
    if named:
        assert found[0].series == "val" and found[0].confidence < ROOT_CONFIDENCE


@pytest.mark.parametrize("driven", [True, False])
def test_converged_not_named_where_the_lr_schedule_ran_out(
    tmp_path: pathlib.Path, driven: bool
) -> None:
    """A linear LR decay to 1 % of its peak and a loss that falls two decades. Driven by the LR
    (each step lowers the log-loss in proportion to the LR) it flattens only as the LR runs out: the
    schedule's end, so no ``converged`` and a note that the log cannot tell. Falling fast and
    flat while the LR is still large, it reads as converged (and no such note)."""
    rng = np.random.default_rng(3)
    lrs = np.r_[np.linspace(1e-4, 1e-6, 250), np.full(150, 1e-6)]  # decays to 1 %, then held
    if driven:
        done = np.cumsum(lrs) / lrs.sum()  # the share of the schedule's total step taken
        loss = 2.0 * np.exp(-4.6 * done)
    else:
        loss = 2.0 * np.maximum(np.exp(-np.arange(400) / 25), 0.01)
    loss = loss * (1 + 0.01 * rng.standard_normal(400))
    run = analyze(load(_hf_state(tmp_path, loss.tolist(), [], lrs.tolist())))
    named = {f.cause for f in run.findings}
    ended = [n for n in run.meta["notes"] if "schedule has run out" in n]
    if driven:
        assert "converged" not in named and len(ended) == 1, (run.findings, run.meta["notes"])
        assert "lr/0 is at 1 % of its peak" in ended[0]
    else:
        assert "converged" in named and not ended, (run.findings, run.meta["notes"])


def test_no_cause_is_said_plainly_where_the_detector_saw_something(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plateau with no finding gets a line saying the log cannot tell its cause; a log where
    the detector saw nothing gets a bare "none"."""
    assert main(["analyze", str(LOGS / LABELS["hf"]["path"]), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "plateaus\n  train" in out
    assert "findings\n  none: this log cannot tell the cause of what the detector saw" in out
    falling = (2.0 * np.exp(-np.arange(60) / 20)).tolist()
    assert main(["analyze", str(_keras_log(tmp_path, falling, falling)), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "plateaus\n  none\n" in out and "findings\n  none\n" in out


@pytest.mark.parametrize("label", ["lightning_lr_low"], indirect=True)
def test_a_creep_at_one_lr_is_said_plainly_not_named(label: dict[str, Any]) -> None:
    """SGD at an LR far too low: the loss creeps down from its start at a constant LR. A log at
    one LR cannot tell that from a run stopped early, so no cause is named; a note says what
    the log shows and that it cannot tell."""
    run = analyze(_load(label))
    assert not {f.cause for f in run.findings} & LOG_READINGS, run.findings
    creep = [n for n in run.meta["notes"] if "still creeps down" in n]
    assert len(creep) == 1 and "at LR 0.0001 (lr/SGD), constant" in creep[0]
    assert "cannot tell which" in creep[0]
