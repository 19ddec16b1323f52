"""The fault zoo (``bench/zoo``): its registry and fixed split, every operator producing a
runnable mutant, the hurt check and the metrics on hand-built results, and ``run.py``'s JSON.

The zoo's figures themselves come from ``python bench/zoo/run.py``; these tests check that the
machinery producing them is right, in well under a minute."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from zoo import SPLIT, TEST_PROGRAMS, TRAIN_PROGRAMS, load_programs
from zoo._spec import Outcome, execute
from zoo.metrics import END_STATES, reliability, score
from zoo.operators import NOT_IN_ZOO, OPERATORS
from zoo.plan import HURT_MARGIN, QUICK_PER_OPERATOR, Job, build, hurt, zoo_runs

PROGRAMS = load_programs()
FAMILY_GROUPS = {
    "mlp": {"mlp"},
    "cnn": {"cnn", "resnet"},
    "rnn": {"rnn"},
    "transformer": {"transformer"},
}


def test_registry_has_the_programs_and_a_fixed_disjoint_split() -> None:
    assert len(PROGRAMS) >= 16
    assert set(PROGRAMS) == set(SPLIT)
    assert not set(TRAIN_PROGRAMS) & set(TEST_PROGRAMS)
    assert set(TRAIN_PROGRAMS) | set(TEST_PROGRAMS) == set(PROGRAMS)
    # the split is written in the code: these are the test programs, not a draw
    assert TEST_PROGRAMS == (
        "mlp_moons_sgd",
        "tabular_breast_cancer_adamw_cosine",
        "logistic_iris_sgd",
        "teacher_student_rmsprop",
        "cnn_bn_digits_adam_onecycle",
        "lstm_seq_adam_step",
        "gpt_markov_adamw",
    )
    for side in (TRAIN_PROGRAMS, TEST_PROGRAMS):
        families = {PROGRAMS[p].family for p in side}
        for group, members in FAMILY_GROUPS.items():
            assert families & members, f"a split without a {group} program"
    specs = [p.make(0) for p in PROGRAMS.values()]
    optimizers = {s.optimizer for s in specs}
    assert {"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"} <= optimizers
    assert {None, "warmup_cosine", "step", "onecycle"} <= {s.schedule for s in specs}


def test_operators_cover_the_catalog() -> None:
    from unstuck.diagnose import all_rules

    catalog = set(all_rules())
    causes = {op.cause for op in OPERATORS.values()}
    assert causes <= catalog
    assert len(causes) >= 27
    assert catalog == causes | set(NOT_IN_ZOO), sorted(catalog - causes - set(NOT_IN_ZOO))
    for op in OPERATORS.values():
        assert 0 < op.low <= op.high
        assert op.severity(0.0) == pytest.approx(op.low)
        assert op.severity(1.0) == pytest.approx(op.high)
        assert op.worse(1.0) == pytest.approx(op.low if op.low_is_worse else op.high)
    assert OPERATORS["fixed_shard"].low_is_worse  # a smaller shard is the worse truncation
    assert not OPERATORS["lr_x10k"].low_is_worse


def test_full_zoo_size_and_quick_subset() -> None:
    full = zoo_runs("all")
    assert len(full) >= 600
    assert len({j.key for j in full}) == len(full)
    assert zoo_runs("test") == [j for j in full if SPLIT[j.program] == "test"]
    quick = zoo_runs("test", quick=True)
    assert {j.program for j in quick} <= set(TEST_PROGRAMS)
    assert all(j.seed == 0 for j in quick)
    by_op: dict[str, list[str]] = {}
    for j in quick:
        if j.operator:
            by_op.setdefault(j.operator, []).append(j.program)
    for programs in by_op.values():  # up to two mutants per operator, on distinct programs
        assert 1 <= len(programs) <= QUICK_PER_OPERATOR and len(set(programs)) == len(programs)
    assert len(by_op) >= 25  # nearly every operator has a program in the test split
    assert {j.program for j in quick if j.operator is None} == set(TEST_PROGRAMS)
    # severities are fixed by the run's identity, so two calls plan the same zoo
    assert zoo_runs("all") == full


# For each operator, a base program it applies to: the first of these that fits.
PREFERRED = ("mlp_digits_adam", "mlp_moons_sgd", "linreg_diabetes_sgd", "gpt_markov_adamw")


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator_makes_a_runnable_mutant(name: str) -> None:
    import torch

    logging.getLogger("unstuck").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    op = OPERATORS[name]
    program = next(p for p in PREFERRED if op.applies(PROGRAMS[p].make(0)))
    job = Job(program, 0, name, op.severity(0.5), max_steps=20)
    mutant, reference = build(job)
    base = PROGRAMS[program].make(0)
    assert reference is not None
    changed = [
        f
        for f in vars(base)
        if f not in ("data", "build", "extra") and getattr(base, f) != getattr(mutant, f)
    ]
    data_changed = not (
        torch.equal(base.data.x, mutant.data.x) and torch.equal(base.data.y, mutant.data.y)
    )
    assert changed or data_changed or mutant.build is not base.build, f"{name} changed nothing"
    outcome = execute(mutant, 0, guard=False)
    assert len(outcome.checkpoints) >= 1
    assert outcome.final_val >= 0  # inf is allowed: a NaN-producing fault ends non-finite


def test_batch_of_one_keeps_two_samples_under_batchnorm() -> None:
    """BatchNorm raises on a batch of 1 in training: the fault there is a batch of 2."""
    job = Job("tabular_breast_cancer_adamw_cosine", 0, "batch_of_one", 1.0, max_steps=5)
    mutant, _ = build(job)
    assert mutant.norm and mutant.batch_size == 2
    assert execute(mutant, 0, guard=False).checkpoints
    mutant, _ = build(Job("mlp_moons_sgd", 0, "batch_of_one", 1.0, max_steps=5))
    assert mutant.batch_size == 1


def test_sigmoid_regression_compares_with_the_same_scaled_targets() -> None:
    """The honest counterfactual: the same targets × s with the program's linear output."""
    import torch

    base = PROGRAMS["linreg_diabetes_sgd"].make(0)
    mutant, reference = build(Job("linreg_diabetes_sgd", 0, "sigmoid_regression", 10.0))
    assert reference is not None
    assert mutant.out_act == "sigmoid" and reference.out_act is None
    for spec in (mutant, reference):
        assert torch.equal(spec.data.y, base.data.y * 10.0)
        assert torch.equal(spec.data.y_val, base.data.y_val * 10.0)
    assert float(mutant.data.y.max()) > 2.0 and float(mutant.data.y.min()) < -1.0
    # the output cannot leave [0, 1]: the plan's hurt check calls it a fault
    check = hurt(execute(mutant, 0, guard=False), execute(reference, 0, guard=False))
    assert check["hurt"] and "worse validation" in check["why"]
    assert PROGRAMS["linreg_diabetes_sgd"].make(0).data.y.max() == base.data.y.max()  # no leak


def test_a_run_that_raises_is_recorded_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo import plan, run

    def broken(job: Job) -> dict[str, Any]:
        raise ValueError("boom")

    monkeypatch.setattr(plan, "run_job", broken)
    record = run._run(Job("logistic_iris_sgd", 0, "lr_x10k", 100.0))
    assert record["error"] == "ValueError: boom" and record["scored"] is False
    result = score([record, _record(None, [])])
    assert result["not_hurt_runs"] == 0 and result["healthy_runs"] == 1


def _outcome(final: float, checkpoints: list[tuple[int, float]]) -> Outcome:
    """A run whose clean metric ends at ``final`` on both training and validation data."""
    return Outcome(final, final, checkpoints, 0.0, 0.0)


def test_hurt_check() -> None:
    ref = _outcome(0.10, [(100, 0.4), (200, 0.15), (300, 0.10)])
    same = hurt(_outcome(0.10, [(100, 0.4), (200, 0.15), (300, 0.10)]), ref)
    assert not same["hurt"] and same["why"] == []
    # within the margin: 0.12 < 0.10 · (1 + HURT_MARGIN)
    assert not hurt(_outcome(0.12, [(100, 0.4), (200, 0.2), (300, 0.12)]), ref)["hurt"]
    worse = hurt(_outcome(0.10 * (1 + HURT_MARGIN) + 0.01, [(300, 0.2)]), ref)
    assert worse["hurt"] and "worse validation" in worse["why"]
    # the same end value, reached at step 300 where the reference was at its target by 200
    slower = hurt(
        _outcome(0.10, [(100, 0.9), (200, 0.5), (300, 0.10)]),
        _outcome(0.10, [(100, 0.12), (200, 0.10), (300, 0.10)]),
    )
    assert slower["hurt"] and slower["why"] == ["slower"]
    broken = hurt(_outcome(math.inf, [(100, math.inf)]), ref)
    assert broken["hurt"] and broken["why"] == ["non-finite"]


def _record(expected: str | None, ranking: list[tuple[str, float]], **kw: Any) -> dict[str, Any]:
    return {
        "expected": expected,
        "ranking": ranking,
        "program": kw.get("program", "p"),
        "split": "test",
        "scored": kw.get("scored", True),
        "key": kw.get("key", f"{expected}:{ranking}"),
    }


def test_metrics_on_hand_built_results() -> None:
    records = [
        _record("lr_too_high", [("lr_too_high", 0.9), ("dead_relu", 0.6)]),  # top-1
        _record("dead_relu", [("lr_too_low", 0.7), ("flat_region", 0.3), ("dead_relu", 0.2)]),
        _record("label_noise", [("a", 0.9), ("b", 0.8), ("c", 0.7), ("label_noise", 0.6)]),
        _record("label_noise", []),  # nothing found
        _record("lr_too_low", [("lr_too_high", 0.95)], scored=False),  # did not hurt: ignored
        _record(None, [("converged", 0.45), ("capacity_limit", 0.45)]),  # end states only
        _record(None, [("lr_too_high", 0.5)]),  # a false alarm at exactly 0.5
        _record(None, [("dead_relu", 0.49)]),  # below the bar
    ]
    result = score(records)
    assert result["seeded_runs"] == 4 and result["healthy_runs"] == 3
    assert result["top1"] == pytest.approx(1 / 4)
    assert result["top3"] == pytest.approx(2 / 4)
    assert result["healthy_false_rate"] == pytest.approx(1 / 3)
    assert result["not_hurt_runs"] == 1
    assert result["per_cause"]["label_noise"] == {
        "runs": 2,
        "top1": 0.0,
        "top3": 0.0,
        "named_first": {"a": 1, "-": 1},
    }
    assert result["per_cause"]["dead_relu"]["top3"] == 1.0
    # calibration: end states on healthy runs are left out; 11 findings remain
    cal = reliability([r for r in records if r["scored"]])
    assert cal["findings"] == 11
    bins = {tuple(b["bin"]): b for b in cal["bins"]}
    top = bins[(0.9, 1.0)]  # lr_too_high 0.9 (right) and a 0.9 (wrong)
    assert top["n"] == 2 and top["accuracy"] == 0.5 and top["confidence"] == pytest.approx(0.9)
    by_hand = 0.0
    points = [
        (0.9, 1), (0.6, 0), (0.7, 0), (0.3, 0), (0.2, 1), (0.9, 0), (0.8, 0), (0.7, 0),
        (0.6, 1), (0.5, 0), (0.49, 0),
    ]  # fmt: skip
    for lo in range(10):
        mine = [(p, ok) for p, ok in points if lo / 10 <= p < (lo + 1) / 10]
        if mine:
            conf = sum(p for p, _ in mine) / len(mine)
            acc = sum(ok for _, ok in mine) / len(mine)
            by_hand += len(mine) / len(points) * abs(acc - conf)
    assert cal["ece"] == pytest.approx(by_hand)
    assert result["ece"] == pytest.approx(by_hand)
    assert "converged" in END_STATES


def test_perfectly_calibrated_findings_have_zero_ece() -> None:
    runs = [_record("x", [("x", 0.75)]) for _ in range(3)] + [_record("y", [("x", 0.75)])]
    assert reliability(runs)["ece"] == pytest.approx(0.0)


def test_run_py_quick_json_on_a_small_subset(tmp_path: Path) -> None:
    from zoo import run

    out = tmp_path / "zoo.json"
    run.main(
        [
            "--split",
            "test",
            "--quick",
            "--programs",
            "logistic_iris_sgd",
            "--operators",
            "lr_x10k,lr_div10k",
            "--max-steps",
            "60",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    for key in (
        "split",
        "quick",
        "top1",
        "top3",
        "healthy_false_rate",
        "ece",
        "seeded_runs",
        "healthy_runs",
        "not_hurt_runs",
        "per_cause",
        "per_program",
        "reliability",
        "not_hurt",
        "not_in_zoo",
        "errors",
        "runs",
        "seconds",
    ):
        assert key in result, key
    assert result["split"] == "test" and result["quick"] is True
    assert result["not_in_zoo"] == NOT_IN_ZOO and result["errors"] == {}
    runs = result["runs"]
    assert {r["operator"] for r in runs} == {None, "lr_x10k", "lr_div10k"}
    for r in runs:
        assert r["program"] == "logistic_iris_sgd" and r["max_steps"] == 60
        if r["operator"] is not None:
            assert isinstance(r["hurt"], bool) and r["severity"] > 0
            assert set(r["hurt_check"]) >= {"hurt", "why", "reference_val", "mutant_val"}
    assert len(result["reliability"]["bins"]) == 10
    assert set(result["per_program"]) == {"logistic_iris_sgd"}


def test_calibration_fit_is_the_shrunk_precision_over_the_mean_and_train_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from unstuck.diagnose import calibration
    from zoo.calibrate import fit

    monkeypatch.setattr(calibration, "SCALES", {"lr_too_high": 0.5})
    runs = [
        # lr_too_high ran under scale 0.5: recorded 0.4 is a raw 0.8; right once, wrong once
        {
            "split": "train",
            "scored": True,
            "expected": "lr_too_high",
            "ranking": [["lr_too_high", 0.4]],
        },
        {
            "split": "train",
            "scored": True,
            "expected": "dead_relu",
            "ranking": [["lr_too_high", 0.4], ["dead_relu", 0.9]],
        },
        # a healthy run's end state is left out; its other findings are wrong
        {
            "split": "train",
            "scored": True,
            "expected": None,
            "ranking": [["converged", 0.4], ["dead_relu", 0.6]],
        },
        {
            "split": "train",
            "scored": False,
            "expected": "dead_relu",
            "ranking": [["batch_size", 0.9]],
        },
    ]
    table = fit(runs)
    assert set(table) == {"lr_too_high", "dead_relu"}  # not-scored runs and end states left out
    high = table["lr_too_high"]
    assert high["mean_raw"] == pytest.approx(0.8) and high["right"] == 1 and high["findings"] == 2
    assert high["shrunk_precision"] == pytest.approx((1 + 4 * 0.8) / (2 + 4), abs=1e-4)
    assert high["scale"] == pytest.approx(high["shrunk_precision"] / 0.8, abs=1e-3)
    with pytest.raises(SystemExit, match="train only"):
        fit([{**runs[0], "split": "test", "key": "p/op@0"}])
