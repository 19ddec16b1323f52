"""Optimizer-state, precision, clipping and weight-norm taps: hand computation and a real Guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unstuck
from unstuck.signals import ClipTap, OptimizerStateTap, PrecisionTap, SignalHub, WeightNormTap


def _tiny(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return model.to(dtype)


def _steps(model, opt, hub, n, scale=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(8, 4, generator=gen).to(dtype)
        loss = model(x).float().pow(2).mean() * scale
        opt.zero_grad()
        loss.backward()
        opt.step()
        hub.on_loss(loss.detach(), None, None)


def test_second_moment_ratio_matches_hand_computation():
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    tap = OptimizerStateTap(every=4)
    hub = SignalHub(model, opt, [tap])
    _steps(model, opt, hub, 4)
    # the 5th step (opt_step 4) is sampled: compute by hand before it runs
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(7))
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    expected = []
    for p in model.parameters():
        st = opt.state[p]
        v_hat = st["exp_avg_sq"].sum().item() / (1 - 0.99 ** st["step"].item())
        expected.append((v_hat, p.grad.pow(2).sum().item()))
    opt.step()
    hub.on_loss(loss.detach(), None, None)
    signals = hub.flush().signals
    ratios = [v / g for v, g in expected]
    assert signals["second_moment_ratio"][1][0] == pytest.approx(np.median(ratios), rel=1e-4)
    total = sum(v for v, _ in expected) / sum(g for _, g in expected)
    assert signals["second_moment_ratio_global"][1][0] == pytest.approx(total, rel=1e-4)
    assert signals["second_moment_beta"] == pytest.approx(0.99)
    assert signals["optimizer_step_lag"][1] == [0.0]
    assert signals["optimizer_state_empty"][1] == [0.0]


def _guarded_steps(model, opt, guard, n):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    for _ in range(n):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss)


def test_optimizer_state_lost_on_resume_through_the_guard():
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    guard = unstuck.Guard(model, opt, console=False, optimizer_state_every=4, flush_every=8)
    _guarded_steps(model, opt, guard, 16)
    state = guard.state_dict()
    guard.close()
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)  # optimizer state not loaded
    resumed = unstuck.Guard(model, fresh, console=False, optimizer_state_every=4, flush_every=8)
    resumed.load_state_dict(state)
    _guarded_steps(model, fresh, resumed, 8)
    ev = resumed.evidence.build(24)
    assert ev.values_of("optimizer_state_empty").max() == pytest.approx(1.0)  # at opt step 16
    assert ev.values_of("optimizer_step_lag")[-1] == pytest.approx(16.0)  # 20 vs its own 4
    finding = unstuck.diagnose.get_rule("stale_optimizer_state").check(ev)
    assert finding is not None and finding.confidence >= 0.5
    resumed.close()


def test_a_restore_is_not_read_as_lost_optimizer_state():
    """A restart from the first state (before any optimizer step) or a rollback leaves the
    optimizer counting from the snapshot while the run's count goes on; that is no lost state."""
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    guard = unstuck.Guard(model, opt, console=False, optimizer_state_every=4, flush_every=8)
    first = guard._engine.capture(0)
    _guarded_steps(model, opt, guard, 40)
    guard._engine.restore(first)
    _guarded_steps(model, opt, guard, 24)
    assert guard.optimizer_steps == 64
    ev = guard.evidence.build(guard.steps)
    assert ev.values_of("optimizer_step_lag")[-1] == pytest.approx(0.0)
    assert ev.values_of("optimizer_state_empty").max() == pytest.approx(0.0)
    assert unstuck.diagnose.get_rule("stale_optimizer_state").check(ev) is None
    guard.close()


def test_sgd_without_momentum_never_reports_missing_state():
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    tap = OptimizerStateTap(every=2)
    hub = SignalHub(model, opt, [tap])
    _steps(model, opt, hub, 6)
    signals = hub.flush().signals
    assert "optimizer_state_empty" not in signals and "second_moment_ratio" not in signals


def test_precision_tap_counts_zero_and_unchanged_entries_in_fp16():
    model = _tiny(torch.float16)
    with torch.no_grad():
        model[0].weight[0].zero_()  # a dead unit: its row and the next layer's column get 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)  # every update below half an ulp
    tap = PrecisionTap(every=1)
    hub = SignalHub(model, opt, [tap])
    x = torch.randn(8, 4).half()
    loss = model(x).float().pow(2).mean()
    opt.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    hub.on_loss(loss.detach(), None, None)
    signals = hub.flush().signals
    total = sum(g.numel() for g in grads)
    zeros = sum(int((g == 0).sum()) for g in grads)
    assert signals["zero_grad_fraction"][1][0] == pytest.approx(zeros / total)
    assert signals["unchanged_weight_fraction"][1][0] == pytest.approx(1.0)
    assert signals["param_dtypes"] == {"float16": 1.0}
    assert signals["output_dtype"] == "float16"
    assert signals["skipped_steps"][1] == [0.0]
    tap.close()


def test_precision_tap_reads_the_scaler_and_skipped_steps():
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    tap = PrecisionTap(every=1, scaler=scaler)
    hub = SignalHub(model, opt, [tap])
    x = torch.randn(8, 4)
    for i in range(4):
        loss = model(x).pow(2).mean() * (float("inf") if i < 3 else 1.0)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)  # inf gradients: skipped, scale halved
        scaler.update()
        hub.on_loss(loss.detach(), None, None)
    signals = hub.flush().signals
    assert signals["skipped_steps"][1] == [3.0]
    assert signals["skipped_step_share"][1] == [0.75]
    assert signals["loss_scale"][1] == [2.0**7]
    assert signals["grad_scaler"] is True
    tap.close()


def test_clip_tap_rate_and_norms_through_the_guard():
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    guard = unstuck.Guard(model, opt, console=False, flush_every=10)
    x = torch.randn(8, 4)
    pre = []
    for i in range(10):
        loss = model(x).pow(2).mean() * (100.0 if i % 2 else 1e-4)
        opt.zero_grad()
        loss.backward()
        pre.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
        guard.clip_grad_norm_(0.5)
        opt.step()
        guard.step(loss)
    ev = guard.evidence.build(10)
    expected = np.mean(np.array(pre) > 0.5)
    assert ev.values_of("clip_rate")[-1] == pytest.approx(expected)
    assert ev.values_of("clip_pre_norm")[-1] == pytest.approx(np.median(pre), rel=1e-5)
    assert ev.values_of("clip_threshold")[-1] == 0.5
    guard.close()


def test_clip_tap_ignores_nonfinite_norms():
    tap = ClipTap()
    tap.record(3, torch.tensor(float("nan")), 1.0)
    tap.record(4, torch.tensor(3.0), 1.0)
    packet = tap.collect()
    host = dict(packet.host)
    host["clip_norms"] = packet.tensors["clip_norms"].tolist()
    out = tap.finish(host)
    assert out["clip_rate"] == ([4], [1.0])


def test_weight_norm_tap_matches_the_parameters():
    model = _tiny()
    opt = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "weight_decay": 0.1},
            {"params": model[2].parameters(), "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    tap = WeightNormTap()
    hub = SignalHub(model, opt, [tap])
    initial = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    _steps(model, opt, hub, 3)
    signals = hub.flush().signals
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert signals["weight_norm"][1][0] == pytest.approx(float(flat.norm()), rel=1e-5)
    assert signals["weight_norm_initial"] == pytest.approx(initial, rel=1e-5)
    first = float(torch.cat([p.detach().reshape(-1) for p in model[0].parameters()]).norm())
    assert signals["weight_norm_per_group"][0] == pytest.approx(first, rel=1e-5)
    assert signals["weight_decay"] == [0.1, 0.0]
    assert signals["weight_decay_decoupled"] == [True, True]
    assert "weight_norm_initial" not in hub.flush().signals  # sent once
