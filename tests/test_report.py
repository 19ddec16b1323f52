"""The HTML report and RunData from the store: a real guarded run, rendered and read back.

The charts are inline SVG: the tests parse them (``_report_support.charts``) and turn
positions back into data (``Axes``) to check what is drawn where."""

from __future__ import annotations

import dataclasses
import html
import importlib.metadata
import json
import math
import os
import pathlib
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import unstuck
from _report_support import (
    HOSTILE,
    RUN_STEPS,
    Axes,
    charts,
    groups,
    guarded_run,
    of_kind,
    png_indices,
    points,
    series,
    title,
)
from unstuck.cli.main import main
from unstuck.record import STORE_FILENAME
from unstuck.record.report import MAX_POINTS, write_report
from unstuck.record.report.series import move_changes, smooth
from unstuck.record.report.svg import linear_ticks, log_ticks, png_indexed
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


def _words(text: str) -> str:
    """Whitespace-normalised: hover text is wrapped onto lines."""
    return " ".join(text.split())


def _steps(svg, cls: str = "action") -> list[int]:
    return [int(g.attrib["data-step"]) for g in groups(svg, cls)]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def test_report_shows_the_run(report) -> None:
    run, page = report
    assert page.startswith("<!DOCTYPE html>")
    checker = _check(page)
    text = " ".join(checker.text)
    for heading in (
        "Loss",
        "Learning rate",
        "Gradient norms",
        "Update/weight ratio",
        "Findings",
        "Actions",
        "Probes",
        "Other signals",
    ):
        assert f"<h2>{heading}</h2>" in page
    for finding in run.findings:
        assert finding.summary in text
        assert finding.cause in text
    for action in run.actions:
        assert action.reason in text
        assert action.outcome.replace("_", " ") in text
    assert "curvature at step" in text
    assert "lambda_max" in text
    counts = " · ".join(
        [
            f"{len(run.series)} series",
            _plural(len(run.plateaus), "plateau"),
            _plural(len(run.findings), "finding"),
            _plural(len(run.actions), "action"),
            _plural(len(run.probes), "probe"),
        ]
    )
    assert counts in text
    # self-contained and static: no script at all, nothing linked, nothing fetched
    assert checker.scripts == []
    assert checker.links == 0
    assert "http://" not in page and "https://" not in page
    assert re.findall(r'\b(?:src|href)="(?!data:image/png;base64,)', page) == []
    assert f"Written by unstuck {importlib.metadata.version('unstuck')} on" in text


def test_loss_chart_draws_raw_smoothed_validation_plateaus_and_actions(report) -> None:
    run, page = report
    (svg,) = of_kind(page, "loss")
    axes = Axes(svg)
    assert axes.log("y")
    steps, values = run.series["loss"]
    (raw,) = points(series(svg, "train loss (raw)"))
    assert len(raw) == RUN_STEPS  # short series are not downsampled
    np.testing.assert_allclose(axes.x(raw[:, 0]), steps, atol=0.1)
    np.testing.assert_allclose(axes.y(raw[:, 1]), values, rtol=1e-3)
    assert series(svg, "train loss (raw)").find("polyline").attrib["stroke-opacity"] == "0.35"
    # the smoothed line over it: a centred moving average, no lag behind the drop
    (smoothed,) = points(series(svg, "train loss (smoothed)"))
    assert len(smoothed) == RUN_STEPS
    window = 13  # 2% of 600 points, made odd
    np.testing.assert_allclose(axes.y(smoothed[:, 1]), smooth(values, window, True), rtol=1e-3)
    assert not np.allclose(axes.y(smoothed[:, 1]), values, rtol=1e-4)
    (val,) = points(series(svg, "validation loss"))
    val_steps, val_values = run.series["val_loss"]
    np.testing.assert_allclose(axes.x(val[:, 0]), val_steps, atol=0.1)
    np.testing.assert_allclose(axes.y(val[:, 1]), val_values, rtol=1e-3)
    # each plateau a shaded band over its steps, with its hover text
    shaded = groups(svg, "plateau")
    assert len(shaded) == len(run.plateaus) >= 1
    plateau, band = run.plateaus[0], shaded[0]
    rect = band.find("rect")
    assert abs(axes.x(float(rect.attrib["x"])) - plateau.start) < 0.5
    end = axes.x(float(rect.attrib["x"]) + float(rect.attrib["width"]))
    assert abs(end - plateau.end) < 0.5
    assert f"{plateau.series} plateau ({plateau.kind})" in title(band)
    # an action marker at each action's own step, coloured by outcome, the reason on hover
    markers = groups(svg, "action")
    assert _steps(svg) == [a.step for a in run.actions if a.outcome != "skipped"]
    for marker, action in zip(markers, run.actions):
        line = marker.find("line")
        assert abs(axes.x(float(line.attrib["x1"])) - action.step) < 0.5
        assert line.attrib["stroke"] == "#2ca02c"  # kept
        assert _words(action.reason) in _words(title(marker))
        assert f"→ {action.outcome}" in title(marker)
    legend = [t.text for t in svg.iter("text") if t.text]
    assert {"train plateau", "action: kept", "validation loss"} <= set(legend)


def test_lr_chart_moves_the_multiplier_jump_to_the_action(report) -> None:
    run, page = report
    (svg,) = of_kind(page, "lr")
    axes = Axes(svg)
    assert axes.log("y") and axes.log("y2")
    lr_scale = next(a for a in run.actions if a.name == "lr_scale")
    logged_steps, logged = run.series["lr_multiplier"]
    # the store logs the multiplier once per flush: the new value first shows after the action
    assert logged_steps[np.argmax(logged > 1)] > lr_scale.step
    (mult,) = points(series(svg, "lr_multiplier (unstuck)"))
    xs, ys = axes.x(mult[:, 0]), axes.y(mult[:, 1], "y2")
    jump = int(np.nonzero(np.abs(np.diff(np.log(ys))) > 0.1)[0][0])
    assert abs(xs[jump + 1] - lr_scale.step) < 0.5  # drawn where the actions table says
    # read back from drawn coordinates (0.1 px on a log axis over up to three decades)
    assert math.isclose(ys[-1], logged[-1], rel_tol=5e-3)
    assert abs(xs[0] - 0) < 0.5  # held back to the first step at its first value
    (effective,) = points(series(svg, "lr/0 × lr_multiplier (effective)"))
    schedule = run.series["lr/0"][1][-1]
    assert math.isclose(axes.y(effective[-1, 1]), schedule * logged[-1], rel_tol=5e-3)
    assert abs(axes.x(effective[-1, 0]) - (RUN_STEPS - 1)) < 0.5  # held to the last step
    assert _steps(svg) == [a.step for a in run.actions if a.outcome != "skipped"]


def test_momentum_chart_from_the_recorded_series(report) -> None:
    """The Guard records the SGD momentum at each flush: the chart draws that series, 0 before
    unstuck's add_momentum and its momentum from the first flush after it."""
    run, page = report
    add = next(a for a in run.actions if a.name == "add_momentum")
    steps, values = run.series["optimizer_momentum"]
    (svg,) = of_kind(page, "momentum")
    (line,) = points(series(svg, "optimizer_momentum"))
    axes = Axes(svg)
    ys = axes.y(line[:, 1])
    assert ys.min() == pytest.approx(values.min(), abs=1e-3)
    assert ys.max() == pytest.approx(add.params["momentum"], abs=1e-3)
    assert set(values[steps <= add.step].tolist()) == {0.0}  # read at the flush, before acting
    assert set(values[steps > add.step].tolist()) == {add.params["momentum"]}
    assert _steps(svg) == [add.step]


def test_momentum_chart_rebuilt_from_add_momentum(report, tmp_path) -> None:
    """A store without the momentum series (an older Guard's) gets it rebuilt from the actions."""
    from unstuck.record.report import write_report

    run, _ = report
    run = dataclasses.replace(
        run, series={n: s for n, s in run.series.items() if "momentum" not in n}
    )
    page = write_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    add = next(a for a in run.actions if a.name == "add_momentum")
    (svg,) = of_kind(page, "momentum")
    axes = Axes(svg)
    (line,) = points(series(svg, "momentum (from unstuck's add_momentum actions)"))
    xs, ys = axes.x(line[:, 0]), axes.y(line[:, 1])
    np.testing.assert_allclose(ys[xs < add.step - 0.5], 0.0, atol=1e-3)
    np.testing.assert_allclose(ys[xs > add.step + 0.5], add.params["momentum"], atol=1e-3)
    assert _steps(svg) == [add.step]


def test_grad_norm_heatmap_is_layers_by_steps(report) -> None:
    run, page = report
    layers = sorted(n for n in run.series if n.startswith("grad_norm/"))
    (svg,) = of_kind(page, "heatmap")
    assert svg.attrib["data-rows"] == str(len(layers))
    rows = groups(svg, "row")
    assert [r.find("text").text for r in rows] == [n.removeprefix("grad_norm/") for n in layers]
    assert all("median" in title(r) for r in rows)
    index = png_indices(svg.find("image").attrib["href"])
    steps = run.series[layers[0]][0]
    assert all(np.array_equal(run.series[n][0], steps) for n in layers)
    assert index.shape == (len(layers), steps.size)
    # the colour index follows log10 of the norm: 0 at the smallest in the map, 254 at the largest
    z = np.log10(np.stack([run.series[n][1] for n in layers]))
    expected = np.round((z - z.min()) / (z.max() - z.min()) * 254)
    np.testing.assert_array_equal(index, expected)


def test_report_of_a_guarded_run_is_small(report) -> None:
    _, page = report
    assert len(page.encode("utf-8")) < 1_000_000  # plotly.js inline alone was ~4.8 MB


def test_hostile_strings_are_only_escaped(run_dir, tmp_path: pathlib.Path) -> None:
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
    assert "<script" not in page
    checker = _check(page)
    assert checker.scripts == []  # no script element was injected
    text = " ".join(checker.text)
    assert f"summary {HOSTILE}" in text  # shown, as text
    assert html.escape(HOSTILE) in page
    # inside the charts the string is escaped once: XML parsing gives it back as text
    svgs = list(charts(page).values())
    labels = [g.attrib.get("data-label", "") for svg in svgs for g in svg.iter("g")]
    assert f"loss_component/{HOSTILE}" in labels  # its small chart in "Other signals"
    assert HOSTILE in labels  # the branch trial's bar
    hovers = [title(g) for svg in svgs for g in svg.iter("g")]
    assert any(f"reason {HOSTILE}" in _words(h) for h in hovers)  # the action marker
    assert any(f"{HOSTILE} plateau ({HOSTILE})" in h for h in hovers)
    texts = [t.text or "" for svg in svgs for t in svg.iter("text")]
    assert f"action: {HOSTILE}" in texts  # its legend entry


def test_hand_built_probes_render_as_curves_bars_and_tables(tmp_path: pathlib.Path) -> None:
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
            "valley": None,  # missing: left out of the table
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
    assert len(charts(page)) == 3  # two curves and the bars; nothing else has data
    curve, ours = of_kind(page, "probe")
    (bars,) = of_kind(page, "bars")
    axes = Axes(curve)
    assert axes.log("x")
    (line,) = points(series(curve, "losses"))
    np.testing.assert_allclose(axes.x(line[:, 0]), lrs, rtol=1e-3)
    np.testing.assert_allclose(axes.y(line[:, 1]), losses, rtol=1e-3)
    (mark,) = groups(curve, "probe-mark")
    assert abs(axes.x(float(mark.find("line").attrib["x1"])) / 1e-3 - 1) < 1e-3
    assert "suggestion 0.001" in title(mark)
    # bars: one per branch, the best in green, heights in proportion to the scores
    bar_groups = groups(bars, "bar")
    assert [g.attrib["data-label"] for g in bar_groups] == ["lr ×10", "lr ×0.1", "warm restart"]
    rects = [g.find("rect") for g in bar_groups]
    assert [r.attrib["fill"] for r in rects] == ["#2ca02c", "#1f77b4", "#1f77b4"]
    heights = np.asarray([float(r.attrib["height"]) for r in rects])
    np.testing.assert_allclose(heights / heights[0], [1.0, 3.0, 2.25], rtol=2e-2)
    assert "steps: 20" in title(bar_groups[0])
    # unstuck's own range test: the smoothed list beside the losses, the factor and divergence
    assert [g.attrib["data-label"] for g in groups(ours, "series")] == ["losses", "smoothed"]
    (smoothed,) = points(series(ours, "smoothed"))
    np.testing.assert_allclose(Axes(ours).y(smoothed[:, 1]), [2.3, 2.25, 2.0, 1.8, 2.1], rtol=1e-3)
    marks = {
        float(g.attrib["data-x"]): g.find("line").attrib["stroke"]
        for g in groups(ours, "probe-mark")
    }
    assert marks == {3.0: "#2ca02c", 1000.0: "#d62728"}  # suggested factor, divergence
    # one verdict on the page: the finding's, not the probe's first reading at the LR then
    assert "lambda_max" in text and "saddle_point" not in text and "classification" not in text
    assert "[1, 2, 3]" in text  # unequal lists fall back to the table
    assert "steepest" in text  # the scalars stay in the table
    assert "<th>valley</th>" not in page and "None" not in text
    # absent sections of a Guard's run leave a one-line note
    for message in (
        "No training or validation loss series",
        "No learning-rate series",
        "No gradient-norm series",
        "No update/weight ratio series",
        "No findings",
        "No actions",
    ):
        assert message in text


def _epoch_log(fmt: str) -> RunData:
    epochs = np.arange(30)
    run = RunData(source="training.log.csv", format=fmt, meta={"step_unit": "epoch"})
    run.add_series("loss", epochs, 2.0 * np.exp(-epochs / 10) + 0.1)
    run.add_series("val_loss", epochs, 2.1 * np.exp(-epochs / 10) + 0.15)
    run.add_series("lr/0", epochs, np.where(epochs < 15, 1e-2, 1e-3))
    return run


def test_analysed_log_leaves_out_empty_sections_and_names_its_x_axis(tmp_path) -> None:
    page = write_report(_epoch_log("keras"), tmp_path / "log.html").read_text(encoding="utf-8")
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["Loss", "Learning rate", "Findings"]
    for guard_only in ("Only part", "not recorded in this run", "No gradient-norm", "No actions"):
        assert guard_only not in page
    svgs = list(charts(page).values())
    assert len(svgs) == 2
    for svg in svgs:
        axis_titles = [t.text for t in svg.iter("text") if t.attrib.get("class") == "axis-title"]
        assert axis_titles[0] == "epoch"
    assert "step" not in " ".join(t.text or "" for svg in svgs for t in svg.iter("text"))
    # 30 epoch means: drawn as they are, a dot on each, no smoothed line
    (loss,) = of_kind(page, "loss")
    line = series(loss, "train loss")
    assert len(list(line.iter("circle"))) == 30
    assert [g.attrib["data-label"] for g in groups(loss, "smoothed")] == []
    # the same data as a Guard's run: the empty sections are there, with their notes
    guard_page = write_report(_epoch_log("unstuck"), tmp_path / "g.html").read_text("utf-8")
    assert "<h2>Gradient norms</h2>" in guard_page and "No gradient-norm series" in guard_page
    assert "lr_multiplier was not recorded" in guard_page


def test_report_of_a_small_analysed_csv_is_small(tmp_path: pathlib.Path) -> None:
    from unstuck.analyze import analyze, load

    csv = tmp_path / "metrics.csv"
    rows = ["step,loss,val_loss,lr"]
    rng = np.random.default_rng(0)
    for step in range(120):
        loss = 2.3 if step < 60 else 2.3 * math.exp(-(step - 60) / 20)
        rows.append(f"{step},{loss + rng.normal(0, 0.02):.5f},{loss + 0.1:.5f},0.001")
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    run = analyze(load(csv))
    assert run.format != "unstuck"
    path = write_report(run, tmp_path / "metrics.html")
    page = path.read_text(encoding="utf-8")
    assert of_kind(page, "loss")
    (raw,) = points(series(of_kind(page, "loss")[0], "train loss (raw)"))
    assert len(raw) == 120
    assert path.stat().st_size < 200_000


def test_comparison_run_is_drawn_grey_and_dashed(tmp_path: pathlib.Path) -> None:
    steps = np.arange(400)
    rng = np.random.default_rng(1)
    run = RunData(source="demo", format="unstuck")
    run.add_series("loss", steps, 2.3 * np.exp(-steps / 100) + 0.1 + rng.uniform(0, 0.05, 400))
    run.add_series("compare/loss", steps, 2.3 - steps * 1e-4 + rng.uniform(0, 0.05, 400))
    val_steps = np.arange(49, 400, 50)
    run.add_series("val_loss", val_steps, 2.4 * np.exp(-val_steps / 100) + 0.2)
    run.add_series("compare/val_loss", val_steps, 2.4 - val_steps * 1e-4)
    page = write_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    (svg,) = of_kind(page, "loss")
    axes = Axes(svg)
    base = series(svg, "without unstuck")
    polyline = base.find("polyline")
    assert polyline.attrib["stroke"] == "#7f7f7f" and polyline.attrib["stroke-dasharray"]
    (line,) = points(base)
    window = 9  # 2% of 400, made odd
    expected = smooth(run.series["compare/loss"][1], window, True)
    np.testing.assert_allclose(axes.y(line[:, 1]), expected, rtol=1e-3)
    (val,) = points(series(svg, "without unstuck (validation)"))
    np.testing.assert_allclose(axes.y(val[:, 1]), run.series["compare/val_loss"][1], rtol=1e-3)
    assert "without unstuck" in [t.text for t in svg.iter("text")]
    assert of_kind(page, "signal") == []  # not repeated under "Other signals"


def test_action_table_verdicts_reasons_and_plurals(tmp_path: pathlib.Path) -> None:
    run = RunData(source="x", format="unstuck")
    run.add_series("loss", np.arange(100), np.linspace(2.0, 1.0, 100))
    run.actions = [
        ActionRecord(
            "lr_scale",
            10,
            "flat",
            outcome="kept",
            evidence={"verdict_change": 0.0, "verdict_stderr": math.inf, "verdict_log_scale": True},
        ),
        ActionRecord("branch_trial", 20, "", outcome="skipped"),  # no reason anywhere
        ActionRecord(
            "lr_range_test",
            30,
            "flat",
            outcome="skipped",
            evidence={"skipped_because": "probe budget: 3 steps left"},
        ),
        ActionRecord(
            "lr_scale",
            40,
            "LR range test: ×3 (steepest; steepest ×—, valley ×0.5, diverged at ×—)",
            outcome="kept",
            params={"label": "lr ×3"},
            evidence={"steepest": None, "valley": 0.5},
        ),
    ]
    run.probes = [{"step": 5, "probe": "curvature", "lambda_max": 1.0}]
    page = write_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    rows = re.findall(
        r'<tr data-outcome="([^"]+)">.*?<td class="verdict">(.*?)</td><td>(.*?)</td>', page
    )
    assert [r[0] for r in rows] == ["kept", "skipped", "skipped", "kept"]
    assert rows[0][1] == "undecided (too few points to compare)"
    assert "± inf" not in page
    assert rows[1][1] == "skipped: no reason recorded"
    assert "no reason recorded" in rows[1][2]
    assert rows[2][1] == "skipped: probe budget: 3 steps left"
    assert rows[3][2] == html.escape("LR range test: ×3 (steepest, valley ×0.5)")
    assert "×—" not in page
    assert "<code>steepest</code>" not in page  # a None evidence value is left out
    text = " ".join(_check(page).text)
    assert "1 series · 0 plateaus · 0 findings · 4 actions · 1 probe" in text
    # skipped proposals changed nothing: not drawn, and the chart says so
    (svg,) = of_kind(page, "loss")
    assert _steps(svg) == [10, 40]
    assert "2 proposed actions skipped" in text


def test_long_series_are_downsampled_keeping_extremes(tmp_path: pathlib.Path) -> None:
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
    (svg,) = of_kind(page, "loss")
    axes = Axes(svg)
    segments = points(series(svg, "train loss (raw)"))
    assert len(segments) == 2  # the NaN still shows as a gap
    drawn = np.concatenate(segments)
    assert len(drawn) <= MAX_POINTS + MAX_POINTS // 2 + 2
    ys = axes.y(drawn[:, 1])
    assert math.isclose(ys.max(), 50.0, rel_tol=1e-3) and math.isclose(ys.min(), 0.5, rel_tol=1e-3)
    xs = axes.x(drawn[:, 0])
    assert abs(xs[0]) < 1 and abs(xs[-1] - (n - 1)) < 1
    assert path.stat().st_size < 300_000


def test_ticks_are_readable() -> None:
    assert [label for _, label in log_ticks(-5, -3)] == [
        "1e-5",
        "2e-5",
        "5e-5",
        "1e-4",
        "2e-4",
        "5e-4",
        "0.001",
    ]
    wide = log_ticks(-8, 4)
    assert 2 <= len(wide) <= 8
    assert all(math.log10(v).is_integer() for v, _ in wide)
    assert [label for _, label in log_ticks(0, 4)] == ["1", "10", "100", "1000", "10000"]
    assert [label for _, label in linear_ticks(0, 1)] == ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert [label for _, label in linear_ticks(0, 599, integer=True)] == [
        "0",
        "100",
        "200",
        "300",
        "400",
        "500",
    ]


def test_png_encoder_round_trips() -> None:
    import base64

    rng = np.random.default_rng(0)
    index = rng.integers(0, 256, size=(7, 13)).astype(np.uint8)
    palette = rng.integers(0, 256, size=(256, 3)).astype(np.uint8)
    uri = "data:image/png;base64," + base64.b64encode(png_indexed(index, palette)).decode()
    np.testing.assert_array_equal(png_indices(uri), index)


def test_multiplier_changes_move_to_the_action_step() -> None:
    steps, values = np.asarray([49, 99, 149, 199]), np.asarray([1.0, 1.0, 100.0, 100.0])
    moved_steps, moved = move_changes(steps, values, [120, 160])
    assert moved_steps.tolist() == [49, 99, 120, 149, 199]
    assert moved.tolist() == [1.0, 1.0, 100.0, 100.0, 100.0]
    unmoved_steps, _ = move_changes(steps, values, [20, 170])  # no action inside the change
    assert unmoved_steps.tolist() == steps.tolist()


def test_report_needs_no_plotly(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    run = RunData(source="x", format="unstuck")
    run.add_series("loss", [0, 1, 2], [1.0, 0.9, 0.8])
    path = write_report(run, tmp_path / "r.html")
    assert of_kind(path.read_text(encoding="utf-8"), "loss")


def test_version_comes_from_the_package_metadata(monkeypatch: pytest.MonkeyPatch, tmp_path):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    page = write_report(RunData(source="x", format="unstuck"), tmp_path / "r.html").read_text(
        encoding="utf-8"
    )
    assert "Written by unstuck unknown on" in page


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


def test_cli_report_writes_without_plotly(
    run_dir, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir[0]), "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
    assert of_kind(out.read_text(encoding="utf-8"), "loss")


def test_demo_summary_names_the_report() -> None:
    from unstuck.cli.demo import DemoResult, RunResult, format_demo

    runs = RunResult(2.3, 2.3, 0.1, 1.0, 1.0), RunResult(0.2, 0.2, 0.9, 1.0, 1.1)
    written = DemoResult("digits-low-lr", 100, 0, *runs, run_dir="d", report="d/report.html")
    assert "  report:    d/report.html  (open it in a browser)" in list(format_demo(written))
    missing = DemoResult("digits-low-lr", 100, 0, *runs, run_dir="d", report_note="needs plotly")
    assert "  report:    needs plotly" in list(format_demo(missing))
    assert written.to_dict()["report"] == "d/report.html"
    assert missing.to_dict()["report"] is None


def test_curvature_probe_shows_the_findings_verdict_not_its_own(tmp_path) -> None:
    """The probe classified at the LR of its moment (saddle); the rules judged the same numbers
    at the effective step and found a flat region: the page says flat_region once."""
    from unstuck.record.report import write_report
    from unstuck.record.rundata import RunData
    from unstuck.types import Finding

    run = RunData(source="hand", format="unstuck")
    run.add_series("loss", np.arange(200), np.full(200, 2.3))
    run.probes = [
        {"step": 49, "probe": "curvature", "lambda_max": 0.4, "classification": "saddle_point"}
    ]
    run.findings = [Finding("flat_region", 0.9, {}, 49, "flat region")]
    page = write_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    probes = page[page.index("curvature at step 49") :]
    assert "flat_region 0.90 (see Findings)" in probes
    assert "saddle_point" not in page
