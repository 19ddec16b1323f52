"""Snapshots restore exactly; the LR multiplier composes with the user's schedulers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import regression_batch, tiny_mlp
from unstuck.rescue import LRMultiplier, restore_snapshot, take_snapshot
from unstuck.rescue.verify import compare_windows


def _train_steps(model, opt, n, scheduler=None, seed=0):
    losses = []
    for i in range(n):
        x, y = regression_batch(seed=seed + i)
        x = x + 0.01 * torch.randn_like(x)  # consumes the torch RNG: restore must rewind it
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("optimizer_cls", [torch.optim.Adam, torch.optim.SGD])
def test_restore_is_bitwise_and_following_steps_identical(optimizer_cls):
    model = tiny_mlp()
    kwargs = {"momentum": 0.9} if optimizer_cls is torch.optim.SGD else {}
    opt = optimizer_cls(model.parameters(), lr=0.01, **kwargs)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    _train_steps(model, opt, 5, scheduler)
    np.random.seed(3)
    random.seed(3)
    snap = take_snapshot(5, model, opt, scheduler)
    params_at_snap = [p.detach().clone() for p in model.parameters()]
    state_at_snap = {
        k: {n: v.clone() for n, v in s.items()} for k, s in opt.state_dict()["state"].items()
    }
    first = _train_steps(model, opt, 4, scheduler, seed=100)
    first_np, first_py = np.random.rand(), random.random()
    restore_snapshot(snap, model, opt, scheduler)
    for p, q in zip(model.parameters(), params_at_snap):
        assert torch.equal(p, q)
    for k, s in opt.state_dict()["state"].items():
        for n, v in s.items():
            assert torch.equal(v, state_at_snap[k][n])
    assert scheduler.last_epoch == 5
    second = _train_steps(model, opt, 4, scheduler, seed=100)
    assert first == second  # identical steps on the same batches, RNG included
    assert (np.random.rand(), random.random()) == (first_np, first_py)


def test_snapshot_survives_weights_only_load(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    _train_steps(model, opt, 2)
    snap = take_snapshot(2, model, opt)
    path = tmp_path / "snap.pt"
    torch.save(snap.__dict__, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 2
    assert set(loaded["model"]) == set(model.state_dict())
    assert snap.nbytes() > 0


def _effective_lr_during_step(opt, multiplier):
    seen = []
    handle = opt.register_step_pre_hook(lambda o, a, k: seen.append(float(o.param_groups[0]["lr"])))
    # Hooks run in registration order: this one after the multiplier's, so it sees the product.
    return seen, handle


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4)),
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4),
    ],
    ids=["lambda-warmup", "onecycle", "cosine", "linear-warmup"],
)
def test_multiplier_composes_with_schedule(make_scheduler):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make_scheduler(opt)
    twin = tiny_mlp()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    twin_scheduler = make_scheduler(twin_opt)
    multiplier = LRMultiplier(opt)
    seen, handle = _effective_lr_during_step(opt, multiplier)
    multiplier.set(3.0)
    for _ in range(8):
        user_lr = opt.param_groups[0]["lr"]
        assert user_lr == pytest.approx(twin_opt.param_groups[0]["lr"])  # schedule untouched
        _train_steps(model, opt, 1, scheduler)
        twin_opt.step()
        twin_scheduler.step()
        assert seen[-1] == pytest.approx(3.0 * user_lr)  # the step used schedule × 3
    handle.remove()
    multiplier.close()


def test_multiplier_with_user_reduce_on_plateau_and_tensor_lr():
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    multiplier = LRMultiplier(opt)
    multiplier.set(0.5)
    seen, handle = _effective_lr_during_step(opt, multiplier)
    _train_steps(model, opt, 1)
    assert float(seen[-1]) == pytest.approx(0.005)
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.01)  # restored after the step
    plateau.step(1.0)
    plateau.step(2.0)  # worse: the user's scheduler halves its own LR, not the product
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.005)
    handle.remove()
    with pytest.raises(ValueError, match="positive finite"):
        multiplier.set(0.0)


def test_verdict_detects_worse_and_better():
    rng = np.random.default_rng(0)
    before = 1.0 + 0.05 * rng.standard_normal(200)
    assert compare_windows(before, 1.5 + 0.05 * rng.standard_normal(100)).worse
    assert compare_windows(before, 0.5 + 0.05 * rng.standard_normal(100)).better
    same = compare_windows(before, 1.0 + 0.05 * rng.standard_normal(100))
    assert not same.worse and not same.better
    assert compare_windows(before, np.array([1.0, np.nan])).worse  # NaN after an action: hurt
