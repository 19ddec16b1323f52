"""The hot path makes no host sync: between flushes no unstuck code reads a tensor's value.

Every way to pull a value to the host (``item``, ``tolist``, ``cpu``, ``numpy``, ``float()``,
``int()``, ``bool()``) is patched to record who called it. A call made while unstuck code is on
the stack counts as a violation unless that code is one of the places allowed to sync: a flush
(``collect``/``finish``), ``validate`` (documented as a host read), construction, or a probe.
Torch's own syncs (Adam reads its step counter) are not ours and are ignored.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional

import unstuck

SRC = str(Path(unstuck.__file__).resolve().parent)
ALLOWED = {"collect", "finish", "_flush", "flush", "validate", "__init__", "bind", "run", "close"}
SYNCS = ["item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__"]


@pytest.fixture
def sync_spy(monkeypatch):
    violations: list[str] = []

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, **kwargs):
            frame = sys._getframe(1)
            ours = []
            while frame is not None:
                if frame.f_code.co_filename.startswith(SRC):
                    ours.append(frame.f_code.co_name)
                frame = frame.f_back
            if ours and not (set(ours) & ALLOWED):
                violations.append(f"{name} via {' <- '.join(ours)}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)

    for name in SYNCS:
        wrap(name)
    return violations


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_no_host_sync_between_flushes(sync_spy, opt_name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.ReLU(inplace=True),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 3),
    )
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    guard = unstuck.Guard(
        model,
        opt,
        console=False,
        flush_every=10_000,
        dataset_size=256,
        loss_fn=functional.cross_entropy,
    )
    x = torch.randn(256, 6)
    y = torch.randint(0, 3, (256,))
    for step in range(130):  # covers every sampling cadence (8, 16, 32, 64) at least twice
        idx = torch.arange(step * 16, step * 16 + 16) % 256
        out = model(x[idx])
        per = functional.cross_entropy(out, y[idx], reduction="none")
        loss = per.mean()
        opt.zero_grad()
        loss.backward()
        guard.clip_grad_norm_(5.0)
        opt.step()
        guard.step(
            per.detach(),
            ids=idx,
            targets=y[idx],
            batch=(x[idx], y[idx]),
            components={"ce": loss.detach(), "zero": torch.zeros(())},
        )
    assert not sync_spy, sorted(set(sync_spy))[:10]
    guard.close()  # the flush itself may read values


def test_no_host_sync_reading_a_bounded_output_and_float_targets(sync_spy):
    """The output tap's sampled forwards and float ``batch`` targets stay on the device."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2), torch.nn.Sigmoid()
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, opt, console=False, flush_every=10_000, activation_every=8)
    x, y = torch.randn(256, 6), 3.0 + 100.0 * torch.rand(256, 2)
    for step in range(40):
        idx = torch.arange(step * 16, step * 16 + 16) % 256
        loss = functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss, batch=(x[idx], y[idx]))
    assert not sync_spy, sorted(set(sync_spy))[:10]
    guard.close()


def test_the_spy_catches_a_sync_in_a_hook(sync_spy, monkeypatch):
    from unstuck.signals.loss import LossTap

    original = LossTap.on_loss

    def syncing(self, step, loss, ids, targets):
        loss.item()  # the mistake this file guards against
        original(self, step, loss, ids, targets)

    monkeypatch.setattr(LossTap, "on_loss", syncing)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = unstuck.Guard(model, opt, console=False, flush_every=10_000)
    loss = model(torch.randn(4, 3)).pow(2).mean()
    loss.backward()
    opt.step()
    guard.step(loss)
    assert any(v.startswith("item via on_loss") for v in sync_spy), sync_spy
    guard.close()
