"""The activation tap: hooks armed only on sampled steps, values against hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import unstuck
from unstuck.signals.activations import DEAD_WINDOW, ActivationTap
from unstuck.signals.base import StepContext


def _bind(model: nn.Module, every: int = 1) -> ActivationTap:
    tap = ActivationTap(every)
    tap.bind(StepContext(params=[], names=[], group_index=[], optimizer=None, model=model))  # type: ignore[arg-type]
    return tap


def _flush(tap: ActivationTap) -> dict:
    """What the hub does: move the packet's tensors to the host as lists, then finish."""
    packet = tap.collect()
    host = {k: v.detach().reshape(-1).double().tolist() for k, v in packet.tensors.items()}
    host.update(packet.host)
    return tap.finish(host)


def _hook_count(model: nn.Module) -> int:
    """Forward (pre-)hooks the activation tap holds on the model (other taps may hook too)."""
    hooks = [
        h
        for m in model.modules()
        for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    ]
    return sum(isinstance(getattr(h, "__self__", None), ActivationTap) for h in hooks)


def test_hooks_exist_only_around_sampled_forwards_under_a_guard():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = unstuck.Guard(model, opt, policy="observe", console=False, activation_every=4)
    assert _hook_count(model) > 0  # step 0 is sampled: armed at construction
    counts = []
    for _ in range(12):
        x = torch.randn(8, 4)
        counts.append(_hook_count(model))
        loss = model(x).pow(2).mean()
        assert _hook_count(model) == 0  # removed as soon as the sampled forward ran
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss)
    guard.close()
    # hooks present before the forwards of steps 0, 4, 8 only
    assert [c > 0 for c in counts] == [i % 4 == 0 for i in range(12)]
    assert _hook_count(model) == 0  # armed for step 12 when the loop stopped: close removes them
    model(torch.randn(2, 4))
    assert _hook_count(model) == 0
    model(torch.randn(2, 4))
    assert _hook_count(model) == 0


def test_close_removes_armed_hooks():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    tap = _bind(model)
    assert _hook_count(model) == 4  # input pre-hook, end hook, Linear, ReLU
    tap.close()
    assert _hook_count(model) == 0


def test_inplace_relu_backward_works_and_dead_units_are_counted():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(inplace=True), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 0.0, -1.0, -2.0]))  # units 2 and 3 never fire
    tap = _bind(model, every=1)
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.5]])
    model(x).sum().backward()  # would raise with full backward hooks on an in-place ReLU
    tap.on_loss(0, torch.tensor(0.0), None, None)
    out = _flush(tap)
    assert out["act_dead_fraction"] == ([0], [0.5])
    assert out["act_dead_layers"] == {"1": 0.5}
    assert model[0].weight.grad is not None


def test_dead_units_need_the_whole_window_to_stay_silent():
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[0].bias.zero_()
    tap = _bind(model, every=1)
    # unit 1 fires only on negative inputs, unit 0 only on positive ones: one negative batch,
    # then DEAD_WINDOW positive ones; unit 1 counts as dead once the window holds no negative
    batches = [torch.tensor([[-1.0]])] + [torch.tensor([[1.0]])] * DEAD_WINDOW
    fractions, observed = [], []
    for step, x in enumerate(batches):
        model(x)
        tap.on_loss(step, torch.tensor(0.0), None, None)
        out = _flush(tap)
        fractions += out["act_dead_fraction"][1]
        observed += out["act_dead_observations"][1]
    assert fractions == [0.5] + [0.0] * (DEAD_WINDOW - 1) + [0.5]
    # One output per unit per batch: the window holds 1, 2, ... up to DEAD_WINDOW of them.
    assert observed == [float(min(k + 1, DEAD_WINDOW)) for k in range(len(batches))]


def test_saturation_scale_and_input_stats_match_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2), nn.Sigmoid())
    tap = _bind(model)
    x = torch.randn(16, 3) * torch.tensor([1.0, 10.0, 100.0]) + 2.0
    with torch.no_grad():  # the reference values (no-grad forwards are not sampled)
        h = model[0](x)
        y = model[2](torch.tanh(h))
    model(x)
    tap.on_loss(0, torch.tensor(0.0), None, None)
    out = _flush(tap)
    assert out["act_saturation"][1][0] == pytest.approx(float((h.abs() > 5).float().mean()))
    # the output Sigmoid is the model's output: left out
    assert set(out["act_saturation_layers"]) == {"1"}
    scale = out["act_scale"]
    assert scale["layers"] == ["0", "2"] and scale["first_step"] == 0
    assert scale["latest"] == pytest.approx([float(h.std()), float(y.std())], rel=1e-5)
    assert scale["first"] == scale["latest"]
    signal = [float(t.var(0, unbiased=False).mean().sqrt()) for t in (h, y)]
    assert scale["latest_signal"] == pytest.approx(signal, rel=1e-5)
    assert scale["first_signal"] == scale["latest_signal"]
    # torch's default init: weight RMS x sqrt(3 fan_in) is about 1 (a uniform draw's RMS)
    assert scale["first_weight_scale"] == pytest.approx([1.0, 1.0], abs=0.35)
    stats = out["input_stats"]
    xn = x.double().numpy()
    assert stats["batch_size"] == 16 and stats["features"] == 3
    assert stats["mean"] == pytest.approx(xn.mean(), rel=1e-5)
    assert stats["std"] == pytest.approx(xn.std(), rel=1e-5)
    assert stats["max_abs"] == pytest.approx(np.abs(xn).max(), rel=1e-5)
    assert stats["feature_std_min"] == pytest.approx(xn.std(0).min(), rel=1e-5)
    assert stats["feature_std_max"] == pytest.approx(xn.std(0).max(), rel=1e-5)
    assert stats["feature_rms_max"] == pytest.approx(np.sqrt((xn**2).mean(0)).max(), rel=1e-5)


def test_signal_std_counts_what_varies_across_the_batch_not_the_biases():
    from unstuck.signals.activations import signal_std

    torch.manual_seed(0)
    layer = nn.Linear(8, 16)
    with torch.no_grad():
        layer.weight.mul_(1e-4)  # a tiny init: the output is its biases, whatever the input
    y = layer(torch.randn(64, 8)).detach()
    assert float(y.std()) > 0.1  # the biases' spread over units looks like signal ...
    assert float(signal_std(y)) < 1e-3  # ... but nothing varies with the input
    assert float(signal_std(torch.ones(1, 5))) == pytest.approx(0.0)  # batch of one: the std
    from unstuck.signals.activations import default_init_scale

    assert float(default_init_scale(nn.Linear(256, 64), y)) == pytest.approx(1.0, abs=0.05)
    assert float(default_init_scale(layer, y)) == pytest.approx(1e-4, rel=0.1)
    assert np.isnan(float(default_init_scale(nn.ReLU(), y)))


def test_first_scale_is_kept_while_latest_moves():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tap = _bind(model)
    model(torch.randn(4, 2))
    tap.on_loss(0, torch.tensor(0.0), None, None)
    first = _flush(tap)["act_scale"]["first"]
    with torch.no_grad():
        model[1].weight.mul_(10.0)
    model(torch.randn(4, 2))
    tap.on_loss(1, torch.tensor(0.0), None, None)
    scale = _flush(tap)["act_scale"]
    assert scale["first"] == first and scale["step"] == 1
    assert scale["latest"][1] != pytest.approx(first[1])
    tap2 = ActivationTap()
    tap2.load_state_dict(tap.state_dict())
    assert tap2.state_dict() == tap.state_dict()


def test_token_ids_no_grad_forwards_and_reused_modules():
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.ReLU())
    tap = _bind(emb)
    emb(torch.randint(0, 10, (3, 5)))  # (N, T, C) after a Linear: units on the last dim
    tap.on_loss(0, torch.tensor(0.0), None, None)
    out = _flush(tap)
    assert "input_stats" not in out  # integer token ids are skipped
    assert len(out["act_dead_layers"]) == 1 and "act_dead_fraction" in out

    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(2, 3), relu, nn.Linear(3, 3), relu)
    tap = _bind(model)
    with torch.no_grad():
        model(torch.randn(4, 2))  # a validation forward: not sampled, hooks stay armed
    assert _hook_count(model) > 0
    model(torch.randn(4, 2))
    tap.on_loss(0, torch.tensor(0.0), None, None)
    assert set(_flush(tap)["act_dead_layers"]) == {"1", "1#1"}


def test_no_model_and_bad_cadence():
    tap = ActivationTap()
    tap.bind(StepContext(params=[], names=[], group_index=[], optimizer=None, model=None))  # type: ignore[arg-type]
    tap.on_loss(0, torch.tensor(0.0), None, None)
    assert _flush(tap) == {}
    with pytest.raises(ValueError, match="activation_every"):
        ActivationTap(0)
