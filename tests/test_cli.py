"""The ``unstuck`` console script: --version, demo --help, bad arguments and a short demo run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

import unstuck
from unstuck.cli.demo import DEFAULT_TASK, TASKS
from unstuck.cli.main import main
from unstuck.record import STORE_FILENAME, read_events, read_meta, read_metrics, read_runs

SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"
DEMO_STEPS = 300


def _env() -> dict[str, str]:
    paths = [str(SRC_DIR), os.environ.get("PYTHONPATH", "")]
    # one thread: tiny models on a shared 2-core machine are slower with more
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "OMP_NUM_THREADS": "1",
    }


def _cli(*args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unstuck.cli.main", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=120,
    )


def test_version_from_the_console_script() -> None:
    proc = _cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == unstuck.__version__
    assert proc.stderr == ""


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == unstuck.__version__
    assert err == ""


def test_demo_help_names_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--task", "--steps", "--seed", "--run-dir", "--quick", "--json"):
        assert option in out
    for task in TASKS:
        assert task in out  # the task choices are listed


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--task", "nope"], "invalid choice: 'nope'"),
        (["demo", "--steps", "many"], "invalid int value: 'many'"),
        (["demo", "--seed", "1.5"], "invalid int value: '1.5'"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_are_one_error_line_and_a_nonzero_exit(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code != 0
    out, err = capsys.readouterr()
    assert out == ""
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1
    assert message in errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("steps", ["5", "-1", "0"])
def test_too_few_steps_is_a_one_line_error(
    steps: str, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--steps", steps, "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("unstuck demo: ")
    assert f"got {steps}" in err
    assert os.listdir(tmp_path) == []  # failed before training or writing anything


def test_unwritable_run_dir_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = main(["demo", "--steps", "100", "--no-progress", "--run-dir", str(blocker / "d")])
    assert code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("unstuck demo: ")
    assert "not writable" in err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict]:
    cwd = tmp_path_factory.mktemp("demo")
    proc = _cli(
        "demo", "--steps", str(DEMO_STEPS), "--seed", "3", "--json", "--run-dir", "out", cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr
    return cwd, json.loads(proc.stdout)  # stdout is JSON only


def test_demo_json_has_the_documented_structure(demo_run) -> None:
    cwd, result = demo_run
    assert set(result) == {
        "task",
        "steps",
        "seed",
        "without",
        "with_unstuck",
        "plateaus",
        "findings",
        "actions",
        "run_dir",
        "report",
    }
    assert result["task"] == DEFAULT_TASK
    assert result["steps"] == DEMO_STEPS
    assert result["seed"] == 3
    for run in (result["without"], result["with_unstuck"]):
        assert set(run) == {"train_loss", "val_loss", "val_accuracy", "wall_s"}
        assert math.isfinite(run["train_loss"])
        assert run["train_loss"] > 0
        assert math.isfinite(run["val_loss"])
        assert run["val_loss"] > 0
        assert 0.0 <= run["val_accuracy"] <= 1.0
        assert run["wall_s"] > 0
    for p in result["plateaus"]:
        assert {"series", "start", "end", "kind", "confidence"} <= set(p)
    for f in result["findings"]:
        assert {"cause", "confidence", "evidence", "step", "summary", "remedies"} <= set(f)
    for a in result["actions"]:
        assert a["outcome"] in {"pending", "kept", "rolled_back", "failed"}
        assert "label" in a["params"]
    assert (cwd / result["run_dir"]).resolve() == (cwd / "out").resolve()
    if importlib.util.find_spec("plotly") is not None:  # the report needs unstuck[report]
        report = cwd / result["report"]
        assert report == cwd / "out" / "report.html"
        assert report.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    else:
        assert result["report"] is None


def test_demo_store_matches_the_json(demo_run) -> None:
    cwd, result = demo_run
    store = cwd / "out"
    assert (store / STORE_FILENAME).is_file()
    runs = read_runs(store)
    assert len(runs) == 1
    assert runs[0]["status"] == "closed"
    meta = read_meta(store)
    assert meta["demo_task"] == DEFAULT_TASK
    assert meta["policy"] == "rescue"
    assert meta["steps"] == DEMO_STEPS
    steps, values = read_metrics(store, names=["loss"])["loss"]
    assert steps == list(range(DEMO_STEPS))
    assert all(math.isfinite(v) for v in values)
    val_steps, _ = read_metrics(store, names=["val_loss"])["val_loss"]
    assert len(val_steps) == 20  # validated every steps // 20
    assert [e["payload"]["name"] for e in read_events(store, kind="action")] == [
        a["name"] for a in result["actions"]
    ]
    stored = [e["payload"]["cause"] for e in read_events(store, kind="finding")]
    assert stored == [f["cause"] for f in result["findings"]]


def test_demo_human_output_and_run_dir_none(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--steps", "200", "--run-dir", "none", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "unstuck demo: " in out
    assert "200 steps, seed 0" in out
    assert "without" in out
    assert "with unstuck" in out
    assert "run store:" not in out
    assert os.listdir(tmp_path) == []  # 'none' records nothing
