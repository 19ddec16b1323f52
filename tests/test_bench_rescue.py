"""The rescue benchmark's harness: JSON schema and semantics, scoring, the LRFOnPlateau baseline."""

from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import rescue
import rescue_tasks

TASK = "deep_linear_small_init"  # the cheapest task: a two-layer linear net


def test_harness_json_schema_and_semantics(tmp_path: Path) -> None:
    out = tmp_path / "rescue.json"
    budget = 60
    rescue.main(
        [
            "--tasks",
            TASK,
            "--strategies",
            "constant,lrf_on_plateau,unstuck",
            "--seeds",
            "1",
            "--budget",
            str(budget),
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())  # strict JSON: NaN would not parse in other readers
    assert set(result) >= {"tasks", "summary"}
    cells = result["tasks"][TASK]
    assert set(cells) == {"constant", "lrf_on_plateau", "unstuck"}
    every = rescue_tasks.TASKS[TASK].eval_every
    for cell in cells.values():
        assert {"steps_to_target", "final_loss", "wall_s", "reached", "seeds"} <= set(cell)
        steps = cell["steps_to_target"]
        # the target (2e-4) is out of reach in 60 steps from a 1e-4 init: not reached = 2 × budget
        assert cell["reached"] == 0
        assert steps == rescue.NOT_REACHED * budget
        assert steps % every == 0
        assert cell["final_loss"] > rescue_tasks.TASKS[TASK].target
        assert cell["wall_s"] > 0
    assert "worse_than_first_action" in cells["unstuck"]
    summary = result["summary"]
    for key in ("geomean_ratio_vs", "best_baseline_share", "healthy_within_2pct"):
        assert key in summary
    assert summary["worse_than_first_action"] >= 0
    # every strategy took 2 × budget: the ratios are all 1 and unstuck ties the best baseline
    assert summary["geomean_ratio_vs"] == {"constant": 1.0, "lrf_on_plateau": 1.0}
    assert summary["best_baseline_share"] == 1.0
    assert summary["best_baseline_strict_share"] == 0.0
    assert summary["plateau_tasks_all_unreached"] == [TASK]


def test_reached_is_the_first_evaluation_at_or_below_target() -> None:
    task = replace(rescue_tasks.TASKS[TASK], target=1.0)  # reached once the first mode drops
    r = rescue.run(task, "constant", 0, budget=40 * task.eval_every, curve=True)
    first = next(s for s, v in r["curve"] if v <= task.target)
    assert r["reached"] and r["steps_to_target"] == first
    assert r["steps_to_target"] % task.eval_every == 0
    assert r["final_loss"] == r["curve"][-1][1]


def test_a_stopped_run_carries_its_last_evaluation_forward() -> None:
    class StopsAt50(rescue.Constant):
        @property
        def should_stop(self) -> bool:
            return self.stepped >= 50

        def after_step(self, step: int, loss: torch.Tensor, batch: Any) -> None:
            super().after_step(step, loss, batch)
            self.stepped = step + 1

    task = replace(rescue_tasks.TASKS[TASK], target=1e-12)
    r = rescue.run(task, StopsAt50, 0, budget=200, curve=True)
    assert r["stopped_at"] == 50
    steps = [s for s, _ in r["curve"]]
    assert steps == list(range(task.eval_every, 201, task.eval_every))  # the full cadence
    after = [v for s, v in r["curve"] if s > 50]
    assert after and all(v == r["final_loss"] for v in after)
    assert not r["reached"] and r["steps_to_target"] == rescue.NOT_REACHED * 200


def _cell(steps: float, final: float = 1.0) -> dict[str, Any]:
    return {
        "steps_to_target": steps,
        "final_loss": final,
        "seeds": 3,
        "reached": 3,
        "budget": 1000,
        "worse_than_first_action": 0,
        "per_seed": {"first_action_step": [None, 10, None]},
    }


def test_summary_geomean_share_and_healthy_check() -> None:
    tasks = {
        "a": {"unstuck": _cell(100), "constant": _cell(400), "cosine_wr": _cell(50)},
        "b": {"unstuck": _cell(300), "constant": _cell(300), "cosine_wr": _cell(600)},
        "h": {"unstuck": _cell(10, 1.01), "constant": _cell(10, 1.0), "cosine_wr": _cell(10)},
        "h2": {"unstuck": _cell(10, 1.05), "constant": _cell(10, 1.0), "cosine_wr": _cell(10)},
    }
    kinds = {"a": "plateau", "b": "plateau", "h": "healthy", "h2": "healthy"}
    s = rescue.summarize(tasks, kinds)
    assert s["geomean_ratio_vs"]["constant"] == pytest.approx(math.sqrt(100 / 400 * 300 / 300))
    assert s["geomean_ratio_vs"]["cosine_wr"] == pytest.approx(math.sqrt(100 / 50 * 300 / 600))
    # a: the best baseline (50) beats unstuck (100); b: unstuck ties constant (300)
    assert s["best_baseline_share"] == pytest.approx(0.5)
    assert s["best_baseline_strict_share"] == 0.0
    assert s["plateau_tasks_all_unreached"] == []
    tasks["b"] = {k: _cell(2000) for k in tasks["b"]}  # 2 × budget everywhere: a tie
    assert rescue.summarize(tasks, kinds)["plateau_tasks_all_unreached"] == ["b"]
    assert s["healthy_within_2pct"] == {"h": True, "h2": False}
    # cosine_wr is told the budget (T_0 = budget // 8), constant is not
    assert s["geomean_ratio_vs_budget_aware"] == {"cosine_wr": s["geomean_ratio_vs"]["cosine_wr"]}
    assert s["geomean_ratio_vs_budget_agnostic"] == {"constant": s["geomean_ratio_vs"]["constant"]}
    assert s["plateau_tasks"] == ["a", "b"]
    assert s["unstuck_runs_with_action"] == 4
    assert rescue.geomean([2.0, 8.0]) == pytest.approx(4.0)


def test_round_up_to_two_significant_figures() -> None:
    assert rescue.round_up(0.01234) == 0.013
    assert rescue.round_up(0.012) == 0.012
    assert rescue.round_up(0.0001929) == 0.0002
    assert rescue.round_up(2.301) == 2.4
    assert rescue.round_up(123.0) == 130.0


# ----------------------------------------------------------------------- LRFOnPlateau


def _states(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()["state"]),
        "groups": [
            {k: v for k, v in g.items() if k not in ("lr", "params")}
            for g in optimizer.param_groups
        ],
    }


def _assert_bitwise(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_bitwise(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_bitwise(x, y)
    else:
        assert a == b


def test_lrf_on_plateau_restores_model_and_optimizer_bitwise() -> None:
    """After the sweep, before the picked LR's first step, everything is as before the sweep."""
    seen: dict[str, Any] = {}

    class Probe(rescue.LRFOnPlateau):
        SWEEP_AT = 7  # start a sweep after this step, plateau or not

        def after_step(self, step: int, loss: torch.Tensor, batch: Any) -> None:
            super().after_step(step, loss, batch)
            if step + 1 == self.SWEEP_AT:
                seen["before"] = _states(self.model, self.optimizer)
                seen["rng"] = torch.get_rng_state()
                seen["lr"] = self.optimizer.param_groups[0]["lr"]
                self.start_sweep(step + 1)

        def finish_sweep(self, step: int) -> None:
            super().finish_sweep(step)
            seen["after"] = _states(self.model, self.optimizer)
            seen["rng_after"] = torch.get_rng_state()
            seen["new_lr"] = self.optimizer.param_groups[0]["lr"]

    # AdamW: the optimizer state (moments, step count) is what a weights-only restore misses
    task = rescue_tasks.TASKS["healthy_regression_adamw"]
    r = rescue.run(task, Probe, 0, budget=Probe.SWEEP_AT + Probe.SWEEP_STEPS + 13)
    assert len(r["sweeps"]) == 1
    sweep = r["sweeps"][0]
    assert sweep["start"] == Probe.SWEEP_AT
    # the sweep ran past the skipped points before it stopped (divergence) or ended
    assert Probe.SKIP_START + Probe.SKIP_END < sweep["points"] <= Probe.SWEEP_STEPS
    assert sweep["end"] - sweep["start"] in (sweep["points"], sweep["points"] + 1)
    assert seen["before"]["optimizer"], "Adam has state after 7 steps"
    _assert_bitwise(seen["before"], seen["after"])
    assert torch.equal(seen["rng"], seen["rng_after"])
    lo, hi = seen["lr"] * Probe.SWEEP_LOW, seen["lr"] * Probe.SWEEP_HIGH
    assert lo * (1 - 1e-9) <= seen["new_lr"] <= hi * (1 + 1e-9)
    assert seen["new_lr"] == pytest.approx(seen["lr"] * sweep["factor"])


def test_lrf_on_plateau_trigger_is_torch_rlrop_patience() -> None:
    model = torch.nn.Linear(2, 1)
    task = rescue_tasks.TASKS[TASK]
    strat = rescue.LRFOnPlateau(task, model, budget=100, steps_per_epoch=1)
    flat = torch.tensor(1.0)
    batch = (torch.zeros(1, 2), torch.zeros(1, 1))
    strat.after_step(0, flat, batch)  # the first epoch sets the best
    for step in range(1, 1 + strat.PATIENCE):
        strat.after_step(step, flat, batch)
        assert strat.sweep is None  # bad epochs 1..10: not more than the patience yet
    strat.after_step(1 + strat.PATIENCE, flat, batch)
    assert strat.sweep is not None  # the 11th bad epoch


def test_lrf_sweep_stops_on_divergence_and_nan() -> None:
    model = torch.nn.Linear(2, 1)
    batch = (torch.zeros(1, 2), torch.zeros(1, 1))
    for bad in (200.0, math.nan):  # EMA after 21 points: (0.98·0.33 + 0.02·200)/0.35 > 4
        strat = rescue.LRFOnPlateau(rescue_tasks.TASKS[TASK], model, budget=200, steps_per_epoch=5)
        strat.start_sweep(0)
        for step in range(20):
            strat.before_step(step)
            strat.after_step(step, torch.tensor(1.0), batch)
        assert strat.sweep is not None and not strat.sweeps  # a flat loss: still sweeping
        strat.after_step(20, torch.tensor(bad), batch)  # EMA jumps above 4× its minimum / NaN
        assert strat.sweep is None and strat.sweeps[0]["points"] == 20
        assert strat.sweeps[0]["end"] == 21


def test_lrf_pick_steepest_drop_with_skips() -> None:
    factors = [float(i) for i in range(30)]
    ema = [10.0] * 30
    ema[3] = 0.0  # a huge drop inside the first 10 points: skipped
    ema[27] = -5.0  # inside the last 5: skipped
    ema[20] = 9.0  # the steepest drop in the window: point 20 (and a rise at 21)
    assert rescue.LRFOnPlateau.pick(factors, ema) == 20.0
    # a sweep stopped after 6 points: no window left after the skips, all points count
    assert rescue.LRFOnPlateau.pick([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [5, 4, 1, 0.9, 0.8, 2]) == 3.0
    assert rescue.LRFOnPlateau.pick([1.0], [3.0]) == 1.0  # one point: keep the LR


@pytest.mark.parametrize(
    ("strategy", "module", "cls"),
    [("prodigy", "prodigyopt", "Prodigy"), ("dog", "dog", "DoG"), ("mechanic", None, None)],
)
def test_parameter_free_baselines_train_with_their_own_optimizer(
    strategy: str, module: str | None, cls: str | None
) -> None:
    pytest.importorskip(module or "mechanic_pytorch")
    task = rescue_tasks.TASKS[TASK]
    torch.manual_seed(0)
    model = task.model()
    strat = rescue.STRATEGY_CLASSES[strategy](task, model, 100, 10)
    if cls is not None:
        assert type(strat.optimizer).__name__ == cls
    else:  # Mechanic wraps the task's own optimizer class, at the task's own settings
        own = task.optimizer([torch.nn.Parameter(torch.zeros(1))], task.lr)
        assert isinstance(strat.optimizer, type(own))
        assert strat.optimizer.param_groups[0]["lr"] == task.lr
    r = rescue.run(task, strategy, 0, budget=4 * task.eval_every, curve=True)
    values = [v for _, v in r["curve"]]
    assert all(math.isfinite(v) for v in values)
    if strategy == "mechanic":  # each of its 6 scales starts at 1e-8 and is learned: they grew
        x = torch.randn(16, *next(model.parameters()).shape[1:])
        for _ in range(20):
            strat.optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            strat.optimizer.step()
        assert float(strat.optimizer.state["_mechanic"]["s"].sum()) > 2 * 6 * 1e-8  # 6 betas
    else:
        assert values[-1] < values[0]


def test_dog_is_evaluated_at_its_average_and_trains_on_its_iterate() -> None:
    pytest.importorskip("dog")
    task = rescue_tasks.TASKS[TASK]
    torch.manual_seed(0)
    model = task.model()
    strat = rescue.STRATEGY_CLASSES["dog"](task, model, 100, 10)
    x = torch.randn(16, *next(model.parameters()).shape[1:])
    for step in range(5):
        strat.train_mode()
        loss = model(x).pow(2).mean()
        strat.optimizer.zero_grad()
        loss.backward()
        strat.optimizer.step()
        strat.after_step(step, loss, (x,))
    iterate = {k: v.clone() for k, v in model.state_dict().items()}
    average = strat.averager.averaged_model.state_dict()
    strat.eval_mode()
    assert all(torch.equal(model.state_dict()[k], average[k]) for k in iterate)
    assert any(not torch.equal(iterate[k], average[k]) for k in iterate)  # they differ
    strat.train_mode()
    assert all(torch.equal(model.state_dict()[k], iterate[k]) for k in iterate)


# ----------------------------------------------------------------------------- spike tasks


def _spike_cell(finals: list[float], actions: list[list[dict[str, Any]]] | None = None) -> Any:
    cell = _cell(1000, statistics.median(finals))
    cell["per_seed"] = {"seed": [0, 1, 2], "final_loss": finals}
    if actions is not None:
        cell["per_seed"]["actions"] = actions
    return cell


def test_spike_summary_compares_each_seed_with_its_own_reference() -> None:
    reference = _spike_cell([1.0, 2.0, 3.0])
    rewind = {"name": "rewind", "outcome": "kept", "step": 549, "restored_step": 449}
    cells = {
        # seed 1 ends at 2.1 against its own reference's 2.0: worse by more than 2 %
        "constant": _spike_cell([1.01, 2.1, 2.0]),
        "unstuck": _spike_cell(
            [1.0, 2.02, math.nan],  # a NaN final is never "no worse"
            [[rewind], [{**rewind, "restored_step": 500}], [{**rewind, "outcome": "rolled_back"}]],
        ),
    }
    s = rescue.spike_summary(cells, reference, tolerance=0.02, start=480)
    assert s["no_spike_final"] == 2.0 and s["seeds"] == 3
    assert s["no_worse_seeds"] == {"constant": 2, "unstuck": 2}
    assert s["no_worse"] == {"constant": False, "unstuck": False}
    # seed 0 only: seed 1 rewound to a state inside the spike, seed 2's rewind was rolled back
    assert s["unstuck_rewound_before_spike"] == 1
    assert "spike task" in rescue.spike_table({"t": s}, ["constant", "unstuck"])


def test_a_spike_task_needs_a_spike_and_the_spike_is_by_step() -> None:
    task = rescue_tasks.TASKS["gpt_lr_spike"]
    assert task.spike is not None and task.kind == "spike"
    assert rescue_tasks.reference_task(task).spike is None  # the bar: the same run, no spike
    with pytest.raises(ValueError, match="spike"):
        replace(task, spike=None)
    with pytest.raises(ValueError, match="spike"):
        replace(rescue_tasks.TASKS[TASK], spike=task.spike)
    spike = rescue_tasks.Spike(10, 12, 50.0)
    assert [spike.factor(s) for s in (9, 10, 11, 12)] == [1.0, 50.0, 50.0, 1.0]


def test_the_tasks_schedule_warms_up_then_follows_a_cosine_to_zero() -> None:
    task = replace(rescue_tasks.TASKS["gpt_lr_spike"], warmup=10)
    factors = [rescue.schedule_factor(task, 110, s) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0  # linear ramp over 10 steps
    assert factors[60] == pytest.approx(0.5)  # half way through the decay
    assert factors[109] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    flat = rescue_tasks.TASKS["transformer_no_warmup"]  # warm-up only, in its reference
    ref = rescue_tasks.reference_task(flat)
    assert [rescue.schedule_factor(ref, 2000, s) for s in (0, 199, 200, 1999)] == [
        1 / 200,
        1.0,
        1.0,
        1.0,
    ]
