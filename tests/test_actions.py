"""Each rescue action does what it says to a real optimizer, and reports when it cannot."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import regression_batch, tiny_mlp
from unstuck.rescue import Controls, LRMultiplier, get_action, restore_snapshot, take_snapshot
from unstuck.rescue.controls import AccumulationControl, ClipControl


def _step(model, optimizer, seed=0, scheduler=None):
    x, y = regression_batch(seed=seed)
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def _record_effective_lr(optimizer):
    """The LR the update uses: a pre-hook registered after the multiplier's sees the product."""
    seen = []
    handle = optimizer.register_step_pre_hook(
        lambda o, a, k: seen.append(float(o.param_groups[0]["lr"]))
    )
    return seen, handle


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _decay(s):
    """The user's LambdaLR: keeps running underneath unstuck's multiplier."""
    return 1.0 / (1.0 + 0.1 * s)


def _under_lambda_schedule(optimizer_cls, lr, old):
    """A tiny model whose optimizer runs ``_decay`` under a multiplier set to ``old``, and the
    list of effective LRs its steps use (with the hook handle to remove)."""
    model = tiny_mlp()
    optimizer = optimizer_cls(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _decay)
    multiplier = LRMultiplier(optimizer)
    multiplier.set(old)
    seen, handle = _record_effective_lr(optimizer)
    return model, optimizer, scheduler, multiplier, seen, handle


# -- warm_restart -----------------------------------------------------------------------------


def test_warm_restart_follows_peak_cosine_end_over_a_lambda_schedule():
    peak, end, length, old = 3.0, 0.3, 10, 2.0
    decay = _decay
    model, optimizer, scheduler, multiplier, seen, handle = _under_lambda_schedule(
        torch.optim.SGD, 0.1, old
    )
    action = get_action("warm_restart")
    params = {"peak": peak, "end": end, "length": length}
    assert action.duration(params) == length
    action.apply(Controls(model, optimizer, multiplier), params)
    for k in range(length + 4):
        user_lr = optimizer.param_groups[0]["lr"]
        assert user_lr == pytest.approx(0.1 * decay(k))  # between steps: the user's LR
        _step(model, optimizer, seed=k, scheduler=scheduler)
        cosine = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * k / (length - 1)))
        factor = cosine if k < length else end
        assert seen[-1] == pytest.approx(user_lr * old * factor), k
    assert seen[0] == pytest.approx(0.1 * old * peak)
    assert multiplier.shape is None and multiplier.value == pytest.approx(old * end)
    handle.remove()


def test_warm_restart_undo_midway_puts_the_multiplier_back():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    multiplier = LRMultiplier(optimizer)
    multiplier.set(2.0)
    controls = Controls(model, optimizer, multiplier)
    action = get_action("warm_restart")
    token = action.apply(controls, {"length": 20})
    for k in range(5):
        _step(model, optimizer, seed=k)
    action.undo(controls, token)
    assert multiplier.value == 2.0 and multiplier.shape is None
    assert multiplier.current() == 2.0


# -- warmup -----------------------------------------------------------------------------------


def test_warmup_ramps_linearly_over_the_users_schedule_and_ends_without_a_jump():
    length, old = 8, 0.5
    model, optimizer, scheduler, multiplier, seen, handle = _under_lambda_schedule(
        torch.optim.Adam, 0.01, old
    )
    action = get_action("warmup")
    token = action.apply(Controls(model, optimizer, multiplier), {"length": length})
    assert action.duration({"length": length}) == 0  # judged after one horizon, mid-ramp
    for k in range(length + 3):
        user_lr = optimizer.param_groups[0]["lr"]
        _step(model, optimizer, seed=k, scheduler=scheduler)
        ramp = (k + 1) / length if k < length else 1.0  # Goyal et al.: lr·(k+1)/N
        assert seen[-1] == pytest.approx(user_lr * old * ramp), k
    assert multiplier.shape is None and multiplier.value == old
    handle.remove()
    action.undo(Controls(model, optimizer, multiplier), token)
    assert multiplier.value == old and multiplier.shape is None


# -- cyclical_bump ----------------------------------------------------------------------------


def test_cyclical_bump_peaks_midway_and_returns_to_the_old_multiplier():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    multiplier = LRMultiplier(optimizer)
    multiplier.set(1.5)
    seen, handle = _record_effective_lr(optimizer)
    action = get_action("cyclical_bump")
    action.apply(Controls(model, optimizer, multiplier), {"peak": 4.0, "length": 9})
    for k in range(11):
        _step(model, optimizer, seed=k)
    assert seen[0] == pytest.approx(0.1 * 1.5)  # a triangle starts at the old LR
    assert seen[4] == pytest.approx(0.1 * 1.5 * 4.0)  # step 4 of 0..8 is the midpoint
    assert max(seen) == pytest.approx(seen[4])
    assert seen[8:] == pytest.approx([0.1 * 1.5] * 3)
    assert multiplier.shape is None and multiplier.current() == 1.5
    handle.remove()


# -- clip_adjust ------------------------------------------------------------------------------


def test_clip_adjust_needs_ownership_and_clamps():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    controls = Controls(model, optimizer, LRMultiplier(optimizer))
    action = get_action("clip_adjust")
    reason = action.unavailable(controls, {"factor": 10.0})
    assert reason is not None and "guard.clip_grad_norm_(max_norm)" in reason
    controls.clip = ClipControl()
    controls.clip.owned = True
    assert action.unavailable(controls, {"factor": 10.0}) is None
    token = action.apply(controls, {"factor": 10.0})
    assert controls.clip.factor == 10.0
    action.undo(controls, token)
    assert controls.clip.factor == 1.0
    action.apply(controls, {"factor": 1e9})
    assert controls.clip.factor == 1e6  # clamped
    reason = action.unavailable(controls, {"factor": 10.0})
    assert reason is not None and "bound" in reason


# -- reset_optimizer_state --------------------------------------------------------------------


def test_reset_zeroes_adams_moments_like_a_fresh_adam():
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    for k in range(5):
        _step(model, optimizer, seed=k)
    fresh_model = copy.deepcopy(model)
    fresh = torch.optim.Adam(fresh_model.parameters(), lr=0.01, betas=(0.8, 0.9))
    controls = Controls(model, optimizer, LRMultiplier(optimizer))
    action = get_action("reset_optimizer_state")
    assert action.unavailable(controls, {}) is None
    action.apply(controls, {})
    assert len(optimizer.state) == 0
    _step(model, optimizer, seed=99)
    _step(fresh_model, fresh, seed=99)
    assert _same(_params(model), _params(fresh_model))  # bitwise: the first step of a new Adam
    assert all(float(s["step"]) == 1.0 for s in optimizer.state.values())


def test_reset_undo_restores_state_bitwise_and_leaves_groups_alone():
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    multiplier = LRMultiplier(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for k in range(5):
        _step(model, optimizer, seed=k, scheduler=scheduler)
    controls = Controls(model, optimizer, multiplier, scheduler=scheduler)
    twin_model = copy.deepcopy(model)
    twin = torch.optim.Adam(twin_model.parameters(), lr=optimizer.param_groups[0]["lr"])
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    group = optimizer.param_groups[0]
    lr_before = group["lr"]
    action = get_action("reset_optimizer_state")
    token = action.apply(controls, {})
    _step(model, optimizer, seed=50)  # state rebuilt in between
    model.load_state_dict(twin_model.state_dict())  # weights back; the state is undo's job
    action.undo(controls, token)
    assert optimizer.param_groups[0] is group and group["lr"] == lr_before
    for p, q in zip(model.parameters(), twin_model.parameters()):
        a, b = optimizer.state[p], twin.state[q]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[n], b[n]) for n in a)
    token["state"][0]["exp_avg"].add_(1.0)  # the live state does not alias the token
    first = next(model.parameters())
    assert not torch.equal(optimizer.state[first]["exp_avg"], token["state"][0]["exp_avg"])
    _step(model, optimizer, seed=60)
    _step(twin_model, twin, seed=60)
    assert _same(_params(model), _params(twin_model))  # the next step is the un-reset one


class TinySGD(torch.optim.Optimizer):
    """A user's optimizer: its state layout is its own, so unstuck must not clear it."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["n"] = self.state[p].get("n", 0) + 1
                    p.sub_(group["lr"] * p.grad)


def test_reset_is_unavailable_for_unknown_or_empty_state():
    model = tiny_mlp()
    optimizer = TinySGD(model.parameters())
    _step(model, optimizer)
    action = get_action("reset_optimizer_state")
    reason = action.unavailable(Controls(model, optimizer, LRMultiplier(optimizer)), {})
    assert reason is not None and "unknown state layout of TinySGD" in reason
    adam = torch.optim.Adam(model.parameters())
    reason = action.unavailable(Controls(model, adam, LRMultiplier(adam)), {})
    assert reason is not None and "no per-parameter state" in reason


# -- accumulation_change ----------------------------------------------------------------------


def test_accumulation_change_needs_ownership_and_changes_steps():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    controls = Controls(model, optimizer, LRMultiplier(optimizer))
    action = get_action("accumulation_change")
    reason = action.unavailable(controls, {"factor": 2})
    assert reason is not None and "guard.should_step()" in reason
    controls.accumulation = AccumulationControl(3)
    assert action.unavailable(controls, {"factor": 2}) is None
    token = action.apply(controls, {"factor": 2})
    assert controls.accumulation.steps == 6
    action.undo(controls, token)
    assert controls.accumulation.steps == 3
    controls.accumulation = AccumulationControl(5)
    action.apply(controls, {"factor": 0.5})
    assert controls.accumulation.steps == 3  # 2.5 rounds half up, not to even
    action.apply(controls, {"factor": 1e6})
    assert controls.accumulation.steps == 1024
    controls.accumulation = AccumulationControl(1)
    reason = action.unavailable(controls, {"factor": 0.5})
    assert reason is not None and "no change" in reason


# -- keep_best_and_stop -----------------------------------------------------------------------


def _best_controls(with_restore=True):
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    multiplier = LRMultiplier(optimizer)
    for k in range(2):
        _step(model, optimizer, seed=k)
    best = take_snapshot(2, model, optimizer, extra={"lr": {"value": 0.5, "shape": None}})
    for k in range(3):
        _step(model, optimizer, seed=10 + k)

    def restore(snap):  # like the Guard's: it expects its own state in ``extra``
        restore_snapshot(snap, model, optimizer)
        multiplier.load_state_dict(snap.extra["lr"])

    controls = Controls(
        model, optimizer, multiplier, best=lambda: best, restore=restore if with_restore else None
    )
    return controls, best


def test_keep_best_and_stop_restores_best_and_undo_goes_back():
    controls, best = _best_controls()
    model = controls.model
    current = _params(model)
    action = get_action("keep_best_and_stop")
    assert action.unavailable(controls, {}) is None
    token = action.apply(controls, {"best_step": 2})
    assert token["restored"] is True
    assert _same(_params(model), [best.model[k] for k in model.state_dict()])
    assert controls.stop.requested and "step 2" in controls.stop.reason
    assert controls.lr.value == 0.5  # the Guard's state came back with the best weights
    action.undo(controls, token)
    assert _same(_params(model), current)
    assert controls.lr.value == 1.0
    assert not controls.stop.requested and controls.stop.reason == ""


@pytest.mark.parametrize("case", ["no_best", "no_restore"])
def test_keep_best_and_stop_without_a_best_snapshot_only_stops(case):
    controls, _ = _best_controls(with_restore=case != "no_restore")
    if case == "no_best":
        controls.best = lambda: None
    current = _params(controls.model)
    action = get_action("keep_best_and_stop")
    token = action.apply(controls, {})
    assert token["restored"] is False and token["before"] is None
    assert _same(_params(controls.model), current)
    assert controls.stop.requested
    action.undo(controls, token)
    assert not controls.stop.requested


def test_add_momentum_lengthens_steps_and_undo_drops_the_buffers_exactly():
    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    _step(model, optimizer, seed=0)
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.01)
    start = _params(model)
    controls = Controls(model, optimizer, LRMultiplier(optimizer))
    action = get_action("add_momentum")
    assert action.unavailable(controls, {"momentum": 0.9}) is None
    token = action.apply(controls, {"momentum": 0.9})
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)
    for seed in range(1, 6):
        _step(model, optimizer, seed=seed)
        _step(twin, twin_opt, seed=seed)
    assert all("momentum_buffer" in optimizer.state[p] for p in model.parameters())

    def moved(m):
        return sum(float((p - q).norm()) for p, q in zip(m.parameters(), start))

    assert moved(model) > 1.5 * moved(twin)  # the same batches, longer strides
    action.undo(controls, token)
    assert all(g["momentum"] == 0.0 for g in optimizer.param_groups)
    assert optimizer.state_dict()["state"] == {}
    # plain SGD again: from equal weights, the same batch gives the twin's exact update
    twin.load_state_dict(model.state_dict())
    _step(model, optimizer, seed=9)
    _step(twin, twin_opt, seed=9)
    assert _same(_params(model), _params(twin))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: torch.optim.Adam(p, lr=1e-3), "torch.optim.SGD only"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5), "already runs with momentum 0.5"),
        (lambda p: torch.optim.SGD(p, lr=0.1, dampening=0.1), "dampening"),
    ],
)
def test_add_momentum_says_why_it_does_not_apply(make, reason):
    model = tiny_mlp()
    optimizer = make(model.parameters())
    controls = Controls(model, optimizer, LRMultiplier(optimizer))
    why = get_action("add_momentum").unavailable(controls, {"momentum": 0.9})
    assert why is not None and reason in why
