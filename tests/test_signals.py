"""Signal values against hand-computed references, through the real optimizer hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import regression_batch, tiny_mlp
from unstuck.signals import (
    GradNoiseTap,
    GradNormTap,
    LossTap,
    LRTap,
    ParamDistanceTap,
    SamplesTap,
    SignalHub,
    UpdateRatioTap,
)


def _hub(model, optimizer, **kw):
    taps = [
        LossTap(),
        GradNormTap(kw.get("grad_every", 1)),
        LRTap(),
        UpdateRatioTap(kw.get("update_every", 1)),
        ParamDistanceTap(max_elements=kw.get("max_elements", 1 << 20)),
        SamplesTap(kw.get("dataset_size")),
    ]
    return SignalHub(model, optimizer, taps)


def test_loss_and_grad_norms_match_manual_reference():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hub = _hub(model, opt)
    x, y = regression_batch()
    expected_losses, expected_norms = [], []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        expected_norms.append([float(p.grad.norm()) for p in model.parameters()])
        opt.step()
        hub.on_loss(loss.detach(), None, None)
        expected_losses.append(float(loss.detach()))
    frame = hub.flush()
    steps, losses = frame.signals["loss"]
    assert steps == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
    np.testing.assert_allclose(frame.signals["grad_norm_per_tensor"], expected_norms, rtol=1e-5)
    global_norm = np.sqrt((np.asarray(expected_norms) ** 2).sum(axis=1))
    np.testing.assert_allclose(frame.signals["grad_norm"][1], global_norm, rtol=1e-5)
    assert frame.signals["nonfinite_loss"][1] == [0.0]


def test_update_ratio_and_distance_match_manual_reference():
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    hub = _hub(model, opt)
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    x, y = regression_batch()
    ratios, distances = [], []
    for _ in range(3):
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        ratios.append(float((after - before).norm() / before.norm()))
        distances.append(float((after - start).norm()))
        hub.on_loss(loss.detach(), None, None)
    frame = hub.flush()
    np.testing.assert_allclose(frame.signals["update_ratio"][1], ratios, rtol=1e-4)
    # sampled after optimizer step 0 (every 10th), and at the flush (step 2)
    assert frame.signals["param_distance"][0] == [0, 2]
    np.testing.assert_allclose(
        frame.signals["param_distance"][1], [distances[0], distances[2]], rtol=1e-5
    )


def test_subsampled_distance_is_close_to_exact():
    model = torch.nn.Linear(200, 200)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hub = _hub(model, opt, max_elements=8000)  # 40,200 parameters: about a fifth sampled
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    hub.on_loss(torch.tensor(1.0), None, None)
    frame = hub.flush()
    exact = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - start).norm())
    assert frame.signals["param_distance"][1][0] == pytest.approx(exact, rel=0.05)


def test_gradient_accumulation_sees_accumulated_gradient():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hub = _hub(model, opt)
    opt.zero_grad()
    for micro in range(4):
        x, y = regression_batch(seed=micro)
        (torch.nn.functional.mse_loss(model(x), y) / 4).backward()
    accumulated = [float(p.grad.norm()) for p in model.parameters()]
    opt.step()
    hub.on_loss(torch.tensor(0.5), None, None)
    frame = hub.flush()
    assert frame.signals["grad_norm_per_tensor"].shape == (1, 4)
    np.testing.assert_allclose(frame.signals["grad_norm_per_tensor"][0], accumulated, rtol=1e-5)
    assert hub.opt_steps == 1


def test_param_groups_frozen_layers_and_missing_grads():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3), torch.nn.Linear(3, 3))
    model[0].requires_grad_(False)  # frozen: not in the optimizer at all
    opt = torch.optim.SGD(
        [
            {"params": model[1].parameters(), "lr": 0.1},
            {"params": model[2].parameters(), "lr": 0.01},
        ]
    )
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    hub = _hub(model, opt)
    x = torch.randn(8, 4)
    for _ in range(4):
        out = model[1](model[0](x)).sum()  # model[2] is unused: its grads stay None
        opt.zero_grad()
        out.backward()
        opt.step()
        scheduler.step()
        hub.on_loss(out.detach(), None, None)
    frame = hub.flush()
    assert frame.signals["grad_missing"] == 4 * 2  # two tensors without grad, four steps
    steps, lr0 = frame.signals["lr/0"]
    assert lr0 == pytest.approx([0.1, 0.05])  # recorded where it changes
    assert steps == [0, 2]
    assert frame.signals["lr/1"][1] == pytest.approx([0.01, 0.005])
    assert np.all(frame.signals["grad_norm_per_tensor"][:, 2:] == 0.0)


def test_nonfinite_loss_is_counted_not_raised():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hub = _hub(model, opt)
    for value in (1.0, float("nan"), float("inf"), 0.5):
        hub.on_loss(torch.tensor(value), None, None)
    frame = hub.flush()
    assert frame.signals["nonfinite_loss"][1] == [2.0]


def test_per_sample_losses_ids_and_epoch_coverage():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hub = _hub(model, opt, dataset_size=8)
    # Two nominal epochs that only ever see ids 0..3 (half the data): coverage 0.5 each.
    for _epoch in range(2):
        for start in (0, 2):
            ids = torch.arange(start, start + 2)
            losses = torch.tensor([0.1, 0.2]) if start == 0 else torch.tensor([0.3, 4.0])
            targets = torch.tensor([0, 1, 0, 1])
            hub.on_loss(torch.cat([losses, losses]), torch.cat([ids, ids]), targets)
    frame = hub.flush()
    assert frame.signals["samples_seen"][1] == [16.0]
    assert frame.signals["epoch_coverage"] == [0.5, 0.5]
    summary = frame.signals["per_sample"]
    assert summary["max"] == pytest.approx(4.0)
    assert summary["mean"] == pytest.approx((0.1 + 0.2 + 0.3 + 4.0) / 4)
    assert frame.signals["class_loss"][1] == pytest.approx((0.2 + 4.0) / 2)


def test_sampling_strides_reduce_work():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hub = _hub(model, opt, grad_every=3, update_every=4)
    x, y = regression_batch()
    for _ in range(12):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hub.on_loss(loss.detach(), None, None)
    frame = hub.flush()
    assert frame.signals["grad_norm"][0] == [0, 3, 6, 9]
    assert frame.signals["update_ratio"][0] == [0, 4, 8]
    # The powers of two before the first regular ratio go to a series of their own, for runs
    # shorter than the cadence; the regular series keeps its cadence.
    assert frame.signals["update_ratio_early"][0] == [1, 2]


def test_early_steps_are_the_powers_of_two_before_the_first_sample():
    from unstuck.signals.base import early_step

    assert [n for n in range(70) if early_step(n, 32)] == [1, 2, 4, 8, 16]
    assert [n for n in range(10) if early_step(n, 1)] == []


def test_tensors_the_graph_never_reaches_are_listed_frozen_ones_are_not():
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3), torch.nn.Linear(3, 3)
    )
    model[3].requires_grad_(False)  # frozen on purpose: no gradient by design
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hub = _hub(model, opt, grad_every=1)
    x, y = regression_batch()
    for _ in range(4):
        hidden = model[1](model[0](x)).detach()  # the bug: the first layer is cut off
        loss = torch.nn.functional.mse_loss(model[3](model[2](hidden)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hub.on_loss(loss.detach(), None, None)
    seen = hub.flush().signals["params_without_grad"]
    assert seen == {"indices": [0, 1], "sampled_steps": 4}  # 0.weight, 0.bias


def test_hub_close_removes_hooks():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hub = _hub(model, opt)
    hub.close()
    x, y = regression_batch()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert hub.opt_steps == 0


@pytest.mark.parametrize("max_elements", [1 << 20, 40])
def test_gradient_snr_matches_hand_computed_estimate(max_elements):
    # Known gradients, lr=0 so the parameters stay put: the tap's estimate must equal the
    # unbiased formula tr Σ = k/(k−1)(mean‖g‖² − ‖ḡ‖²), ‖G‖² = ‖ḡ‖² − tr Σ/k, snr = ‖G‖²/tr Σ
    # (exact when every coordinate is kept; on a subset, close to it).
    model = torch.nn.Linear(10, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    hub = SignalHub(model, opt, [LossTap(), GradNoiseTap(every=1, max_elements=max_elements)])
    g = torch.Generator().manual_seed(0)
    mean = [torch.randn(p.shape, generator=g) for p in model.parameters()]
    flat = []
    for _ in range(6):
        for p, m in zip(model.parameters(), mean):
            p.grad = m + 0.7 * torch.randn(p.shape, generator=g)
        flat.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        opt.step()
        hub.on_loss(torch.tensor(1.0), None, None)
    frame = hub.flush()
    grads = torch.stack(flat).double()
    k = grads.shape[0]
    mean_square = grads.pow(2).sum(dim=1).mean()
    mean_vector = grads.mean(dim=0).pow(2).sum()
    noise = k / (k - 1) * (mean_square - mean_vector)
    expected = float((mean_vector - noise / k) / noise)
    assert frame.signals["grad_snr"][0] == [5]
    got = frame.signals["grad_snr"][1][0]
    if max_elements >= 110:
        assert got == pytest.approx(expected, rel=1e-5)
    else:
        assert got == pytest.approx(expected, rel=0.5)  # 40 of 110 coordinates


def test_gradient_snr_tells_signal_from_noise():
    model = torch.nn.Linear(10, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(1)
    snrs = []
    for noise_scale in (0.1, 10.0):
        hub = SignalHub(model, opt, [LossTap(), GradNoiseTap(every=1)])
        for _ in range(8):
            for p in model.parameters():
                p.grad = torch.ones_like(p) + noise_scale * torch.randn(p.shape, generator=g)
            opt.step()
            hub.on_loss(torch.tensor(1.0), None, None)
        snrs.append(hub.flush().signals["grad_snr"][1][0])
        hub.close()
    assert snrs[0] > 10 > 1 > snrs[1]  # clean gradients: signal ≫ noise; noisy: below it


def test_post_norm_layers_counts_post_ln_torch_transformer_layers() -> None:
    from unstuck.signals.architecture import beta2_of, post_norm_layers

    def encoder(norm_first: bool) -> torch.nn.Module:
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=norm_first)
        return torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)

    assert post_norm_layers(encoder(False)) == 3
    assert post_norm_layers(encoder(True)) == 0
    assert post_norm_layers(tiny_mlp()) == 0
    decoder = torch.nn.TransformerDecoderLayer(8, 2, 16, batch_first=True)
    assert post_norm_layers(torch.nn.Sequential(encoder(True), decoder)) == 1
    params = tiny_mlp().parameters()
    assert beta2_of(torch.optim.AdamW(params, betas=(0.9, 0.98))) == 0.98
    assert beta2_of(torch.optim.SGD(tiny_mlp().parameters(), lr=0.1)) is None


def test_post_norm_layers_knows_hugging_face_post_ln_models() -> None:
    """BERT-style models are post-LN (``LayerNorm(hidden_states + input_tensor)``); GPT-2 is
    pre-LN; a task head around the encoder counts the encoder's layers once."""
    transformers = pytest.importorskip("transformers")
    from unstuck.signals.architecture import post_norm_layers

    small = {"num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 40}
    bert = transformers.BertConfig(hidden_size=16, num_hidden_layers=3, **small)
    assert post_norm_layers(transformers.BertModel(bert)) == 3
    assert post_norm_layers(transformers.BertForSequenceClassification(bert)) == 3
    gpt2 = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40, n_positions=32)
    assert post_norm_layers(transformers.GPT2LMHeadModel(gpt2)) == 0
    distil = transformers.DistilBertConfig(
        dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=40
    )
    assert post_norm_layers(transformers.DistilBertModel(distil)) == 2


def test_the_hub_calls_each_tap_on_exactly_its_own_steps():
    """The hub lists the due taps once per period of their cadences; a tap must still run on
    every multiple of its ``every`` and on no other step, also past the period and for a
    cadence whose period is too long to list."""
    from unstuck.signals.base import Tap

    class Counting(Tap):
        name = "counting"

        def __init__(self, every: int) -> None:
            self.every = every
            self.pre: list[int] = []
            self.post: list[int] = []

        def on_pre_step(self, ctx, opt_step):
            self.pre.append(opt_step)

        def on_post_step(self, ctx, opt_step):
            self.post.append(opt_step)

    # listed (period 24), and not (lcm(8, 12, 4099) > 4096: checked each step)
    for everys in ((1, 8, 12), (1, 8, 12, 4099)):
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        taps = [Counting(e) for e in everys]
        hub = SignalHub(model, opt, taps)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        for _ in range(200):
            opt.step()
        for tap in taps:
            expected = [n for n in range(200) if n % tap.every == 0]
            assert tap.pre == expected and tap.post == expected, (everys, tap.every)
        hub.close()


def test_a_sampled_tier_tap_is_never_run_every_step_by_default():
    """``tier`` is the cost class a tap declares: a ``sampled`` tap (a parameter copy, a pass
    over every gradient or forward activation) must not run on every step at the Guard's
    defaults, or the overhead budget the defaults were measured for is gone."""
    import typing

    from unstuck.integrations._torch_taps import torch_taps
    from unstuck.signals.base import CostTier

    built = torch_taps()  # at the Guard's default cadences
    tiers = set(typing.get_args(CostTier))
    for tap in built.taps:
        assert type(tap).tier in tiers, f"{type(tap).__name__} declares no known cost tier"
        if type(tap).tier == "sampled":
            assert tap.every > 1, f"{type(tap).__name__} is sampled but runs every step"
    assert any(type(t).tier == "sampled" for t in built.taps)
