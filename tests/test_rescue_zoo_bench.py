"""bench/zoo/rescue.py: the harm rule, the scoring, and the JSON of a tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from zoo import rescue as zoo_rescue


def _run(key: str, kind: str, constant: tuple[int, float], other: tuple[int, float]) -> dict:
    budget = 300

    def cell(steps: int, final: float) -> dict:
        return {"steps_to_target": steps, "reached": steps <= budget, "final_loss": final}

    return {
        "key": key,
        "kind": kind,
        "budget": budget,
        "strategies": {"constant": cell(*constant), "unstuck": cell(*other)},
    }


def test_harm_is_a_worse_end_or_a_later_target_than_constant():
    assert zoo_rescue._harmed(_run("a", "fault", (100, 1.0), (100, 1.0)), "unstuck") == []
    assert zoo_rescue._harmed(_run("a", "fault", (100, 1.0), (100, 1.005)), "unstuck") == []
    assert zoo_rescue._harmed(_run("a", "fault", (100, 1.0), (100, 1.02)), "unstuck") == [
        "worse final loss"
    ]
    assert zoo_rescue._harmed(_run("a", "fault", (100, 1.0), (110, 1.0)), "unstuck") == []
    assert zoo_rescue._harmed(_run("a", "fault", (100, 1.0), (120, 1.0)), "unstuck") == [
        "later to target"
    ]
    assert zoo_rescue._harmed(_run("a", "fault", (100, 1.0), (600, 0.9)), "unstuck") == [
        "later to target"
    ]
    # constant never got there: later is no harm
    assert zoo_rescue._harmed(_run("a", "fault", (600, 1.0), (600, 1.0)), "unstuck") == []


def test_score_counts_harm_misses_and_ratios():
    runs = [
        _run("f1", "fault", (100, 1.0), (50, 0.5)),
        _run("f2", "fault", (100, 1.0), (600, 2.0)),
        _run("h1", "healthy", (100, 1.0), (100, 1.0)),
        _run("h2", "healthy", (100, 1.0), (100, 1.1)),
    ]
    result = zoo_rescue.score(runs, ("constant", "unstuck"))
    cell = result["strategies"]["unstuck"]
    assert cell["harm_rate"] == pytest.approx(2 / 4)
    assert set(cell["harmed"]) == {"f2", "h2"}
    assert cell["missed"] == ["f2"]
    assert cell["geomean_steps_vs"]["constant"] == pytest.approx((0.5 * 6) ** 0.5)
    assert cell["healthy_within_1pct"] == pytest.approx(0.5)


def _tiny_run(tmp_path: Path, strategies: str) -> dict:
    """The test split's logistic-regression program with an LR ×10⁴, 60 steps, as JSON."""
    out = tmp_path / "zoo_rescue.json"
    zoo_rescue.main(
        [
            "--split",
            "test",
            "--quick",
            "--programs",
            "logistic_iris_sgd",
            "--operators",
            "lr_x10k",
            "--strategies",
            strategies,
            "--max-steps",
            "60",
            "--json",
            str(out),
        ]
    )
    return json.loads(out.read_text())


def test_a_tiny_run_writes_the_figures(tmp_path: Path) -> None:
    result = _tiny_run(tmp_path, "constant,unstuck")
    assert result["split"] == "test" and not result["errors"]
    assert result["fault_runs"] >= 1 and result["healthy_runs"] == 1
    cell = result["strategies"]["unstuck"]
    assert 0.0 <= cell["harm_rate"] <= 1.0
    assert cell["probe_nonfinite"] == 0
    for record in result["records"]:
        assert record["budget"] == 60
        for name in ("constant", "unstuck"):
            steps = record["strategies"][name]["steps_to_target"]
            assert steps <= 60 or steps == zoo_rescue.NOT_REACHED * 60


def test_prodigy_replaces_the_programs_optimizer(tmp_path: Path) -> None:
    pytest.importorskip("prodigyopt")
    result = _tiny_run(tmp_path, "constant,prodigy")
    assert not result["errors"]
    final = {r["kind"]: r["strategies"] for r in result["records"]}
    # lr_x10k changes only the program's LR. Prodigy sets its own step size in place of the
    # program's optimizer, so the healthy and the faulty run are the same run under it; as
    # written (constant) they are not.
    assert final["fault"]["prodigy"]["final_loss"] == final["healthy"]["prodigy"]["final_loss"]
    assert final["fault"]["constant"]["final_loss"] != final["healthy"]["constant"]["final_loss"]
