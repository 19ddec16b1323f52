"""Every diagnosis scenario in its shortened form: the seeded fault is named first; a healthy
control gets no finding of confidence ≥ 0.5. The full runs are ``bench/diagnosis.py``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from scenarios import load_scenarios

SCENARIOS = load_scenarios()


@pytest.fixture
def rules_uncalibrated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenarios test the rules: each fires on its fault, ahead of the others, by its own
    formula. How often a rule's findings are right is measured on the fault zoo and applied as
    a scale (``calibration.SCALES``, docs/zoo.md); a rule the zoo finds unreliable is scaled
    below an end state there, which says nothing about whether its logic fires here."""
    from unstuck.diagnose import calibration

    monkeypatch.setattr(calibration, "SCALES", {})


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.usefixtures("rules_uncalibrated")
def test_scenario_short_run_names_its_cause(name: str) -> None:
    logging.getLogger("unstuck").setLevel(logging.WARNING)
    scenario = SCENARIOS[name]
    result = scenario.run(0, True)
    ranking = result.ranking()
    if scenario.expected is None:
        strong = [(c, p) for c, p in ranking if p >= 0.5]
        assert not strong, f"healthy control {name} got findings {strong}"
    else:
        assert ranking, f"{name}: no finding at all (expected {scenario.expected})"
        assert ranking[0][0] == scenario.expected, (
            f"{name}: expected {scenario.expected} first, got {ranking[:3]}"
        )


def test_scenarios_cover_the_catalog_and_the_architectures() -> None:
    from unstuck.diagnose import all_rules

    expected = {s.expected for s in SCENARIOS.values() if s.expected is not None}
    missing = sorted(set(all_rules()) - expected)
    assert not missing, f"causes without a scenario: {missing}"
    assert sum(s.expected is None for s in SCENARIOS.values()) >= 8
    assert len([s for s in SCENARIOS.values() if s.expected is not None]) >= 25
    assert {"mlp", "cnn", "transformer", "rnn"} <= {s.arch for s in SCENARIOS.values()}
    assert {"sgd", "momentum", "adam", "adamw"} <= {s.optimizer for s in SCENARIOS.values()}


# Scenarios whose top cause sits next to a related rule (dead units and the vanishing gradient
# they cause; an LR too low and a flat region; a healthy run and its false findings), rerun under
# other floating-point schedules: another CPU's kernels reorder sums the same way.
ROBUSTNESS_SAMPLE = (
    "dead_relu_adam_high_lr",
    "vanishing_gradients_deep_sigmoid",
    "lr_too_low_sgd",
    "healthy_mlp_adam",
)
FLOAT_SETTINGS = ((1, "medium"), (2, "high"))  # (intra-op threads, float32 matmul precision)


@pytest.mark.parametrize(("threads", "precision"), FLOAT_SETTINGS)
@pytest.mark.parametrize("name", ROBUSTNESS_SAMPLE)
@pytest.mark.usefixtures("rules_uncalibrated")
def test_scenario_top_cause_survives_other_threads_and_matmul_precision(
    name: str, threads: int, precision: str
) -> None:
    import torch

    logging.getLogger("unstuck").setLevel(logging.WARNING)
    scenario = SCENARIOS[name]
    saved_threads, saved_precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(precision)
    try:
        ranking = scenario.run(0, True).ranking()
    finally:
        torch.set_num_threads(saved_threads)
        torch.set_float32_matmul_precision(saved_precision)
    if scenario.expected is None:
        assert not [(c, p) for c, p in ranking if p >= 0.5], f"{name}: {ranking[:3]}"
    else:
        assert ranking and ranking[0][0] == scenario.expected, f"{name}: {ranking[:3]}"


# Scenarios whose causes read different parts of the store: per-layer gradient norms (vanishing
# behind poor initialisation), activation summaries the store does not hold (input_scale, read
# back as recorded live), the plateau detector at the Guard's cadence, and a healthy run.
REPLAY_SAMPLE = (
    "lr_too_low_sgd",
    "poor_initialization_tanh_small",
    "input_scale_circle",
    "capacity_limit_circles_linear",
    "healthy_mlp_adam",
)


@pytest.mark.parametrize("name", REPLAY_SAMPLE)
def test_analyze_of_a_scenario_store_agrees_with_the_live_guard(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scenarios import _common
    from unstuck.analyze import analyze, load

    logging.getLogger("unstuck").setLevel(logging.WARNING)
    monkeypatch.setitem(_common.GUARD_OVERRIDES, "run_dir", tmp_path)
    live = SCENARIOS[name].run(0, True)
    offline = analyze(load(tmp_path))
    assert [(p.series, p.start, p.end) for p in offline.plateaus] == [
        (p.series, p.start, p.end) for p in live.plateaus
    ]
    best: dict[str, float] = {}
    for f in offline.findings:
        best[f.cause] = max(best.get(f.cause, 0.0), f.confidence)
    offline_ranking = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
    live_ranking = live.ranking()
    assert [c for c, p in offline_ranking if p >= 0.5] == [c for c, p in live_ranking if p >= 0.5]
    if live_ranking:
        assert offline_ranking[0][0] == live_ranking[0][0]
        assert offline_ranking[0][1] == pytest.approx(live_ranking[0][1], abs=0.02)
