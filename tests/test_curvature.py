"""The curvature probe against known Hessians, and through a real Guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import unstuck
from unstuck.signals.curvature import (
    FLAT_FELT_CURVATURE,
    SADDLE_RATIO,
    CurvatureProbe,
    classify,
)

F = torch.nn.functional


class Quadratic(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(n, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


def _hessian(eigs: list[float], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize(
    ("eigs", "kind"),
    [
        ([4.0, 2.0, 1.0, 0.5, -1.5], "saddle_point"),
        ([3.0, 1.0, 0.2, 0.1, 0.01], "minimum"),
        ([5.0, 1.0, 1.0, 1.0, -0.1], "minimum"),  # -0.1 is 2 % of 5: inside the near-zero bulk
    ],
)
def test_probe_finds_the_extreme_eigenvalues_of_a_quadratic(eigs, kind):
    model = Quadratic(len(eigs))
    h = _hessian(eigs)
    probe = CurvatureProbe(model, list(model.parameters()), probe_fn=lambda m: 0.5 * m.w @ h @ m.w)
    out = probe.run()
    assert out["status"] == "ok"
    assert out["lambda_max"] == pytest.approx(max(eigs), rel=1e-6)
    assert out["lambda_min"] == pytest.approx(min(eigs), rel=1e-6, abs=1e-9)
    assert out["hvps"] <= len(eigs)  # Lanczos is exact after n steps
    assert out["classification"] == kind
    assert out["grad_norm"] == pytest.approx(float((h @ model.w.detach()).norm()), rel=1e-6)


def test_probe_on_a_large_quadratic_converges_at_both_ends():
    n = 200
    eigs = list(np.linspace(-0.5, 10.0, n))
    model = Quadratic(n)
    h = _hessian(eigs, seed=1)
    probe = CurvatureProbe(
        model, list(model.parameters()), probe_fn=lambda m: 0.5 * m.w @ h @ m.w, max_hvps=40
    )
    out = probe.run()
    assert out["hvps"] == 40
    assert out["lambda_max"] == pytest.approx(10.0, rel=0.02)
    assert out["lambda_min"] == pytest.approx(-0.5, abs=0.1)


def test_probe_with_mse_loss_mean_matches_the_exact_hessian():
    # torch.func's jvp-of-grad fails on this loss (pytorch#123996); reverse-over-reverse works
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    probe = CurvatureProbe(lin, list(lin.parameters()), loss_fn=F.mse_loss)
    out = probe.run((x, y))
    design = torch.cat([x, torch.ones(64, 1)], 1).double()
    exact = torch.linalg.eigvalsh(2 * design.T @ design / 64)
    assert out["status"] == "ok"
    assert out["lambda_max"] == pytest.approx(float(exact[-1]), rel=1e-4)
    assert out["lambda_min"] == pytest.approx(float(exact[0]), rel=1e-4)
    assert out["classification"] == "minimum"


def test_probe_accepts_tuple_inputs():
    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(3, 1)

        def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return self.a(u) * v

    model = Two()
    batch = ((torch.randn(8, 3), torch.randn(8, 1)), torch.randn(8, 1))
    out = CurvatureProbe(model, list(model.parameters()), loss_fn=F.mse_loss).run(batch)
    assert out["status"] == "ok" and out["lambda_max"] > 0


@pytest.mark.parametrize(
    ("kwargs", "batch", "reason"),
    [
        ({}, (torch.randn(4, 3), torch.randn(4, 1)), "no probe_fn or loss_fn"),
        ({"loss_fn": F.mse_loss}, None, "no kept batch"),
        (
            {"loss_fn": lambda out, y: out.sum() * float("nan")},
            (torch.randn(4, 3), None),
            "non-finite",
        ),
        ({"probe_fn": lambda m: torch.tensor(1.0)}, None, "does not depend"),
        ({"probe_fn": lambda m: m(torch.randn(4, 3)).sum() * 0 + torch.ones(2)}, None, "scalar"),
    ],
)
def test_probe_skips_with_a_reason(kwargs, batch, reason):
    model = torch.nn.Linear(3, 1)
    out = CurvatureProbe(model, list(model.parameters()), **kwargs).run(batch)
    assert out["status"] == "skipped"
    assert reason in out["reason"]
    assert "seconds" in out


def test_probe_runs_on_a_transformer_whose_attention_uses_a_fused_kernel():
    """PyTorch's fused attention kernels have no double backward; the probe picks the math one."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0)
    model = torch.nn.Sequential(layer, torch.nn.Flatten(), torch.nn.Linear(8 * 5, 3))
    x, y = torch.randn(4, 5, 8), torch.tensor([0, 1, 2, 0])
    out = CurvatureProbe(model, list(model.parameters()), loss_fn=F.cross_entropy).run((x, y))
    assert out["status"] == "ok", out.get("reason")
    assert math.isfinite(out["lambda_max"]) and out["lambda_max"] >= out["lambda_min"]


def test_probe_skips_when_the_loss_ignores_the_watched_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    other = torch.nn.Parameter(torch.randn(3))
    out = CurvatureProbe(model, [other], probe_fn=lambda m: m(torch.randn(4, 3)).pow(2).sum()).run()
    assert out["status"] == "skipped" and "does not depend" in out["reason"]


def test_a_linear_loss_has_zero_curvature():
    model = torch.nn.Linear(3, 1)
    x = torch.randn(5, 3)
    out = CurvatureProbe(model, list(model.parameters()), probe_fn=lambda m: m(x).sum()).run()
    assert out["status"] == "ok" and out["lambda_max"] == 0.0 and out["lambda_min"] == 0.0


def test_probe_leaves_grads_params_buffers_mode_and_rng_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)
    )
    model.train()
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    state = torch.random.get_rng_state()
    out = CurvatureProbe(model, list(model.parameters()), loss_fn=F.cross_entropy).run((x, y))
    assert out["status"] == "ok"
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.random.get_rng_state(), state)


def test_classify_thresholds_and_bad_values():
    assert classify(1.0, -SADDLE_RATIO * 1.01, 0.1, 1.0, None) == "saddle_point"
    assert classify(1.0, -SADDLE_RATIO * 0.99, 0.1, 1.0, None) == "minimum"
    # flat needs a step size: η·λ and η·‖g‖²/L both below the constant
    eta = 0.5 * FLAT_FELT_CURVATURE
    assert classify(1.0, -1.0, 0.1, 1.0, eta) == "flat_region"
    assert classify(1.0, -1.0, 0.1, 1.0, None) == "saddle_point"
    assert classify(1.0, 0.1, 10.0, 1.0, eta) == "descending"  # the gradient still works
    assert classify(math.nan, 0.0, 0.1, 1.0, None) == "unknown"


def test_guard_probes_once_per_plateau_and_records_the_event(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.randn(4, 1) + 0.3 * torch.randn(256, 1)  # a noise floor to plateau on
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = unstuck.Guard(model, opt, loss_fn=F.mse_loss, console=False, run_dir=tmp_path)
    calls = []
    real = guard._curvature.run

    def spy(batch=None):
        calls.append(batch)
        return real(batch)

    guard._curvature.run = spy
    for _ in range(600):
        # Full batches: the fit converges onto its noise floor and stays there, a plateau the
        # trend test can show (a batch of 32 leaves log-loss swings of ±25 % per window).
        idx = torch.arange(256)
        loss = F.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss, batch=(x[idx], y[idx]))
    guard.close()
    assert guard.plateaus, "the converged linear fit should plateau"
    assert 1 <= len(calls) <= len(guard.plateaus)
    assert calls[0] is not None  # the kept batch reached the probe
    import sqlite3

    from unstuck.record.store import RunStore  # noqa: F401  (the store holds the probe event)

    con = sqlite3.connect(next(tmp_path.rglob("*.sqlite")))
    rows = [r for r in con.execute("select * from events") if "curvature" in str(r)]
    assert rows and "lambda_max" in str(rows[0])


def test_noise_floor_margin_is_the_detectors_plateau_margin():
    from unstuck.detect.detector import DEFAULT_EPSILON
    from unstuck.signals.curvature import NOISE_FLOOR_SHARE

    assert NOISE_FLOOR_SHARE == DEFAULT_EPSILON


def test_classify_reads_gradient_noise():
    from unstuck.signals.curvature import NOISE_FLOOR_SHARE, STALLED_PROGRESS

    # the gradient still descends: no landscape verdict
    assert classify(1.0, -1.0, 1.0, 1.0, 10 * STALLED_PROGRESS, snr=5.0) == "descending"
    # the same numbers below the gradient noise: big noisy steps make a noise floor ...
    eta_floor = 4 * NOISE_FLOOR_SHARE * 1.1
    assert classify(1.0, -1.0, 1.0, 1.0, eta_floor, snr=0.05) == "noise_floor"
    # ... small ones a minimum, whatever the sign of λ_min
    assert classify(1.0, -1.0, 0.01, 1.0, 0.5, snr=0.05) == "minimum"
    # a consistent but stalled gradient with negative curvature is a saddle
    assert classify(1.0, -1.0, 0.01, 1.0, 0.5, snr=5.0) == "saddle_point"


def test_guard_keeps_a_probe_batch_only_when_the_probe_would_read_it():
    def run(**kwargs):
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        guard = unstuck.Guard(model, opt, console=False, **kwargs)
        x, y = torch.randn(4, 3), torch.randn(4, 1)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        guard.step(loss, batch=(x, y))
        kept = guard._probe_batch
        guard.close()
        return kept

    assert run() is None  # no loss_fn: the probe never reads a batch, so none is cloned
    assert run(probe_fn=lambda m: m.weight.sum()) is None
    kept = run(loss_fn=torch.nn.functional.mse_loss)
    assert kept is not None and kept[0].shape == (4, 3)
