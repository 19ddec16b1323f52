"""UnstuckCallback under a real Lightning Trainer on CPU: one process, a resume, and ddp_spawn.

The stuck task is the one tests/test_guard.py uses: a small MLP regression with SGD at
lr=1e-6 (far too low), batches that never repeat within a run. Runs are a few hundred steps of a
4-8-3 MLP, ~1 s each; the ddp_spawn run (two gloo processes) runs in a subprocess with a timeout,
so a hung collective fails the test instead of hanging it.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

import unstuck
from unstuck.record import read_metrics
from unstuck.rescue.actions.rewind import Rewind

try:
    import lightning as L  # noqa: N812  (the name Lightning's own docs use)
    from lightning.pytorch.callbacks import ModelCheckpoint

    from unstuck.integrations.lightning import UnstuckCallback
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the extra: a missing Lightning is a failure there
    pytest.skip(
        "lightning is not installed (pip install 'unstuck[lightning]')", allow_module_level=True
    )

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
BATCH = 32
LR = 1e-6
WARMUP = 20  # LambdaLR warmup steps
# The rescue settings of tests/test_guard.py: decisions every 20 steps, verdicts after 60.
RESCUE_KW: dict[str, Any] = {"flush_every": 20, "horizon": 60, "cooldown": 20}
# For "a plateau detected and acted on": the update-ratio rule (lr_too_low) would raise the LR at
# the first flush, before any plateau can be called, so it is sampled too rarely to fire; the
# plateau then calls the ladder's measuring rung, an LR range test, which the probe budget allows
# this early only at 1.0.
PLATEAU_KW: dict[str, Any] = {**RESCUE_KW, "update_ratio_every": 10**6, "probe_budget": 1.0}
DDP_STEPS = 400
DDP_TIMEOUT_S = 240


def regression_set(n: int, seed: int, noise: tuple[float, ...] = (0.1,)) -> TensorDataset:
    """``y = x·W + noise``; sample ``i`` has noise scale ``noise[i % len(noise)]``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.linspace(-1.0, 1.0, 12).reshape(4, 3)
    scale = torch.tensor(noise).repeat(math.ceil(n / len(noise)))[:n].unsqueeze(1)
    return TensorDataset(x, x @ w + scale * torch.randn(n, 3, generator=g))


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / WARMUP)


class Stuck(L.LightningModule):
    """The stuck regression; ``warmup`` adds a per-step LambdaLR, ``log_val`` logs val_loss."""

    def __init__(self, *, warmup: bool = False, log_val: bool = True) -> None:
        super().__init__()
        self.net = mlp()
        self.warmup = warmup
        self.log_val = log_val

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss: torch.Tensor = F.mse_loss(self(x), y)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        if self.log_val:
            self.log("val_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.5)
        if not self.warmup:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class LRRecorder(L.Callback):
    """Per optimizer step: the schedule's LR, unstuck's factor and the LR the update used.

    Goes after the UnstuckCallback, so its step pre-hook runs after the LR multiplier's.
    """

    def __init__(self) -> None:
        self.schedule: list[float] = []
        self.factor: list[float] = []
        self.effective: list[float] = []
        self.val_logged: list[tuple[int, float]] = []  # callback_metrics["val_loss"] per check

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def pre(optimizer: Any, args: Any, kwargs: Any) -> None:
            self.effective.append(float(optimizer.param_groups[0]["lr"]))

        trainer.optimizers[0].register_step_pre_hook(pre)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            step = trainer.global_step - 1  # the last optimizer step, as guard.validate counts
            self.val_logged.append((step, float(trainer.callback_metrics["val_loss"])))

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        guard = _unstuck(trainer).guard
        assert guard is not None
        self.schedule.append(float(trainer.optimizers[0].param_groups[0]["lr"]))
        self.factor.append(guard._lr.current())  # the factor the next step will use


def _unstuck(trainer: L.Trainer) -> UnstuckCallback:
    return next(c for c in trainer.callbacks if isinstance(c, UnstuckCallback))  # type: ignore[attr-defined]


def make_trainer(callbacks: list[Any], **kw: Any) -> L.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        **kw,
    }
    return L.Trainer(callbacks=callbacks, **options)


@pytest.fixture(autouse=True)
def _quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# --------------------------------------------------------------------------- one process


def test_a_lightning_run_decides_exactly_as_a_plain_guard_loop() -> None:
    """Gradients read in on_before_optimizer_step and losses from the step outputs are the
    plain loop's, to the bit: the same series, findings, actions and weights. (Read in the
    optimizer's pre-hook instead, every gradient would be the previous step's.)"""
    steps = 300
    data = regression_set(BATCH * steps, seed=0)
    kw = {**RESCUE_KW, "grad_norm_every": 1, "console": False}
    callback = UnstuckCallback(policy="rescue", log_lr_multiplier=False, **kw)
    module = Stuck()
    make_trainer([callback], max_steps=steps).fit(module, DataLoader(data, batch_size=BATCH))

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.5)
    guard = unstuck.Guard(model, optimizer, policy="rescue", **kw)
    for x, y in DataLoader(data, batch_size=BATCH):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(loss)
    guard.close()

    ours = callback.guard
    assert ours is not None
    assert ours.steps == guard.steps == steps
    assert ours.actions, "the stuck run must be rescued"
    assert ours.actions == guard.actions
    assert ours.findings == guard.findings
    assert ours.plateaus == guard.plateaus
    for name in ("loss", "grad_norm", "update_ratio", "param_distance", "lr/0"):
        a, b = ours.evidence.series(name), guard.evidence.series(name)
        assert np.array_equal(a[0], b[0]), name
        assert np.array_equal(a[1], b[1]), name
    assert all(torch.equal(p, q) for p, q in zip(module.net.parameters(), model.parameters()))


def test_plateau_is_acted_on_and_the_schedule_keeps_running(tmp_path: pathlib.Path) -> None:
    steps, val_every = 600, 50
    callback = UnstuckCallback(
        policy="rescue", run_dir=tmp_path, report=False, console=False, **PLATEAU_KW
    )
    recorder = LRRecorder()
    trainer = make_trainer(
        [callback, recorder], max_steps=steps, val_check_interval=val_every, limit_val_batches=2
    )
    train = DataLoader(regression_set(BATCH * steps, seed=0), batch_size=BATCH)
    val = DataLoader(regression_set(2 * BATCH, seed=1), batch_size=BATCH)
    trainer.fit(Stuck(warmup=True), train, val)  # with the default 2-batch sanity check

    guard = callback.guard
    assert guard is not None
    train_plateaus = [p for p in guard.plateaus if p.series == "train"]
    assert train_plateaus, f"no plateau: {guard!r}"
    first = train_plateaus[0]
    assert first.detected_at is not None
    acted = [a for a in guard.actions if a.step >= first.detected_at]
    assert acted, f"plateau at {first.detected_at} but actions {guard.actions}"
    # The configured schedule produced its own values, step by step ...
    assert len(recorder.schedule) == len(recorder.effective) == steps
    assert recorder.schedule == [LR * warmup(s) for s in range(steps)]
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.get_last_lr() == [LR * warmup(steps)]
    # ... and every update used schedule × unstuck's factor, which did change.
    for s, (lr, factor, used) in enumerate(
        zip(recorder.schedule, recorder.factor, recorder.effective)
    ):
        assert used == pytest.approx(lr * factor, rel=1e-12), s
    assert any(f != 1.0 for f in recorder.factor)
    assert optimizer_lr(trainer) == LR * warmup(steps)  # the multiplier never stays in the group
    # Validation came from callback_metrics after each check (not from the sanity check); a
    # value taken while a probe ran is recorded apart and decides nothing.
    stored = read_metrics(tmp_path, names=["val_loss", "val_loss_probe"])
    validated = sorted(zip(*stored["val_loss"]), key=lambda r: r[0])
    validated += list(zip(*stored.get("val_loss_probe", ([], []))))
    assert [s for s, _ in sorted(validated)] == [s for s, _ in recorder.val_logged]
    assert [v for _, v in sorted(validated)] == pytest.approx([v for _, v in recorder.val_logged])
    assert [s for s, _ in recorder.val_logged] == [k * val_every - 1 for k in range(1, 13)]


def optimizer_lr(trainer: L.Trainer) -> float:
    return float(trainer.optimizers[0].param_groups[0]["lr"])


def test_gradients_are_read_before_lightning_clips(caplog: pytest.LogCaptureFixture) -> None:
    """Pre-clip norms, Lightning's clipping recorded for the over-clipping rule, its threshold
    scaled by the rescue's clip factor and put back after fit; a missing val metric warns once."""
    steps, clip = 48, 1e-3
    callback = UnstuckCallback(flush_every=8, grad_norm_every=1, console=False)
    trainer = make_trainer(
        [callback],
        max_steps=steps,
        gradient_clip_val=clip,
        val_check_interval=16,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    data = DataLoader(regression_set(BATCH * steps, seed=0), batch_size=BATCH)
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        trainer.fit(Stuck(log_val=False), data, data)
    guard = callback.guard
    assert guard is not None
    norms = guard.evidence.series("grad_norm")[1]
    assert len(norms) == steps
    assert (norms > 100 * clip).all()  # read before clipping: clipped norms would be ≤ clip
    rate = guard.evidence.series("clip_rate")[1]
    assert rate.size and (rate == 1.0).all()
    assert (guard.evidence.series("clip_threshold")[1] == clip).all()
    assert trainer.gradient_clip_val == clip
    missing = [r for r in caplog.records if "val_loss" in r.getMessage()]
    assert len(missing) == 1
    assert "callback_metrics" in missing[0].getMessage()

    # The clip_adjust action's factor reaches Lightning's threshold from the next step on.
    callback = UnstuckCallback(flush_every=8, console=False, monitor_val=None)
    clipped: list[float] = []

    class Adjust(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            guard = callback.guard
            assert guard is not None
            guard._clip.set(4.0)  # what clip_adjust does

            def post(optimizer: Any, args: Any, kwargs: Any) -> None:
                grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
                clipped.append(float(torch.nn.utils.get_total_norm(grads)))

            trainer.optimizers[0].register_step_post_hook(post)

    trainer = make_trainer([callback, Adjust()], max_steps=4, gradient_clip_val=clip)
    trainer.fit(Stuck(), data)
    assert clipped == pytest.approx([4 * clip] * 4, rel=1e-5)
    assert trainer.gradient_clip_val == clip


def test_amp_gradients_arrive_unscaled_and_the_scaler_is_watched() -> None:
    """Under 16-bit AMP with a GradScaler (on CPU here), Lightning unscales before
    on_before_optimizer_step: the Guard reads true gradient norms, not ×4096 ones, and gets the
    scaler for its snapshots and the loss-scale signal."""
    from lightning.pytorch.plugins import MixedPrecision

    steps, scale = 20, 2.0**12
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    callback = UnstuckCallback(flush_every=5, grad_norm_every=1, precision_every=1, console=False)
    trainer = make_trainer(
        [callback], max_steps=steps, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    )
    data = DataLoader(regression_set(BATCH * steps, seed=0), batch_size=BATCH)
    trainer.fit(Stuck(), data)
    guard = callback.guard
    assert guard is not None
    assert guard.scaler is scaler
    norms = guard.evidence.series("grad_norm")[1]
    assert len(norms) == steps
    assert norms.min() > 0.1 and norms.max() < 10  # scaled gradients would be ~4096 times this
    assert (guard.evidence.series("loss_scale")[1] == scale).all()


def test_accumulated_micro_batches_make_one_guard_step() -> None:
    """With accumulate_grad_batches=k the Guard steps once per optimizer step, on the mean of
    the k micro-batch losses (Lightning hands each over divided by k)."""
    batches, k = 30, 3

    class Recording(Stuck):
        def __init__(self) -> None:
            super().__init__()
            self.losses: list[float] = []  # every micro-batch loss

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.losses.append(float(loss.detach()))
            return loss

    module = Recording()
    callback = UnstuckCallback(flush_every=5, console=False)
    data = DataLoader(regression_set(BATCH * batches, seed=0), batch_size=BATCH)
    make_trainer([callback], max_epochs=1, accumulate_grad_batches=k).fit(module, data)
    guard = callback.guard
    assert guard is not None
    assert guard.steps == batches // k
    steps, values = guard.evidence.series("loss")
    assert steps.tolist() == list(range(batches // k))
    expected = np.asarray(module.losses).reshape(-1, k).mean(axis=1)
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_every_scheduler_of_the_optimizer_is_in_snapshots_and_a_stop_ends_fit() -> None:
    """Two schedulers on the watched optimizer are snapshotted as one; a stop the rescue asks
    for (keep_best_and_stop) ends Trainer.fit at that step."""

    class TwoSchedules(Stuck):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.5)
            first = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
            second = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
            configs = [{"scheduler": s, "interval": "step"} for s in (first, second)]
            return [optimizer], configs

    callback = UnstuckCallback(flush_every=5, console=False)

    class StopAt(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            guard = callback.guard
            assert guard is not None
            if guard.steps == 7:
                guard._stop.request("test: keep_best_and_stop")

    trainer = make_trainer([callback, StopAt()], max_steps=50)
    trainer.fit(TwoSchedules(), DataLoader(regression_set(BATCH * 50, seed=0), batch_size=BATCH))
    guard = callback.guard
    assert guard is not None
    assert guard.steps == 8 and trainer.global_step == 8  # stopped after the step it was asked
    schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
    snapshot = guard.scheduler.state_dict()
    assert [s["last_epoch"] for s in snapshot["schedulers"]] == [8, 8]
    for s in schedulers:
        s.step()
    guard.scheduler.load_state_dict(snapshot)
    assert [s.last_epoch for s in schedulers] == [8, 8]


# --------------------------------------------------------------------------- the rewind's skip


class AdamStuck(Stuck):
    """Adam (per-parameter moments and step counts to keep still) and a per-step warmup."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _optimizer_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of the optimizer's per-parameter state (moments and step counts), copied."""
    return [
        value.detach().clone()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]


class SkipAfter(L.Callback):
    """After optimizer step ``at``, asks the Guard to skip ``k`` steps (what a rewind asks), and
    keeps the weights and the optimizer state after every optimizer step (``global_step``)."""

    def __init__(self, at: int, k: int) -> None:
        self.at, self.k = at, k
        self.kept: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self.token: dict[str, Any] = {}  # what the rewind records about the skip

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if step in self.kept:
            return  # a later micro-batch of the next optimizer step
        self.kept[step] = (_params(pl_module), _optimizer_state(trainer.optimizers[0]))
        if step == self.at:  # the rewind action, as the engine applies it after restoring
            guard = _unstuck(trainer).guard
            assert guard is not None
            self.token = Rewind().apply(guard._engine.controls, {"skip": self.k})


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "options",
    [{}, {"accumulate_grad_batches": 2}, {"precision": "bf16-mixed"}, {"fp16": True}],
    ids=["plain", "accumulation", "bf16", "fp16-scaler"],
)
def test_skipped_steps_leave_weights_and_optimizer_state_untouched(options: dict[str, Any]) -> None:
    """Lightning cannot leave a batch out: the callback drops the step's gradients, so Adam
    passes over every parameter (weights, moments and step counts bit-identical), the skipped
    losses are not fed and the steps are hidden from the signals; the next step trains again.
    The schedule advances through the skipped steps (Lightning steps it every optimizer step).
    With accumulation one skip is one optimizer step of two micro-batches; under 16-bit AMP the
    GradScaler still steps and updates."""
    from lightning.pytorch.plugins import MixedPrecision

    kw = dict(options)
    if kw.pop("fp16", False):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        kw["plugins"] = [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    steps, at, k = 12, 4, 3
    micro = int(kw.get("accumulate_grad_batches", 1))
    skip = SkipAfter(at, k)
    callback = UnstuckCallback(
        flush_every=4, grad_norm_every=1, optimizer_state_every=1, console=False, monitor_val=None
    )
    trainer = make_trainer([callback, skip], max_steps=steps, **kw)
    data = DataLoader(regression_set(BATCH * steps * micro, seed=0), batch_size=BATCH)
    trainer.fit(AdamStuck(), data)

    guard = callback.guard
    assert guard is not None
    kept = skip.kept
    for step in range(at + 1, at + k + 1):  # the skipped steps changed nothing ...
        assert _same(kept[step][0], kept[at][0]), step
        assert _same(kept[step][1], kept[at][1]), step
    assert not _same(kept[at + k + 1][0], kept[at + k][0])  # ... and the next one trains
    assert not _same(kept[at + k + 1][1], kept[at + k][1])
    assert not _same(kept[at][0], kept[at - 1][0])
    assert trainer.global_step == steps  # the Trainer counts the skipped steps ...
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == steps  # ... and so does the LR
    assert guard.steps == guard.optimizer_steps == steps - k  # the Guard sees none of them
    assert guard.evidence.series("loss")[0].tolist() == list(range(steps - k))
    assert len(guard.evidence.series("grad_norm")[1]) == steps - k
    # Adam's step counts and the Guard's agree: a skipped step counted by the Guard's hooks
    # would read as optimizer state that lags (lost) by k steps.
    assert (guard.evidence.series("optimizer_step_lag")[1] == 0).all()
    assert skip.token == {"skip_before": 0, "skip_batches": k, "skip_owned": True}
    assert guard.state_dict()["controls"]["skip"] == {"remaining": 0, "owned": True}


# The spike of tests/test_spike_rewind.py's real loop, under Lightning: a small MLP regression
# under Adam, 1000 steps, the LR raised geometrically to ×100 over steps 600-700 (by the
# Trainer's step, which counts skipped steps, as that loop's step does).
SPIKE_STEPS, SPIKE_FROM, SPIKE_TO, SPIKE_PEAK = 1000, 600, 700, 100.0
# As there: the rewound run ends within 25 % of the spike-free one (seed 0: 1.15 times).
SPIKE_TOLERANCE = 1.25


def _spike_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, TensorDataset]:
    """The whole set and the 1000 batches of 32 drawn from it, one per step."""
    torch.manual_seed(seed)
    x = torch.randn(2048, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(2048, 1)
    idx = torch.randint(0, 2048, (SPIKE_STEPS, 32), generator=torch.Generator().manual_seed(seed))
    return x, y, TensorDataset(x[idx], y[idx])


def _spike_net(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def _spike_lr(step: int) -> float:
    if not SPIKE_FROM <= step < SPIKE_TO:
        return 1e-2
    return 1e-2 * SPIKE_PEAK ** ((step - SPIKE_FROM) / (SPIKE_TO - SPIKE_FROM))


def _plain_spike_run(seed: int, spike: bool) -> float:
    """The same run in a plain loop (no unstuck): the final loss on the whole set."""
    x, y, batches = _spike_data(seed)
    model = _spike_net(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step, (xb, yb) in enumerate(batches):
        optimizer.param_groups[0]["lr"] = _spike_lr(step) if spike else 1e-2
        loss = F.mse_loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(F.mse_loss(model(x), y))


class Spiked(L.LightningModule):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.net = _spike_net(seed)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss: torch.Tensor = F.mse_loss(self.net(x), y)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class SpikeLR(L.Callback):
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        trainer.optimizers[0].param_groups[0]["lr"] = _spike_lr(trainer.global_step)


def test_a_spike_under_lightning_is_rewound_past_and_its_batches_skipped() -> None:
    """End to end: the spike is confirmed, the rewind returns to a state before it and asks to
    skip the steps rewound; the callback skips exactly those (their losses never reach the
    Guard) and the run ends near the spike-free one, while the spike alone ruins it."""
    seed = 0
    x, y, batches = _spike_data(seed)
    callback = UnstuckCallback(
        policy="rescue", console=False, monitor_val=None, log_lr_multiplier=False
    )
    module = Spiked(seed)
    trainer = make_trainer([callback, SpikeLR()], max_steps=SPIKE_STEPS)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    with torch.no_grad():
        rescued = float(F.mse_loss(module.net(x), y))
    guard = callback.guard
    assert guard is not None
    rewinds = [a for a in guard.actions if a.name == "rewind"]
    assert len(rewinds) == 1 and rewinds[0].outcome == "kept"
    evidence = rewinds[0].evidence
    assert int(evidence["restored_last_good_step"]) < SPIKE_FROM <= rewinds[0].step
    assert evidence["skip_owned"] is True and int(evidence["skip_batches"]) > 0
    assert guard.steps == SPIKE_STEPS - int(evidence["skip_batches"])  # all skipped, unseen
    clean, spiked = _plain_spike_run(seed, spike=False), _plain_spike_run(seed, spike=True)
    assert spiked > 10 * clean
    assert rescued <= SPIKE_TOLERANCE * clean


# --------------------------------------------------------------------------- resume


RESUME_EPOCH = 60  # batches per epoch: Lightning resumes a plain DataLoader at an epoch start
RESUME_SPLIT = 60  # inside the horizon of the lr_scale taken at step 39 (verdict at 99)
RESUME_TOTAL = 180


def _resume_fit(
    max_steps: int, tmp: pathlib.Path, ckpt_path: str | None = None
) -> tuple[UnstuckCallback, Stuck, L.Trainer]:
    callback = UnstuckCallback(policy="rescue", console=False, **RESCUE_KW)
    checkpoints = ModelCheckpoint(dirpath=tmp, every_n_epochs=1, save_top_k=-1)
    trainer = make_trainer(
        [callback, checkpoints],
        max_steps=max_steps,
        enable_checkpointing=True,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    train = DataLoader(regression_set(BATCH * RESUME_EPOCH, seed=0), batch_size=BATCH)
    val = DataLoader(regression_set(BATCH, seed=1), batch_size=BATCH)
    module = Stuck(warmup=True)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return callback, module, trainer


def test_resume_from_a_checkpoint_restores_the_callback_state(tmp_path: pathlib.Path) -> None:
    full, full_module, _ = _resume_fit(RESUME_TOTAL, tmp_path / "full")
    first, _, _ = _resume_fit(RESUME_SPLIT, tmp_path / "split")
    path = tmp_path / "split" / f"epoch=0-step={RESUME_SPLIT}.ckpt"

    ckpt = torch.load(path, weights_only=True)  # the whole Lightning checkpoint
    saved = ckpt["callbacks"][first.state_key]["guard"]
    assert saved["hub"]["step"] == RESUME_SPLIT
    assert [a["outcome"] for a in saved["actions"]] == ["pending"]  # mid-horizon: the hard case

    resumed, module, _ = _resume_fit(RESUME_TOTAL, tmp_path / "split", ckpt_path=str(path))
    a, b = resumed.guard, full.guard
    assert a is not None and b is not None
    assert a.steps == b.steps == RESUME_TOTAL
    assert len(b.actions) >= 2
    assert a.actions == b.actions  # including the verdict on the action taken before the split
    assert a.findings == b.findings
    assert a.plateaus == b.plateaus
    assert a.lr_multiplier == b.lr_multiplier
    assert all(torch.equal(p, q) for p, q in zip(_params(module), _params(full_module)))


def test_arguments_and_state_are_checked() -> None:
    with pytest.raises(TypeError, match="optimizer= comes from the Trainer"):
        UnstuckCallback(optimizer=None)
    with pytest.raises(TypeError, match="accumulate_grad_batches"):
        UnstuckCallback(accumulation_steps=2)
    with pytest.raises(TypeError, match="unknown Guard option 'flush'"):
        UnstuckCallback(flush=5)
    with pytest.raises(ValueError, match="optimizer_index"):
        UnstuckCallback(optimizer_index=-1)
    callback = UnstuckCallback()
    assert callback.state_dict() == {}
    callback.load_state_dict({})  # a checkpoint saved before any fit
    with pytest.raises(ValueError, match="state version 99"):
        callback.load_state_dict({"version": 99, "guard": {}})
    assert UnstuckCallback(optimizer_index=1).state_key != callback.state_key

    callback = UnstuckCallback(optimizer_index=1, console=False)
    data = DataLoader(regression_set(BATCH * 2, seed=0), batch_size=BATCH)
    with pytest.raises(ValueError, match="optimizer_index=1 but the Trainer has 1"):
        make_trainer([callback], max_steps=2).fit(Stuck(), data)


def test_import_unstuck_does_not_import_lightning() -> None:
    code = (
        "import sys, unstuck; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning'}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- ddp_spawn


class RankReport(L.Callback):
    """Writes what this rank saw and decided to ``out/rank<global_rank>.json`` (ddp_spawn runs
    fit in spawned processes, so nothing comes back to the test in memory)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.recorder = LRRecorder()
        self.local_losses: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.set_num_threads(1)
        # A hung collective: every thread's stack on stderr, and the rank exits (the test
        # fails with the stacks instead of waiting for its own timeout).
        faulthandler.dump_traceback_later(DDP_TIMEOUT_S - 60, exit=True)
        self.recorder.on_train_start(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.recorder.on_train_batch_start(trainer, *args)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, *args: Any
    ) -> None:
        self.local_losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        guard = _unstuck(trainer).guard  # closed by now: the callback comes first
        assert guard is not None
        report = {
            "rank": trainer.global_rank,
            "world": trainer.world_size,
            "effective_lr": self.recorder.effective,
            "schedule_lr": self.recorder.schedule,
            "actions": [a.to_dict() for a in guard.actions],
            "plateaus": [[p.series, p.start, p.detected_at, p.kind] for p in guard.plateaus],
            "findings": [f.cause for f in guard.findings],
            "lr_multiplier": guard.lr_multiplier,
            "steps": guard.steps,
            "params": [p.detach().double().flatten().tolist() for p in pl_module.parameters()],
            "local_loss": float(np.mean(self.local_losses)),
        }
        pathlib.Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning's last collective is behind us (the strategy tore down before this hook).
        # Without this, gloo's threads sometimes abort the worker at interpreter exit
        # ("terminate called without an active exception"), after all the work was written.
        faulthandler.cancel_dump_traceback_later()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class PerRank(Stuck):
    """Each rank loads its own data (``use_distributed_sampler=False``): rank 1's targets are
    20× noisier than rank 0's, so ranks deciding on their own losses would disagree (and then
    hang in mismatched collectives)."""

    def train_dataloader(self) -> DataLoader[Any]:
        rank = self.trainer.global_rank
        data = regression_set(BATCH * DDP_STEPS, seed=rank, noise=(0.1 if rank == 0 else 2.0,))
        return DataLoader(data, batch_size=BATCH)

    def val_dataloader(self) -> DataLoader[Any]:
        rank = self.trainer.global_rank
        return DataLoader(regression_set(BATCH, seed=100 + rank), batch_size=BATCH)


def ddp_main(out: str) -> None:
    """The ddp_spawn run, called in a subprocess by the test."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    callback = UnstuckCallback(policy="rescue", console=False, **PLATEAU_KW)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        use_distributed_sampler=False,
        max_steps=DDP_STEPS,
        val_check_interval=50,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback, RankReport(out)],
    )
    trainer.fit(PerRank(warmup=True))


def test_ddp_spawn_ranks_end_identical(tmp_path: pathlib.Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
    }
    code = f"import test_lightning; test_lightning.ddp_main({str(tmp_path)!r})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=TESTS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the spawned ranks go with it on timeout
    )
    try:
        output, _ = proc.communicate(timeout=DDP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"ddp_spawn did not finish in {DDP_TIMEOUT_S} s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    # The ranks saw different data ...
    assert r1["local_loss"] > 2 * r0["local_loss"]
    # ... and still decided as one: the same plateau, actions, LR on every step, weights.
    assert r0["plateaus"] and r0["plateaus"] == r1["plateaus"]
    assert r0["actions"] == r1["actions"]
    detected = r0["plateaus"][0][2]
    assert any(a["step"] >= detected for a in r0["actions"]), r0["actions"]
    assert len(r0["effective_lr"]) == DDP_STEPS
    assert r0["effective_lr"] == r1["effective_lr"]
    assert r0["schedule_lr"] == [LR * warmup(s) for s in range(DDP_STEPS)]
    assert r0["effective_lr"] != r0["schedule_lr"]  # unstuck changed the LR
    assert r0["lr_multiplier"] == r1["lr_multiplier"]
    assert r0["findings"] == r1["findings"]
    assert r0["params"] == r1["params"]


# --------------------------------------------------------------------------- the docs


def test_the_docs_example_runs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docs" / "lightning.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(example, "docs/lightning.md", "exec"), namespace)
    callback = namespace["callback"]
    assert callback.guard.actions
    assert (tmp_path / "runs" / "lightning" / "unstuck.sqlite").exists()


CONSOLE_SCRIPT = """
import logging, torch, torch.nn.functional as F
import lightning as L
from torch.utils.data import DataLoader, TensorDataset
from unstuck.integrations.lightning import UnstuckCallback

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
g = torch.Generator().manual_seed(0)
x = torch.randn(2048, 4, generator=g)
data = TensorDataset(x, x @ torch.linspace(-1.0, 1.0, 12).reshape(4, 3))

class Stuck(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layers = [torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)]
        self.net = torch.nn.Sequential(*layers)
    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.net(batch[0]), batch[1])
    def validation_step(self, batch, batch_idx):
        pass  # logs no val_loss: the callback warns once
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-6)

trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_model_summary=False, max_steps=256, limit_val_batches=1,
                    val_check_interval=100, callbacks=[UnstuckCallback(flush_every=32)])
trainer.fit(Stuck(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
"""


def _run_in_a_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on one pseudo-terminal, as a user's shell shows it
    (progress bars draw live only on a terminal)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while select.select([master], [], [], timeout)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_console_lines_are_whole_and_above_the_progress_bar(tmp_path: pathlib.Path) -> None:
    """On a terminal with Lightning's live progress bar, every unstuck line starts a line of its
    own (the bar cleared first), the missing-validation warning is one complete sentence, and
    no line says 'unstuck: unstuck:'."""
    script = tmp_path / "fit.py"
    script.write_text(CONSOLE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    code, out = _run_in_a_terminal([sys.executable, str(script)], env, timeout=240)
    assert code == 0, out[-2000:]
    starts = [i for i in range(len(out)) if out.startswith("unstuck:", i)]
    assert starts, out[-2000:]
    for i in starts:
        before = out[max(0, i - 4) : i]
        assert i == 0 or before.endswith(("\n", "\r", "\x1b[2K")), (
            f"glued onto the bar: {out[max(0, i - 60) : i + 40]!r}"
        )
    assert "unstuck: unstuck:" not in out
    # The bar's console wraps long lines at the terminal's width: read the text unwrapped.
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\r|\n", "", out)
    assert text.count("callback_metrics") == 1
    squeezed = re.sub(r"\s", "", text)  # wrapping drops the space it broke the line at
    assert "passmonitor_val=<thenameyoulog>,ormonitor_val=None" in squeezed, text
    assert "summary after 256 steps" in text


def test_console_prefix_is_never_doubled() -> None:
    from unstuck.record.console import _PrefixFormatter

    formatter = _PrefixFormatter()
    for message in ("step 49 plateau", "unstuck: PlateauScheduler did not cut"):
        record = logging.LogRecord("unstuck", logging.WARNING, __file__, 1, message, (), None)
        assert formatter.format(record).count("unstuck: ") == 1
