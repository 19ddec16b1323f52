"""The HTML report and RunData from the store: a real guarded run, rendered and read back."""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import unstuck
from _report_support import HOSTILE, RUN_STEPS, array, figures, guarded_run, require
from unstuck.cli.main import main
from unstuck.record import STORE_FILENAME
from unstuck.record.rundata import RunData, load_run
from unstuck.types import ActionRecord, Finding, Plateau, Remedy

VOID = {"meta", "br", "img", "input", "hr", "link", "wbr", "col", "source", "area", "base"}
SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"


class _Checker(HTMLParser):
    """Strict nesting of every non-void element, the text content, and script attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.links = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True
        if tag == "link":
            self.links += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.text.append(data)


def _check(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    return checker


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, unstuck.Guard]:
    directory = tmp_path_factory.mktemp("guarded")
    return directory, guarded_run(directory)


@pytest.fixture(scope="module")
def report(run_dir: tuple[pathlib.Path, unstuck.Guard]) -> tuple[RunData, str]:
    require("plotly", "report")
    from unstuck.record.report import write_report

    directory, _ = run_dir
    run = RunData.from_store(directory)
    path = write_report(run, directory / "report.html")
    assert path == directory / "report.html"
    return run, path.read_text(encoding="utf-8")


def _dump(items: list[dict]) -> str:
    return json.dumps(items, sort_keys=True)  # NaN-safe equality


def test_load_run_rebuilds_what_the_guard_saw(run_dir) -> None:
    directory, guard = run_dir
    run = load_run(directory)
    assert run.format == "unstuck"
    assert run.source == str(directory)
    assert run.meta["note"] == HOSTILE
    assert run.meta["status"] == "closed"
    assert run.meta["steps"] == RUN_STEPS
    steps, values = run.series["loss"]
    assert steps.tolist() == list(range(RUN_STEPS))
    assert np.isfinite(values).all()
    assert "val_loss" in run.series
    assert any(n.startswith("grad_norm/") for n in run.series)
    # what the Guard held in memory at the end equals what the store rebuilds
    assert guard.findings and guard.actions and guard.plateaus
    assert _dump([f.to_dict() for f in run.findings]) == _dump(
        [f.to_dict() for f in guard.findings]
    )
    assert _dump([a.to_dict() for a in run.actions]) == _dump([a.to_dict() for a in guard.actions])
    assert [a.outcome for a in run.actions] == [a.outcome for a in guard.actions]
    assert all(a.outcome != "pending" for a in run.actions[:-1])
    assert run.plateaus == guard.plateaus
    assert run.probes and {p["probe"] for p in run.probes} == {"curvature"}
    assert all(p["status"] == "ok" and isinstance(p["step"], int) for p in run.probes)
    # the .sqlite file works too, and names the same run
    same = load_run(directory / STORE_FILENAME, run.meta["run_id"])
    assert same.source == str(directory)
    assert _dump([f.to_dict() for f in same.findings]) == _dump([f.to_dict() for f in run.findings])


def test_load_run_errors_are_clear(tmp_path: pathlib.Path, run_dir) -> None:
    with pytest.raises(FileNotFoundError, match="no run store"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match=r"no run 'nope'.*known runs"):
        load_run(run_dir[0], "nope")


def test_plateau_events_are_rebuilt_with_their_end(tmp_path: pathlib.Path) -> None:
    """A plateau closes where its series leaves the plateau state (the event has no plateau)."""
    from unstuck.record import RunStore

    with RunStore(tmp_path) as store:
        open_p = {"series": "train", "start": 10, "end": None, "kind": "mid", "confidence": 0.9}
        store.log_event(
            "state", 40, {"series": "train", "from": "slow", "to": "plateau", "plateau": open_p}
        )
        store.log_event(
            "state", 45, {"series": "val", "from": "unknown", "to": "slow", "plateau": None}
        )
        store.log_event(
            "state", 90, {"series": "train", "from": "plateau", "to": "improving", "plateau": None}
        )
        store.log_event(
            "state",
            120,
            {
                "series": "train",
                "from": "improving",
                "to": "plateau",
                "plateau": {**open_p, "start": 100},
            },
        )
        action = ActionRecord("lr_scale", 40, "because", params={"label": "lr ×10"})
        store.log_event("action", 40, action.to_dict())
        action.outcome, action.verified_step = "rolled_back", 80
        store.log_event("action_outcome", 80, action.to_dict())
    run = load_run(tmp_path)
    assert run.plateaus == [
        Plateau("train", 10, 90, "mid", 0.9),
        Plateau("train", 100, None, "mid", 0.9),
    ]
    assert [(a.name, a.outcome, a.verified_step) for a in run.actions] == [
        ("lr_scale", "rolled_back", 80)
    ]


def test_report_shows_the_run(report) -> None:
    run, page = report
    assert page.startswith("<!DOCTYPE html>")
    checker = _check(page)
    text = " ".join(checker.text)
    for title in (
        "Loss",
        "Learning rate",
        "Gradient norms",
        "Update/weight ratio",
        "Findings",
        "Actions",
        "Probes",
    ):
        assert f"<h2>{title}</h2>" in page
    for finding in run.findings:
        assert finding.summary in text
        assert finding.cause in text
    for action in run.actions:
        assert action.reason in text
        assert action.outcome.replace("_", " ") in text
    assert "curvature at step" in text
    assert "lambda_max" in text
    # self-contained: one inline plotly.js, no external script, stylesheet or CDN
    assert checker.links == 0
    assert all("src" not in attrs for attrs in checker.scripts)
    head, body = page.split("</head>", 1)
    assert "http://" not in body and "https://" not in body  # plotly.js (in head) names URLs
    assert head.count("<script") == 1
    figs = figures(page)
    assert len(checker.scripts) == 1 + len(figs)
    assert page.count("Plotly.newPlot(") == len(figs)
    # the loss plot: train and validation loss, a plateau span, action markers by outcome
    loss_fig = figs["fig-1"]
    names = [t.get("name") for t in loss_fig["data"]]
    assert "train loss" in names and "validation loss" in names
    assert loss_fig["layout"]["yaxis"]["type"] == "log"
    shapes = loss_fig["layout"]["shapes"]
    plateau = run.plateaus[0]
    assert any(s["type"] == "rect" and s["x0"] == plateau.start for s in shapes)
    assert sum(s["type"] == "line" for s in shapes) == len(run.actions)
    markers = [t for t in loss_fig["data"] if str(t.get("name", "")).startswith("action: ")]
    assert sum(len(t["x"]) for t in markers) == len(run.actions)
    assert all(run.actions[0].reason[:20] in " ".join(t["hovertext"]) for t in markers[:1])
    train = next(t for t in loss_fig["data"] if t.get("name") == "train loss")
    assert array(train["y"]).size == RUN_STEPS  # short series are not downsampled


def test_lr_section_plots_schedule_multiplier_and_product(report) -> None:
    run, page = report
    lr_fig = next(
        f
        for f in figures(page).values()
        if "lr_multiplier (unstuck)" in [t.get("name") for t in f["data"]]
    )
    traces = {t["name"]: t for t in lr_fig["data"]}
    effective = array(traces["lr/0 × lr_multiplier (effective)"]["y"])
    schedule = run.series["lr/0"][1][-1]
    final_multiplier = run.series["lr_multiplier"][1][-1]
    assert math.isclose(effective[-1], schedule * final_multiplier, rel_tol=1e-12)
    assert traces["lr_multiplier (unstuck)"]["yaxis"] == "y2"


def test_grad_norm_heatmap_is_layers_by_steps(report) -> None:
    run, page = report
    layers = sorted(n for n in run.series if n.startswith("grad_norm/"))
    heat = next(t for f in figures(page).values() for t in f["data"] if t.get("type") == "heatmap")
    z = array(heat["z"])
    assert z.shape[0] == len(layers)
    assert heat["y"] == [n.removeprefix("grad_norm/") for n in layers]
    first = run.series[layers[0]][1]
    np.testing.assert_allclose(z[0][: first.size], np.log10(first), rtol=1e-12)


def test_hostile_strings_are_only_escaped(run_dir, tmp_path: pathlib.Path) -> None:
    require("plotly", "report")
    from unstuck.record.report import write_report

    run = load_run(run_dir[0])
    run.source = f"/tmp/{HOSTILE}"
    run.findings.append(
        Finding(
            cause=HOSTILE,
            confidence=0.5,
            evidence={HOSTILE: HOSTILE, "values": [HOSTILE, 1.0]},
            step=5,
            summary=f"summary {HOSTILE}",
            remedies=(Remedy(action=HOSTILE, note=HOSTILE),),
        )
    )
    run.actions.append(
        ActionRecord(HOSTILE, 7, f"reason {HOSTILE}", outcome=HOSTILE, params={"label": HOSTILE})
    )
    run.plateaus.append(Plateau(HOSTILE, 3, 9, kind=HOSTILE))
    run.probes.append(
        {
            "step": 8,
            "probe": HOSTILE,
            HOSTILE: HOSTILE,
            "branches": [{"label": HOSTILE, "score": 1.0}],
        }
    )
    assert any(HOSTILE in name for name in run.series)  # a loss component from the Guard
    page = write_report(run, tmp_path / "hostile.html").read_text(encoding="utf-8")
    assert HOSTILE not in page
    assert "alert(1)</" not in page
    checker = _check(page)
    assert len(checker.scripts) == 1 + len(figures(page))  # no script element was injected
    text = " ".join(checker.text)
    assert f"summary {HOSTILE}" in text  # shown, as text
    assert html.escape(HOSTILE) in page
    # inside the plots the text is escaped for plotly's HTML-ish labels, and JSON-escaped
    names = [t.get("name", "") for f in figures(page).values() for t in f["data"]]
    assert any(html.escape(HOSTILE) in str(n) for n in names)


def test_hand_built_probes_render_as_curves_bars_and_tables(tmp_path: pathlib.Path) -> None:
    require("plotly", "report")
    from unstuck.record.report import write_report

    lrs = [1e-5 * 10 ** (i / 4) for i in range(17)]
    losses = [2.3 - 0.1 * i if i < 12 else 2.3 + (i - 12) for i in range(17)]
    run = RunData(source="by hand", format="unstuck")
    run.probes = [
        {"step": 100, "probe": "lr_range_test", "lrs": lrs, "losses": losses, "suggestion": 1e-3},
        {
            "step": 120,
            "probe": "branch_trials",
            "best": "lr ×10",
            "branches": [
                {"label": "lr ×10", "score": 0.4, "steps": 20},
                {"label": "lr ×0.1", "score": 1.2, "steps": 20},
                {"label": "warm restart", "score": 0.9},
            ],
        },
        {
            "step": 140,
            "probe": "curvature",
            "lambda_max": 3.5,
            "lambda_min": -0.2,
            "classification": "saddle_point",
        },
        {"step": 150, "probe": "odd", "factors": [1, 2, 3], "losses": [1.0, 2.0]},  # unequal
        {  # the shape unstuck's own range test writes (rescue/actions/lr_range_test.py)
            "step": 160,
            "probe": "lr_range_test",
            "factors": [0.01, 0.1, 1.0, 10.0, 100.0],
            "losses": [2.3, 2.2, 1.9, 1.7, 2.4],
            "smoothed": [2.3, 2.25, 2.0, 1.8, 2.1],
            "factor": 3.0,
            "diverged_at": 1000.0,
            "method": "steepest",
        },
    ]
    page = write_report(run, tmp_path / "probes.html").read_text(encoding="utf-8")
    checker = _check(page)
    text = " ".join(checker.text)
    for heading in (
        "lr_range_test at step 100",
        "branch_trials at step 120",
        "curvature at step 140",
        "odd at step 150",
    ):
        assert f"<h3>{heading}</h3>" in page
    figs = list(figures(page).values())
    assert len(figs) == 3  # two curves and the bars; nothing else has data
    curve, bars, ours = figs
    np.testing.assert_allclose(array(curve["data"][0]["x"]), lrs)
    np.testing.assert_allclose(array(curve["data"][0]["y"]), losses)
    assert curve["layout"]["xaxis"]["type"] == "log"
    assert curve["layout"]["shapes"][0]["x0"] == 1e-3  # the suggestion
    assert bars["data"][0]["type"] == "bar"
    assert bars["data"][0]["x"] == [html.escape("lr ×10"), "lr ×0.1", "warm restart"]
    np.testing.assert_allclose(array(bars["data"][0]["y"]), [0.4, 1.2, 0.9])
    assert "saddle_point" in text and "lambda_max" in text
    assert "[1, 2, 3]" in text  # unequal lists fall back to the table
    assert [t["name"] for t in ours["data"]] == ["losses", "smoothed"]
    np.testing.assert_allclose(array(ours["data"][1]["y"]), [2.3, 2.25, 2.0, 1.8, 2.1])
    marks = {s["x0"]: s["line"]["color"] for s in ours["layout"]["shapes"]}
    assert marks == {3.0: "#2ca02c", 1000.0: "#d62728"}  # suggested factor, divergence
    assert "steepest" in text  # the scalars stay in the table
    # absent sections leave a one-line note
    for note in (
        "No training or validation loss series",
        "No learning-rate series",
        "No gradient-norm series",
        "No update/weight ratio series",
        "No findings",
        "No actions",
    ):
        assert note in text


def test_long_series_are_downsampled_keeping_extremes(tmp_path: pathlib.Path) -> None:
    require("plotly", "report")
    from unstuck.record.report import MAX_POINTS, write_report

    n = 200_000
    steps = np.arange(n)
    values = 2.0 + 0.1 * np.sin(steps / 500.0)
    values[123_457] = 50.0  # a spike
    values[7_001] = 0.5  # a dip
    values[150_000] = np.nan
    run = RunData(source="long", format="unstuck")
    run.add_series("loss", steps, values)
    run.add_series("lr_multiplier", [0, 1000], [1.0, 10.0])
    path = write_report(run, tmp_path)  # a directory: report.html inside it
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    trace = figures(page)["fig-1"]["data"][0]
    x, y = array(trace["x"]), array(trace["y"])
    assert x.size <= MAX_POINTS + MAX_POINTS // 2 + 2
    assert np.nanmax(y) == 50.0 and np.nanmin(y) == 0.5
    assert np.isnan(y).any()  # the NaN still shows as a gap
    assert x[0] == 0 and x[-1] == n - 1
    assert path.stat().st_size < 6_000_000  # plotly.js (~4.8 MB) plus little


def test_missing_plotly_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from unstuck.record.report import write_report

    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'unstuck\[report\]'"):
        write_report(RunData(source="x", format="unstuck"), tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_import_unstuck_needs_no_optional_library() -> None:
    code = (
        "import sys, unstuck, unstuck.record.report, unstuck.record.sinks, unstuck.cli.report, "
        "unstuck.record.rundata\n"
        "bad = [m for m in ('plotly', 'mlflow', 'tensorboard') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- the CLI


def test_cli_report_json(run_dir, tmp_path: pathlib.Path, capsys) -> None:
    require("plotly", "report")
    directory, guard = run_dir
    out = tmp_path / "sub" / "r.html"
    assert main(["report", str(directory), "-o", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is JSON only
    assert result["report"] == str(out)
    assert out.is_file()
    run = load_run(directory)
    assert result["run_id"] == run.meta["run_id"]
    assert result["counts"] == {
        "series": len(run.series),
        "points": int(sum(s.size for s, _ in run.series.values())),
        "plateaus": len(guard.plateaus),
        "findings": len(guard.findings),
        "actions": len(guard.actions),
        "probes": len(run.probes),
    }
    assert [f["cause"] for f in result["findings"]] == [f.cause for f in guard.findings]
    assert [a["outcome"] for a in result["actions"]] == [a.outcome for a in guard.actions]


def test_cli_report_default_path_and_human_output(run_dir, capsys) -> None:
    require("plotly", "report")
    directory, _ = run_dir
    assert main(["report", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"report written: {directory / 'report.html'}" in out
    assert "findings" in out


def test_cli_report_without_a_store_is_one_line(tmp_path: pathlib.Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("unstuck report: no run store in ")
    assert "unstuck.sqlite" in err
    assert os.listdir(tmp_path) == []


def test_cli_report_unknown_run_id(run_dir, capsys) -> None:
    assert main(["report", str(run_dir[0]), "--run-id", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "known runs" in err


def test_cli_report_without_plotly_names_the_extra(
    run_dir, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)  # as if not installed
    assert main(["report", str(run_dir[0]), "-o", str(tmp_path / "r.html")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "pip install 'unstuck[report]'" in err


def test_demo_summary_names_the_report() -> None:
    from unstuck.cli.demo import DemoResult, RunResult, format_demo

    runs = RunResult(2.3, 2.3, 0.1, 1.0), RunResult(0.2, 0.2, 0.9, 1.0)
    written = DemoResult("digits-low-lr", 100, 0, *runs, run_dir="d", report="d/report.html")
    assert "  report:    d/report.html  (open it in a browser)" in list(format_demo(written))
    missing = DemoResult("digits-low-lr", 100, 0, *runs, run_dir="d", report_note="needs plotly")
    assert "  report:    needs plotly" in list(format_demo(missing))
    assert written.to_dict()["report"] == "d/report.html"
    assert missing.to_dict()["report"] is None
