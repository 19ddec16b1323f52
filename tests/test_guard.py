"""``unstuck.Guard`` end to end: the API, recorded signals, bad inputs, resume and policies."""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import unstuck
from conftest import tiny_mlp
from unstuck.record import read_events, read_meta, read_metrics, read_runs
from unstuck.rescue import all_actions
from unstuck.types import (
    ACTION_OUTCOMES,
    DETECTOR_STATES,
    NOTABLE_STATES,
    ActionRecord,
    Finding,
    Plateau,
)

SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"
F = torch.nn.functional


# --------------------------------------------------------------------------- helpers


def _batch(step: int, n: int = 32, n_in: int = 4, n_out: int = 3):
    """A batch that depends on the step index only (never on the global RNG)."""
    g = torch.Generator().manual_seed(10_000 + step)
    x = torch.randn(n, n_in, generator=g)
    w = torch.linspace(-1.0, 1.0, n_in * n_out).reshape(n_in, n_out)
    return x, x @ w + 0.1 * torch.randn(n, n_out, generator=g)


def _train(model, optimizer, guard, start: int, stop: int, states: dict | None = None) -> None:
    for step in range(start, stop):
        x, y = _batch(step)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if guard is not None:
            guard.step(loss)
            if states is not None and guard.steps % guard.flush_every == 0:
                states[guard.steps] = guard.state


def _stuck(seed: int = 0):
    """A run that barely moves: SGD at lr=1e-6 on a learnable regression."""
    torch.manual_seed(seed)
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.5)
    return model, optimizer


STUCK_STEPS = 1200
RESCUE_KW = {"flush_every": 25, "horizon": 100, "cooldown": 50}


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _no_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    return not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


# --------------------------------------------------------------------------- the API


def test_context_manager_closes_and_close_is_idempotent(tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with unstuck.Guard(model, optimizer, run_dir=tmp_path, flush_every=50) as guard:
        assert isinstance(guard, unstuck.Guard)
        _train(model, optimizer, guard, 0, 7)  # a partial window: close must flush it
        assert not _no_step_hooks(optimizer)
    assert _no_step_hooks(optimizer)  # hooks released: the optimizer is the user's again
    assert guard.steps == 7
    guard.close()  # a second close is harmless
    runs = read_runs(tmp_path)
    assert [r["status"] for r in runs] == ["closed"]
    assert read_meta(tmp_path)["steps"] == 7
    assert read_meta(tmp_path)["policy"] == "observe"
    assert read_metrics(tmp_path, names=["loss"])["loss"][0] == list(range(7))
    assert guard.run_dir == tmp_path


def test_context_manager_closes_on_exception(tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def run() -> None:
        with unstuck.Guard(model, optimizer, run_dir=tmp_path) as guard:
            _train(model, optimizer, guard, 0, 3)
            raise KeyError("user code failed")

    with pytest.raises(KeyError):
        run()
    assert _no_step_hooks(optimizer)
    assert read_runs(tmp_path)[0]["status"] == "closed"
    assert read_metrics(tmp_path, names=["loss"])["loss"][0] == [0, 1, 2]


@pytest.mark.parametrize("call", ["step", "validate", "flush"])
def test_calls_after_close_are_clear_errors(call: str) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer)
    _train(model, optimizer, guard, 0, 2)
    guard.close()
    args = () if call == "flush" else (torch.tensor(1.0),)
    with pytest.raises(RuntimeError, match=r"after close\(\).*new Guard"):
        getattr(guard, call)(*args)
    assert guard.steps == 2


@pytest.mark.parametrize("value", ["0.3x", None, [0.1, 0.2]])
def test_a_validation_loss_that_is_no_number_is_a_one_line_error(value: object) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer)
    with pytest.raises(TypeError, match=r"^Guard.validate: pass the validation loss as a number"):
        guard.validate(value)  # type: ignore[arg-type]
    guard.validate(0.5)  # the Guard is still usable
    assert guard.steps == 0
    guard.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "not a module"}, TypeError, "model must be a Module"),
        ({"optimizer": [1, 2]}, TypeError, "optimizer must be a Optimizer"),
        ({"policy": "panic"}, ValueError, "policy must be 'observe', 'rescue'"),
        ({"flush_every": 0}, ValueError, "flush_every must be a positive int"),
        ({"dataset_size": -3}, ValueError, "dataset_size must be a positive int"),
        ({"grad_norm_every": 0}, ValueError, "grad_norm_every must be >= 1"),
        ({"update_ratio_every": 0}, ValueError, "update_ratio_every must be >= 1"),
        ({"horizon": 0}, ValueError, "horizon must be an int >= 1"),
        ({"cooldown": -1}, ValueError, "cooldown must be an int >= 0"),
        ({"detector_options": {"no_such_option": 1}}, TypeError, "no_such_option"),
        ({"probe_fn": 3}, TypeError, "probe_fn must be callable"),
        ({"loss_fn": "mse"}, TypeError, "loss_fn must be callable"),
        ({"curvature_hvps": 1}, ValueError, "curvature_hvps must be an int >= 2"),
        ({"activation_every": 0}, ValueError, "activation_every"),
        ({"optimizer_state_every": 0}, ValueError, "optimizer_state_every"),
        ({"precision_every": 0}, ValueError, "precision_every"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match, tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    args = {"model": model, "optimizer": optimizer, "run_dir": tmp_path / "run", **kwargs}
    with pytest.raises(error, match=match):
        unstuck.Guard(**args)
    assert _no_step_hooks(optimizer)  # nothing half-installed
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not (tmp_path / "run").exists()  # and no store left behind


# --------------------------------------------------------------------------- signals


def test_recorded_signals_match_a_hand_computed_reference(tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.05},
            {"params": model[2].parameters(), "lr": 0.02},
        ],
        momentum=0.9,
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    names = [n for n, _ in model.named_parameters()]
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    guard = unstuck.Guard(
        model,
        optimizer,
        scheduler,
        run_dir=tmp_path,
        flush_every=10,
        grad_norm_every=1,
        update_ratio_every=4,
        distance_every=10,
        dataset_size=64,
    )
    losses, norms, per_tensor, ratios, lrs, distances = [], [], [], {}, [], {}
    for step in range(30):
        x, y = _batch(step)
        per_sample = F.mse_loss(model(x), y, reduction="none").mean(dim=1)
        optimizer.zero_grad()
        per_sample.mean().backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        per_tensor.append([float(g.norm()) for g in grads])
        norms.append(float(torch.cat([g.flatten() for g in grads]).norm()))
        lrs.append([g["lr"] for g in optimizer.param_groups])
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        optimizer.step()
        scheduler.step()
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        if step % 4 == 0:
            ratios[step] = float((after - before).norm() / before.norm())
        ids = torch.arange(32) + 32 * (step % 2)
        guard.step(per_sample, ids=ids)
        losses.append(float(per_sample.detach().mean()))
        if step % 10 == 0 or (step + 1) % 10 == 0:  # sampled every 10th step, and at flushes
            distances[step] = float((after - start).norm())
    guard.close()

    m = read_metrics(tmp_path)
    assert m["loss"][0] == list(range(30))
    np.testing.assert_allclose(m["loss"][1], losses, rtol=1e-6)
    assert m["grad_norm"][0] == list(range(30))
    np.testing.assert_allclose(m["grad_norm"][1], norms, rtol=1e-5)
    assert m["update_ratio"][0] == sorted(ratios)
    np.testing.assert_allclose(m["update_ratio"][1], [ratios[s] for s in sorted(ratios)], rtol=1e-4)
    assert m["param_distance"][0] == sorted(distances)
    np.testing.assert_allclose(
        m["param_distance"][1], [distances[s] for s in sorted(distances)], rtol=1e-5
    )
    # per-tensor grad norms: the mean over each flush window, named by the model's names
    windows = np.asarray(per_tensor).reshape(3, 10, -1).mean(axis=1)
    for j, name in enumerate(names):
        steps, values = m[f"grad_norm/{name}"]
        assert steps == [9, 19, 29]
        np.testing.assert_allclose(values, windows[:, j], rtol=1e-5)
    # the LR of each group is recorded where the schedule changes it
    for g in range(2):
        steps, values = m[f"lr/{g}"]
        changes = [s for s in range(30) if s == 0 or lrs[s][g] != lrs[s - 1][g]]
        assert set(changes) <= set(steps)
        lookup = dict(zip(steps, values, strict=True))
        assert all(lookup[s] == pytest.approx(lrs[s][g]) for s in changes)
    assert m["lr_multiplier"][1] == [1.0] * len(m["lr_multiplier"][1])
    assert m["samples_seen"][1][-1] == 30 * 32
    assert m["nonfinite_loss"][1] == [0.0, 0.0, 0.0]


def test_gradient_accumulation_records_the_accumulated_gradient(tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    micro = 4
    guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, flush_every=5, grad_norm_every=1)
    expected_norms, expected_losses = [], []
    for step in range(10):
        optimizer.zero_grad()
        total = torch.zeros(())
        for k in range(micro):
            x, y = _batch(step * micro + k, n=8)
            loss = F.mse_loss(model(x), y) / micro
            loss.backward()
            total = total + loss.detach()
        expected_norms.append(
            float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
        )
        optimizer.step()
        guard.step(total)  # one guard.step per optimizer step
        expected_losses.append(float(total))
    assert guard.steps == 10
    guard.close()
    m = read_metrics(tmp_path)
    assert m["grad_norm"][0] == list(range(10))  # one row per optimizer step, not per micro-batch
    np.testing.assert_allclose(m["grad_norm"][1], expected_norms, rtol=1e-5)
    # the norm of the last micro-batch's gradient alone would differ: the check has teeth
    assert not np.allclose(np.asarray(expected_norms) / micro, m["grad_norm"][1], rtol=1e-3)
    assert m["loss"][0] == list(range(10))
    np.testing.assert_allclose(m["loss"][1], expected_losses, rtol=1e-6)
    assert read_meta(tmp_path)["steps"] == 10


def test_parameters_without_gradients_do_not_break(tmp_path: pathlib.Path) -> None:
    class PartlyUsed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = torch.nn.Linear(4, 3)
            self.unused = torch.nn.Linear(4, 3)  # in the optimizer, never in the graph

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = PartlyUsed()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    unused_before = _params(model.unused)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these parameters are in the optimizer: no warning
        guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, flush_every=10)
    _train(model, optimizer, guard, 0, 30)
    guard.close()
    assert all(p.grad is None for p in model.unused.parameters())
    assert all(torch.equal(a, b) for a, b in zip(unused_before, _params(model.unused), strict=True))
    # Not an error, but a finding: tensors the optimizer holds that the graph never reaches.
    found = [f for f in guard.findings if f.cause == "frozen_parameters"]
    assert [f.evidence["reading"] for f in found] == ["no_gradient"]
    assert found[0].evidence["parameters"] == ["unused.weight", "unused.bias"]
    m = read_metrics(tmp_path)
    assert m["grad_norm/unused.weight"][1] == [0.0, 0.0, 0.0]
    assert all(v > 0 for v in m["grad_norm/used.weight"][1])
    assert all(math.isfinite(v) for v in m["grad_norm"][1])


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("policy", ["observe", "rescue"])
def test_nonfinite_loss_is_recorded_and_found_never_raised(
    policy: str, tmp_path: pathlib.Path
) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer, policy=policy, run_dir=tmp_path, flush_every=10)
    bad = {13: float("nan"), 17: float("inf")}
    for step in range(30):
        x, y = _batch(step)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(torch.tensor(bad[step]) if step in bad else loss)
    guard.close()
    found = [f for f in guard.findings if f.cause == "nonfinite"]
    assert len(found) == 1
    assert found[0].step == 19  # the flush whose window held the bad values
    assert found[0].evidence["nonfinite_losses_in_window"] == 2
    steps, values = read_metrics(tmp_path, names=["loss"])["loss"]
    assert steps == list(range(30))
    assert math.isnan(values[13])
    assert values[17] == math.inf
    assert all(math.isfinite(v) for i, v in enumerate(values) if i not in bad)
    events = read_events(tmp_path, kind="finding")
    assert "nonfinite" in [e["payload"]["cause"] for e in events]


def test_diverging_run_with_nonfinite_gradients_does_not_crash() -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e6)  # blows up within a few steps
    guard = unstuck.Guard(model, optimizer, flush_every=10)
    _train(model, optimizer, guard, 0, 20)
    guard.close()
    assert not all(torch.isfinite(p).all() for p in model.parameters())
    causes = {f.cause for f in guard.findings}
    assert "nonfinite" in causes


@pytest.mark.parametrize("shape", [(8,), (4, 2)])
def test_non_scalar_loss_without_ids_says_how_to_pass_per_sample_losses(shape) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer)
    with pytest.raises(ValueError, match=r"reduction='none'.*ids=") as info:
        guard.step(torch.ones(shape))
    assert str(tuple(shape)) in str(info.value)
    assert "\n" not in str(info.value)
    assert guard.steps == 0  # nothing was recorded
    guard.step(torch.ones(shape), ids=torch.arange(8))  # the fix the message names works
    with pytest.raises(ValueError, match="ids has 3 entries but the loss has 8"):
        guard.step(torch.ones(shape), ids=torch.arange(3))
    with pytest.raises(ValueError, match="targets has 2 entries"):
        guard.step(torch.ones(shape), ids=torch.arange(8), targets=torch.arange(2))
    with pytest.raises(TypeError, match="needs the loss as a tensor or a number"):
        guard.step("0.5")  # type: ignore[arg-type]
    guard.step(0.25)  # a float is fine
    guard.step(torch.ones(1, 1))  # so is a one-element tensor
    assert guard.steps == 3
    guard.close()


# The same numbers, in every form a loop may hold them in; each must be recorded as that value.
SAME_LOSSES = [
    (np.float32(0.3), float(np.float32(0.3))),
    (np.float64(0.25), 0.25),
    (np.int64(2), 2.0),
    (np.array(0.5), 0.5),
    (np.array(0.75, dtype=np.float32), 0.75),
    (torch.tensor(0.125), 0.125),
    (3, 3.0),
    (0.625, 0.625),
]


def test_step_and_validate_take_the_same_numbers_and_record_their_value(
    tmp_path: pathlib.Path,
) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, flush_every=100, console=False)
    for k, (value, _) in enumerate(SAME_LOSSES):
        optimizer.step()
        guard.step(value)
        guard.validate(value, step=k)
    guard.close()
    metrics = read_metrics(tmp_path, names=["loss", "val_loss"])
    expected = [v for _, v in SAME_LOSSES]
    assert metrics["loss"][1] == pytest.approx(expected, rel=1e-7)  # float32 on the device
    assert metrics["val_loss"] == (list(range(len(SAME_LOSSES))), expected)


@pytest.mark.parametrize(
    "value", ["0.5", b"0.5", True, np.bool_(False), torch.tensor(True), np.array(["0.5"])]
)
def test_text_and_booleans_are_refused_by_step_and_validate_in_one_line(value: object) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer, console=False)
    with pytest.raises(TypeError, match=r"^guard.step\(loss\) needs the loss as a tensor") as info:
        guard.step(value)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and "pass the loss tensor" in str(info.value)
    with pytest.raises(TypeError, match=r"^Guard.validate: pass the validation loss as a") as info:
        guard.validate(value)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and "float(val_loss)" in str(info.value)
    assert guard.steps == 0
    guard.close()


def test_a_float64_validation_loss_keeps_its_range(tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, console=False)
    guard.validate(np.float64(1e308), step=0)
    guard.validate(torch.tensor([1e308], dtype=torch.float64), step=1)  # no float32 cast: no inf
    guard.validate(torch.tensor([1.0, 2.0], dtype=torch.float16), step=2)
    guard.close()
    assert read_metrics(tmp_path, names=["val_loss"])["val_loss"][1] == [1e308, 1e308, 1.5]


def test_components_take_numpy_numbers_too(tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, console=False)
    optimizer.step()
    guard.step(0.5, components={"ce": np.float32(0.25), "reg": np.array(0.25)})
    with pytest.raises(TypeError, match="component 'ce' must be a tensor or a number, got str"):
        guard.step(0.5, components={"ce": "0.25"})
    guard.close()
    metrics = read_metrics(tmp_path, names=["loss_component/ce", "loss_component/reg"])
    assert metrics["loss_component/ce"][1] == [0.25]
    assert metrics["loss_component/reg"][1] == [0.25]


# --------------------------------------------------------------------------- silent misuse


def _unstuck_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "unstuck" and r.levelno == logging.WARNING
    ]


def test_a_loop_that_never_steps_the_optimizer_is_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    other = torch.optim.SGD(model.parameters(), lr=0.05)  # the loop steps this one instead
    guard = unstuck.Guard(model, optimizer, flush_every=10, console=False)
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        _train(model, other, guard, 0, 35)
        guard.close()
    warned = _unstuck_warnings(caplog)
    assert len(warned) == 1, warned  # once, not at every flush
    assert "no optimizer.step() seen in 10 guard.step calls" in warned[0]
    assert "on the optimizer the Guard was built with" in warned[0] and "\n" not in warned[0]


def test_a_stepping_loop_gets_no_such_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        guard = unstuck.Guard(model, optimizer, flush_every=10, console=False)
        _train(model, optimizer, guard, 0, 35)
        guard.close()
        # owned accumulation: the first flush comes before the first optimizer step
        guard = unstuck.Guard(
            model, optimizer, flush_every=10, accumulation_steps=16, console=False
        )
        for step in range(20):
            x, y = _batch(step)
            F.mse_loss(model(x), y).backward()
            if guard.should_step():
                optimizer.step()
                optimizer.zero_grad()
            guard.step(torch.tensor(1.0))
        guard.close()
    assert _unstuck_warnings(caplog) == []


def test_an_optimizer_of_another_model_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    model, copy = tiny_mlp(), tiny_mlp()
    optimizer = torch.optim.SGD(copy.parameters(), lr=0.05)  # built on the wrong model
    with caplog.at_level(logging.WARNING, logger="unstuck"), warnings.catch_warnings():
        warnings.simplefilter("error")  # the one clear warning replaces the list of names
        guard = unstuck.Guard(model, optimizer, console=False)
    warned = _unstuck_warnings(caplog)
    assert len(warned) == 1
    assert "steps none of the model's parameters" in warned[0]
    assert "Guard(model, torch.optim.Adam(model.parameters()))" in warned[0]
    guard.close()


def test_a_second_guard_on_an_open_guards_optimizer_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        first = unstuck.Guard(model, optimizer, console=False)
        assert _unstuck_warnings(caplog) == []
        second = unstuck.Guard(model, optimizer, console=False)  # a re-run notebook cell
        warned = _unstuck_warnings(caplog)
        assert len(warned) == 1 and "already has a Guard that was not closed" in warned[0]
        assert "call close() on the old Guard" in warned[0]
        first.close()
        second.close()
        caplog.clear()
        third = unstuck.Guard(model, optimizer, console=False)  # both closed: nothing to say
        assert _unstuck_warnings(caplog) == []
        del third  # dropped without close(): its hooks stay on the optimizer
        gc.collect()
        fourth = unstuck.Guard(model, optimizer, console=False)
        assert len(_unstuck_warnings(caplog)) == 1
        fourth.close()
    other = torch.optim.SGD(model.parameters(), lr=0.05)
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        caplog.clear()
        unstuck.Guard(model, other, console=False).close()  # another optimizer: no warning
    assert _unstuck_warnings(caplog) == []


# --------------------------------------------------------------------------- the summary


def test_close_prints_the_summary_on_the_console_and_console_false_prints_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for console in (True, False):
        model = tiny_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        with caplog.at_level(logging.INFO, logger="unstuck"):
            caplog.clear()
            guard = unstuck.Guard(model, optimizer, flush_every=10, console=console)
            _train(model, optimizer, guard, 0, 30)
            guard.close()
            guard.close()  # idempotent: no second summary
        lines = [r.getMessage() for r in caplog.records if r.name == "unstuck"]
        summaries = [ln for ln in lines if ln.startswith("summary")]
        if console:
            assert summaries == ["summary after 30 steps: no plateau; nothing to change"]
            assert guard.summary() == summaries
        else:
            assert summaries == []


def test_parameters_outside_the_optimizer_warn_and_become_a_finding(
    tmp_path: pathlib.Path,
) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.05)  # forgot model[0]
    with pytest.warns(UserWarning, match=r"2 parameter tensors .*: 0\.weight, 0\.bias") as rec:
        guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, flush_every=10)
    assert rec[0].filename == __file__  # points at the user's line, not into unstuck
    found = [f for f in guard.findings if f.cause == "frozen_parameters"]
    assert len(found) == 1
    assert found[0].evidence["parameters"] == ["0.weight", "0.bias"]
    assert found[0].confidence == 1.0
    _train(model, optimizer, guard, 0, 30)
    guard.close()
    assert [f.cause for f in guard.findings].count("frozen_parameters") == 1  # not repeated
    payloads = [e["payload"] for e in read_events(tmp_path, kind="finding")]
    assert [p["cause"] for p in payloads].count("frozen_parameters") == 1


def test_intentionally_frozen_parameters_are_not_reported() -> None:
    model = tiny_mlp()
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard = unstuck.Guard(model, optimizer, flush_every=10)
    _train(model, optimizer, guard, 0, 20)
    guard.close()
    assert "frozen_parameters" not in {f.cause for f in guard.findings}


def test_layers_frozen_at_their_random_init_are_reported_at_step_zero() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 3),
    )
    model[2].requires_grad_(False)  # a freeze copied from a fine-tuning recipe, no checkpoint
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    guard = unstuck.Guard(model, optimizer, flush_every=10, console=False)
    found = [f for f in guard.findings if f.cause == "frozen_parameters"]
    assert len(found) == 1 and found[0].step == 0
    assert found[0].evidence["reading"] == "untrained"
    assert found[0].evidence["parameters"] == ["2.weight"]
    guard.close()
    # The same layer holding trained (here: Gaussian) weights is a deliberate freeze.
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(64, 64) * 0.1)
    guard = unstuck.Guard(model, optimizer, flush_every=10, console=False)
    _train(model, optimizer, guard, 0, 20)
    guard.close()
    assert "frozen_parameters" not in {f.cause for f in guard.findings}


@pytest.mark.parametrize("fault", ["none", "lr_1e-6", "detached_layer"])
def test_a_run_of_30_steps_still_names_what_can_be_named(fault: str) -> None:
    # Shorter than the default cadences (update ratio every 32 steps) and than one flush: the
    # program sizes of issue 24's held-out faults. What 30 steps can tell is said at close.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6 if fault == "lr_1e-6" else 0.1)
    guard = unstuck.Guard(model, optimizer, console=False)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 8, generator=g), torch.randn(8, 4, generator=g)
    y = (x @ w).argmax(1)
    for _ in range(30):
        idx = torch.randint(0, 256, (32,), generator=g)
        hidden = model[1](model[0](x[idx]))
        if fault == "detached_layer":
            hidden = hidden.detach()
        loss = F.cross_entropy(model[2](hidden), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(loss)
    guard.close()
    found = {f.cause: f for f in guard.findings if f.confidence >= 0.5}
    if fault == "none":
        assert found == {}
    elif fault == "lr_1e-6":
        assert list(found) == ["lr_too_low"]
        assert found["lr_too_low"].evidence["reading"] == "short_run"
    else:
        assert list(found) == ["frozen_parameters"]
        assert found["frozen_parameters"].evidence["parameters"] == ["0.weight", "0.bias"]


def test_unwritable_run_dir_fails_at_construction_with_one_line(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for run_dir in (blocker / "run", blocker):
        with pytest.raises(ValueError, match="not writable") as info:
            unstuck.Guard(model, optimizer, run_dir=run_dir)
        message = str(info.value)
        assert "\n" not in message
        assert str(run_dir) in message
        assert "run_dir=None" in message
        assert _no_step_hooks(optimizer)  # it failed before touching the optimizer
    # the same optimizer still works with a fresh Guard
    guard = unstuck.Guard(model, optimizer, run_dir=tmp_path / "ok")
    _train(model, optimizer, guard, 0, 3)
    guard.close()
    assert read_metrics(tmp_path / "ok", names=["loss"])["loss"][0] == [0, 1, 2]


def test_run_dir_none_touches_no_disk(tmp_path: pathlib.Path, monkeypatch) -> None:
    import sqlite3

    monkeypatch.chdir(tmp_path)

    def no_sqlite(*args, **kwargs):
        raise AssertionError(f"sqlite3.connect{args} with run_dir=None")

    monkeypatch.setattr(sqlite3, "connect", no_sqlite)
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with unstuck.Guard(model, optimizer, policy="rescue", run_dir=None, flush_every=10) as guard:
        _train(model, optimizer, guard, 0, 60)
        guard.validate(0.5)
        guard.flush()
    assert guard.run_dir is None
    assert guard.steps == 60
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- what the user reads


def _check_documented_attributes(guard: unstuck.Guard) -> None:
    for p in guard.plateaus:
        assert isinstance(p, Plateau)
        assert p.series in ("train", "val")
        assert isinstance(p.start, int)
        assert p.end is None or p.end >= p.start
        assert p.is_open == (p.end is None)
        assert 0.0 <= p.confidence <= 1.0
        assert isinstance(p.kind, str)
    for f in guard.findings:
        assert isinstance(f, Finding)
        assert isinstance(f.cause, str)
        assert f.cause
        assert 0.0 <= f.confidence <= 1.0
        assert isinstance(f.evidence, dict)
        assert isinstance(f.summary, str)
        assert f.summary
        assert 0 <= f.step <= guard.steps
        assert f.series in ("train", "val")
        assert all(r.action for r in f.remedies)
    for a in guard.actions:
        assert isinstance(a, ActionRecord)
        assert a.name in all_actions() or a.name == "branch_trial"
        assert a.outcome in ACTION_OUTCOMES
        assert isinstance(a.reason, str)
        assert a.reason
        assert "label" in a.params
        assert 0 <= a.step <= guard.steps
        assert (a.verified_step is None) == (a.outcome in ("pending", "probing"))
    # they are copies: the user cannot corrupt the guard's own lists
    guard.findings.clear()
    guard.actions.clear()
    guard.plateaus.clear()
    assert guard.state in DETECTOR_STATES


def test_rescue_on_a_stuck_run_records_an_action(tmp_path: pathlib.Path) -> None:
    model, optimizer = _stuck()
    guard = unstuck.Guard(model, optimizer, policy="rescue", run_dir=tmp_path, **RESCUE_KW)
    _train(model, optimizer, guard, 0, STUCK_STEPS)
    guard.close()
    actions = guard.actions
    assert actions, f"no action on a stuck run: {guard!r}, findings {guard.findings}"
    assert {a.outcome for a in actions} <= {"kept", "rolled_back", "pending", "unverified"}
    _check_documented_attributes(guard)
    first = actions[0]
    assert first.name == "lr_scale"
    assert first.evidence["multiplier_before"] == 1.0
    # the multiplier now is what the last verified action left behind
    settled = [a for a in actions if a.outcome != "pending"] or actions
    last = settled[-1] if actions[-1].outcome != "pending" else actions[-1]
    expected = last.evidence[
        "multiplier_before" if last.outcome == "rolled_back" else "multiplier_after"
    ]
    assert guard.lr_multiplier == pytest.approx(expected)
    # and the user's own LR in the param group was never edited
    assert optimizer.param_groups[0]["lr"] == 1e-6
    logged = read_events(tmp_path, kind="action")
    assert [e["payload"]["name"] for e in logged] == [a.name for a in actions]
    assert [e["step"] for e in logged] == [a.step for a in actions]
    outcomes = read_events(tmp_path, kind="action_outcome")
    verified = [a for a in actions if a.outcome != "pending"]
    assert [e["payload"]["outcome"] for e in outcomes] == [a.outcome for a in verified]
    m = read_metrics(tmp_path, names=["lr_multiplier"])["lr_multiplier"]
    assert m[1][-1] == pytest.approx(guard.lr_multiplier)


def test_observe_never_changes_lr_or_parameters() -> None:
    def run(with_guard: bool):
        model, optimizer = _stuck()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 + 0.001 * s)
        guard = (
            unstuck.Guard(model, optimizer, scheduler, policy="observe", **RESCUE_KW)
            if with_guard
            else None
        )
        trajectory, lrs = [], []
        for step in range(STUCK_STEPS):
            x, y = _batch(step)
            loss = F.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
            if guard is not None:
                guard.step(loss)
            if step % 100 == 99:
                trajectory.append(_params(model))
        if guard is not None:
            guard.close()
        return trajectory, lrs, guard

    plain, plain_lrs, _ = run(False)
    observed, observed_lrs, guard = run(True)
    assert guard is not None
    assert guard.actions == []
    assert guard.lr_multiplier == 1.0
    assert observed_lrs == plain_lrs
    for a, b in zip(plain, observed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # bitwise


# --------------------------------------------------------------------------- resume


def _decide(split: int | None, tmp_path: pathlib.Path, total: int = STUCK_STEPS):
    model, optimizer = _stuck()
    guard = unstuck.Guard(model, optimizer, policy="rescue", **RESCUE_KW)
    states: dict[int, str] = {}
    if split is None:
        _train(model, optimizer, guard, 0, total, states)
    else:
        _train(model, optimizer, guard, 0, split, states)
        path = tmp_path / "ckpt.pt"
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "guard": guard.state_dict(),
            },
            path,
        )
        guard.close()
        del model, optimizer, guard
        ckpt = torch.load(path, weights_only=True)
        torch.manual_seed(123)  # a different init: everything must come from the checkpoint
        model = tiny_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.5)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        guard = unstuck.Guard(model, optimizer, policy="rescue", **RESCUE_KW)
        guard.load_state_dict(ckpt["guard"])
        assert guard.steps == split
        _train(model, optimizer, guard, split, total, states)
    guard.close()
    return guard, states, _params(model)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _decide(None, tmp_path_factory.mktemp("full"))


def _split_points(guard: unstuck.Guard) -> list[int]:
    """Split where an action is pending (the hard case) and where none is."""
    flush = RESCUE_KW["flush_every"]
    points = []
    for a in guard.actions:
        if a.verified_step is not None and a.verified_step - a.step > flush:
            points.append((a.step // flush + 2) * flush)  # mid-horizon
            break
    points.append((STUCK_STEPS // flush // 2) * flush)
    return points


@pytest.mark.parametrize("which", [0, 1])
def test_resumed_guard_decides_exactly_as_an_uninterrupted_one(
    which: int, uninterrupted, tmp_path: pathlib.Path
) -> None:
    full, full_states, full_params = uninterrupted
    points = _split_points(full)
    if which >= len(points):
        pytest.skip("the uninterrupted run had no action to split inside")
    split = points[which]
    resumed, states, params = _decide(split, tmp_path)
    assert resumed.steps == full.steps
    assert states == full_states
    assert resumed.findings == full.findings
    assert resumed.actions == full.actions
    assert resumed.plateaus == full.plateaus
    assert resumed.lr_multiplier == full.lr_multiplier
    assert all(torch.equal(a, b) for a, b in zip(params, full_params, strict=True))


def test_state_dict_is_primitives_and_tensors_only(tmp_path: pathlib.Path) -> None:
    model, optimizer = _stuck()
    guard = unstuck.Guard(model, optimizer, policy="rescue", dataset_size=64, **RESCUE_KW)
    for step in range(300):
        x, y = _batch(step)
        per_sample = F.mse_loss(model(x), y, reduction="none").mean(dim=1)
        optimizer.zero_grad()
        per_sample.mean().backward()
        optimizer.step()
        guard.step(per_sample, ids=torch.arange(32) + 32 * (step % 2))
        if step % 60 == 59:
            guard.validate(float(per_sample.detach().mean()))
    state = guard.state_dict()
    torch.save(state, tmp_path / "guard.pt")
    loaded = torch.load(tmp_path / "guard.pt", weights_only=True)
    other = unstuck.Guard(*_stuck(), policy="rescue", dataset_size=64, **RESCUE_KW)
    other.load_state_dict(loaded)
    assert other.steps == guard.steps
    assert other.findings == guard.findings
    assert other.actions == guard.actions
    assert other.plateaus == guard.plateaus
    assert other.state == guard.state
    with pytest.raises(ValueError, match="state version"):
        other.load_state_dict({**loaded, "version": 999})
    guard.close()
    other.close()


# --------------------------------------------------------------------------- console


def _expected_line_steps(run_dir: pathlib.Path) -> list[tuple[int, str]]:
    keys: set[tuple[int, str]] = set()
    for e in read_events(run_dir):
        p = e["payload"]
        notable = e["kind"] == "state" and (
            p["to"] in NOTABLE_STATES or p["from"] in NOTABLE_STATES
        )
        # a finding at step 0 was made at construction: it is a warning, not a console line
        if notable or (e["kind"] == "finding" and e["step"] > 0):
            keys.add((e["step"], p["series"]))
        elif e["kind"] in ("action", "action_outcome"):
            keys.add((e["step"], "train"))
    return sorted(keys)


def test_console_prints_one_line_per_event_and_nothing_else(
    caplog: pytest.LogCaptureFixture, tmp_path: pathlib.Path
) -> None:
    model, optimizer = _stuck()
    with caplog.at_level(logging.DEBUG, logger="unstuck"):
        caplog.clear()
        logging.getLogger("unstuck").setLevel(logging.INFO)  # the default the Guard keeps
        guard = unstuck.Guard(model, optimizer, policy="rescue", run_dir=tmp_path, **RESCUE_KW)
        _train(model, optimizer, guard, 0, STUCK_STEPS)
        guard.close()
    records = [r for r in caplog.records if r.name.startswith("unstuck")]
    assert all(r.levelno >= logging.INFO for r in records)
    lines = [r.getMessage() for r in records if r.levelno == logging.INFO]
    summary = lines[[ln.startswith("summary after") for ln in lines].index(True) :]
    lines = lines[: -len(summary)]  # the event lines, then close()'s summary
    assert summary == guard.summary()
    assert lines, "a rescued run must say something"
    expected = _expected_line_steps(tmp_path)
    assert len(lines) == len(expected)
    assert [int(re.match(r"step (\d+) \S", ln).group(1)) for ln in lines] == [
        s for s, _ in expected
    ]
    assert all("\n" not in ln for ln in lines)
    text = "\n".join(lines)
    for f in guard.findings:
        if f.step > 0:
            assert f"{f.cause} {f.confidence:.2f}" in text
    for a in guard.actions:
        assert str(a.params["label"]) in text


CONSOLE_SCRIPT = textwrap.dedent(
    """
    import torch, unstuck
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.5)
    guard = unstuck.Guard(model, opt, policy="rescue", flush_every=25, horizon=100, cooldown=50)
    for step in range(int(__import__("sys").argv[1])):
        g = torch.Generator().manual_seed(10_000 + step)
        x = torch.randn(32, 4, generator=g)
        w = torch.linspace(-1.0, 1.0, 12).reshape(4, 3)
        y = x @ w + 0.1 * torch.randn(32, 3, generator=g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        guard.step(loss)
    guard.close()
    print("actions", len(guard.actions))
    """
)


def test_default_console_output_is_only_event_lines() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, str(STUCK_STEPS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    n_actions = int(proc.stdout.split()[-1])
    assert n_actions > 0
    lines = proc.stderr.splitlines()
    assert lines
    at = [i for i, ln in enumerate(lines) if re.match(r"unstuck: summary after \d+ steps: ", ln)]
    assert len(at) == 1, proc.stderr  # one summary, at close, after the event lines
    events, summary = lines[: at[0]], lines[at[0] + 1 :]
    assert events and all(re.fullmatch(r"unstuck: step \d+ .+", ln) for ln in events), proc.stderr
    assert 1 <= len(summary) <= 8 and all(ln.startswith("unstuck:   ") for ln in summary)


def test_repr_and_properties_reflect_the_run() -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer, policy="rescue", console=False)
    _train(model, optimizer, guard, 0, 5)
    text = repr(guard)
    assert "policy='rescue'" in text
    assert "steps=5" in text
    assert guard.run_dir is None
    guard.close()


def test_findings_and_actions_round_trip_through_dicts() -> None:
    model, optimizer = _stuck()
    guard = unstuck.Guard(model, optimizer, policy="rescue", **RESCUE_KW)
    _train(model, optimizer, guard, 0, 400)
    guard.close()
    for f in guard.findings:
        assert Finding.from_dict(f.to_dict()) == f
    for a in guard.actions:
        assert ActionRecord.from_dict(a.to_dict()) == a
    for p in guard.plateaus:
        assert Plateau.from_dict(p.to_dict()) == p
    assert all(dataclasses.is_dataclass(x) for x in guard.findings + guard.actions)


def test_validation_loss_is_recorded_at_the_current_step(tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, flush_every=10)
    _train(model, optimizer, guard, 0, 12)
    guard.validate(torch.tensor([0.5, 1.5]))  # a tensor is averaged
    guard.validate(0.75, step=40)
    guard.close()
    steps, values = read_metrics(tmp_path, names=["val_loss"])["val_loss"]
    assert steps == [11, 40]
    assert values == [1.0, 0.75]


def test_a_converged_run_is_a_near_convergence_plateau_with_gradient_below_noise(
    tmp_path: pathlib.Path,
) -> None:
    # Linear regression with noisy targets: SGD reaches the noise floor within a few dozen
    # steps and then the gradient is pure minibatch noise. The Guard's grad_snr must say so
    # (below 1) and the plateau must be dated near_convergence, not early.
    torch.manual_seed(0)
    w_true = torch.randn(20, 1)
    model = torch.nn.Linear(20, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, console=False)
    for _ in range(1500):
        x = torch.randn(32, 20, generator=g)
        y = x @ w_true + 0.5 * torch.randn(32, 1, generator=g)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(loss)
    guard.close()
    snr = np.asarray(read_metrics(tmp_path, names=["grad_snr"])["grad_snr"][1])
    assert snr.size >= 20 and float(np.median(snr[-10:])) < 1.0
    assert guard.state == "plateau"
    assert [p.kind for p in guard.plateaus if p.series == "train"] == ["near_convergence"]
