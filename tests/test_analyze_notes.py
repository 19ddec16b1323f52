"""What `unstuck analyze` says about a log when it can name no cause: a run that never learned,
a metric that never moved; and the rules that stay silent on what a log cannot show."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unstuck.analyze.analysis import NEVER_LEARNED_DROP, _never_learned, analyze
from unstuck.diagnose import Evidence, get_rule
from unstuck.record.rundata import RunData


def _log(**series: np.ndarray) -> RunData:
    run = RunData(source="test", format="csv")
    for name, values in series.items():
        run.add_series(name, np.arange(values.size), values)
    return run


def test_a_loss_at_ln_10_throughout_never_learned_at_chance() -> None:
    rng = np.random.default_rng(0)
    loss = math.log(10) + 0.002 * rng.standard_normal(300)
    note = _never_learned("loss", "train", loss)
    assert note is not None and "never left its starting level" in note
    assert "chance level for 10 classes" in note


def test_chance_level_is_claimed_only_where_one_class_count_fits() -> None:
    """ln 328 ≈ 5.793 and ln 329 are 0.05 % apart: any loss there 'matches' a class count."""
    note = _never_learned("loss", "train", np.full(200, 5.794))
    assert note is not None and "chance" not in note


@pytest.mark.parametrize("drop", [0.05, 0.3, 0.9])
def test_a_loss_that_fell_learned(drop: float) -> None:
    assert drop > NEVER_LEARNED_DROP
    loss = 2.0 * (1 - drop * (1 - np.exp(-np.arange(300) / 50)))
    assert _never_learned("loss", "train", loss) is None


def test_analyze_notes_a_run_that_never_learned_and_an_accuracy_that_never_moved() -> None:
    run = _log(loss=np.full(400, 5.7939) - np.linspace(0, 0.003, 400), acc=np.full(400, 0.642857))
    notes = analyze(run).meta["notes"]
    assert any("never left its starting level" in n for n in notes)
    assert any(n.startswith("acc is 0.642857 at all 400 points") for n in notes)
    assert all(f.cause != "capacity_limit" for f in run.findings)


def test_capacity_limit_needs_measured_dynamics() -> None:
    """'Healthy dynamics' is the claim: a log with the loss alone cannot support it."""
    loss = (np.arange(200), np.r_[np.linspace(2.0, 1.0, 50), np.full(150, 1.0)])
    flat = {"loss": loss, "detector_state": "plateau", "detector_series": "train"}
    assert get_rule("capacity_limit").check(Evidence(flat, step=199)) is None
    measured = {**flat, "update_ratio": (np.arange(8), np.full(8, 1e-3))}
    finding = get_rule("capacity_limit").check(Evidence(measured, step=199))
    assert finding is not None and finding.confidence < 0.5
