"""The ``unstuck`` console script: --version, demo --help, bad arguments and a short demo run."""

from __future__ import annotations

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
    for name, task in TASKS.items():
        assert name in out  # the task choices are listed
        assert task.description in out  # and described, with their step counts
        assert f"{task.steps} steps ({task.quick_steps} with --quick)" in out


def test_explain_a_cause_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "lr-too-low"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lr_too_low: ")
    assert unstuck.explain("lr_too_low").splitlines()[2][:40] in out


def test_explain_without_a_cause_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    from unstuck.diagnose import all_rules

    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    for code in all_rules():
        assert f"  {code} " in out


def test_explain_an_unknown_cause_is_one_line_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["explain", "lr_to_low"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "did you mean lr_too_low" in err


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
        "rlrop",
        "overhead",
        "plateaus",
        "findings",
        "actions",
        "run_dir",
        "report",
    }
    assert result["task"] == DEFAULT_TASK
    assert result["steps"] == DEMO_STEPS
    assert result["seed"] == 3
    for run in (result["without"], result["with_unstuck"], result["rlrop"]):
        assert set(run) == {
            "train_loss",
            "val_loss",
            "val_accuracy",
            "wall_s",
            "step_ms",
            "guard_s",
        }
        assert run["step_ms"] > 0
        assert run["step_ms"] * DEMO_STEPS / 1000 <= run["wall_s"] * 1.5  # a median of real steps
        assert math.isfinite(run["train_loss"])
        assert run["train_loss"] > 0
        assert math.isfinite(run["val_loss"])
        assert run["val_loss"] > 0
        assert 0.0 <= run["val_accuracy"] <= 1.0
        assert run["wall_s"] > 0
    assert result["without"]["guard_s"] == result["rlrop"]["guard_s"] == 0.0
    assert 0.0 < result["with_unstuck"]["guard_s"] < result["with_unstuck"]["wall_s"]
    overhead = result["overhead"]
    assert overhead["median_step_ratio"] == pytest.approx(
        result["with_unstuck"]["step_ms"] / result["without"]["step_ms"]
    )
    for p in result["plateaus"]:
        assert {"series", "start", "end", "kind", "confidence"} <= set(p)
    for f in result["findings"]:
        assert {"cause", "confidence", "evidence", "step", "summary", "remedies"} <= set(f)
    for a in result["actions"]:
        assert a["outcome"] in {"pending", "kept", "rolled_back", "failed"}
        assert "label" in a["params"]
    assert (cwd / result["run_dir"]).resolve() == (cwd / "out").resolve()
    report = cwd / result["report"]
    assert report == cwd / "out" / "report.html"
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert report.stat().st_size < 1_000_000  # self-contained, no plotting bundle inlined
    assert "without unstuck" in page and "<script src=" not in page  # before/after, offline


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


def test_demo_run_carries_the_unguarded_curves_for_the_report(demo_run) -> None:
    """The run as written is drawn beside the guarded one: its curves travel in the metadata
    (never among the run's own metrics, which the rules read) and load as compare/ series."""
    from unstuck.record.rundata import load_run

    cwd, result = demo_run
    assert "compare/loss" not in read_metrics(cwd / "out")
    run = load_run(cwd / "out")
    assert "reference_curves" not in run.meta
    steps, values = run.series["compare/loss"]
    assert list(steps) == list(range(DEMO_STEPS))  # below the 1,000-point cap: every step
    assert all(math.isfinite(v) for v in values)
    # The unguarded run ends where the JSON says: its last 100 losses average to train_loss.
    assert float(values[-100:].mean()) == pytest.approx(result["without"]["train_loss"], rel=1e-5)
    val_steps, _ = run.series["compare/val_loss"]
    assert len(val_steps) == 20


def test_reference_curves_are_downsampled_by_block_means() -> None:
    from unstuck.record.rundata import MAX_REFERENCE_POINTS, reference_curves_meta

    n = 4 * MAX_REFERENCE_POINTS + 3
    curve = reference_curves_meta({"compare/loss": (range(n), [float(i) for i in range(n)])})
    kept = curve["reference_curves"]["compare/loss"]
    assert len(kept["steps"]) <= MAX_REFERENCE_POINTS
    assert kept["steps"][0] == 4 and kept["values"][0] == pytest.approx(2.0)  # mean of 0..4
    assert kept["steps"][-1] == n - 1
    assert kept["values"][-1] == pytest.approx((n - 3 + n - 1) / 2)  # the short last block
    with pytest.raises(ValueError, match="2 steps but 1 values"):
        reference_curves_meta({"compare/loss": ([0, 1], [1.0])})


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
    assert "ReduceLROnPlateau" in out
    assert "ms on the median step" in out
    assert "run store:" not in out
    assert os.listdir(tmp_path) == []  # 'none' records nothing


def test_analyze_of_the_demo_store_agrees_with_the_live_run(demo_run) -> None:
    """`unstuck analyze unstuck-demo` replays the store at the Guard's own flushes: the same
    plateaus and the same top finding as the live run printed."""
    from unstuck.analyze import analyze, load

    cwd, result = demo_run
    offline = analyze(load(cwd / "out"))
    live_plateaus = sorted((p["series"], p["start"], p["end"]) for p in result["plateaus"])
    assert live_plateaus, "the demo's live run found no plateau to compare"
    assert sorted((p.series, p.start, p.end) for p in offline.plateaus) == live_plateaus
    live_top = max(result["findings"], key=lambda f: f["confidence"])
    assert offline.findings[0].cause == live_top["cause"]
    assert offline.findings[0].confidence == pytest.approx(live_top["confidence"], abs=0.02)
    assert "compare/loss" not in {f.series for f in offline.findings}  # a reference, not the run
