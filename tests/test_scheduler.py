"""PlateauScheduler: torch's ReduceLROnPlateau where it agrees, unstuck's detector where it waits.

Parity with torch is shown by driving both with the same metrics while the detector is replaced
by one that always says "stalled": every counter, every LR, every cut must then be torch's.
The differences are shown on the series where torch's rule misfires (REFERENCE.md §1b, §2).
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import math
import pathlib
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from conftest import require
from unstuck import PlateauScheduler
from unstuck.types import Plateau

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
N = 400  # metric calls in the synthetic scenarios: long enough for the detector's windows


def optimizer(lrs: tuple[float, ...] = (1.0,), size: int = 100, **kw: Any) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.ones(size))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], **kw)


def lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in opt.param_groups]


class AlwaysStalled:
    """A detector that always calls a mid-run plateau: the scheduler must then be torch's."""

    state = "plateau"
    current = Plateau("metric", 0, None, "mid", 1.0, 0)
    n_points, min_points = 10**9, 8  # always able to judge

    def update(self, step: Any, value: Any, *, distance: Any = None) -> str:
        return self.state

    def state_dict(self) -> dict[str, Any]:
        return {}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def run_pair(series: list[float], move: float = 0.0, **kw: Any) -> tuple[PlateauScheduler, Any]:
    """Ours and torch's on the same metrics; ``move`` shifts our parameters each call."""
    ours = PlateauScheduler(optimizer(), **kw)
    theirs = ReduceLROnPlateau(optimizer(), **kw)
    param = ours.optimizer.param_groups[0]["params"][0]
    for value in series:
        with torch.no_grad():
            param.add_(move)
        ours.step(value)
        theirs.step(value)
    return ours, theirs


def falls_then_flat(seed: int, n: int = N) -> list[float]:
    rng = np.random.default_rng(seed)
    return [(math.exp(-i / 30) + 0.1) * (1 + 0.02 * rng.standard_normal()) for i in range(n)]


# -- the torch API --------------------------------------------------------------------------------
def test_is_a_reduce_lr_on_plateau_with_torchs_arguments() -> None:
    ours = inspect.signature(PlateauScheduler).parameters
    theirs = inspect.signature(ReduceLROnPlateau).parameters
    assert list(ours)[: len(theirs)] == list(theirs)  # same names, same order
    for name, param in theirs.items():
        assert ours[name].default == param.default, name
    scheduler = PlateauScheduler(optimizer(), "max", 0.5, 3, 1e-3, "abs", 2, 0.01, 1e-6)
    assert isinstance(scheduler, ReduceLROnPlateau)
    assert (scheduler.mode, scheduler.factor, scheduler.patience) == ("max", 0.5, 3)
    assert (scheduler.threshold, scheduler.threshold_mode, scheduler.cooldown) == (1e-3, "abs", 2)
    assert (scheduler.min_lrs, scheduler.eps, scheduler.last_epoch) == ([0.01], 1e-6, 0)
    assert scheduler.get_last_lr() == [1.0]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"factor": 1.0}, ValueError),
        ({"mode": "up"}, ValueError),
        ({"threshold_mode": "pct"}, ValueError),
        ({"min_lr": [0.1, 0.2]}, ValueError),
        ({"warmup_steps": -1}, ValueError),
        ({"warmup_steps": 2.5}, ValueError),
        ({"warmup_start_factor": 1.5}, ValueError),
        ({"detector_options": "fast"}, TypeError),
        ({"detector_options": {"min_points": 2}}, ValueError),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        PlateauScheduler(optimizer(), **kwargs)
    if "warmup" not in str(kwargs) and "detector" not in str(kwargs):
        with pytest.raises(error):  # what torch rejects, torch's way
            ReduceLROnPlateau(optimizer(), **kwargs)


def test_rejects_a_non_optimizer() -> None:
    with pytest.raises(TypeError, match="Optimizer"):
        PlateauScheduler(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


PARITY = [
    {},
    {"mode": "max"},
    {"threshold_mode": "abs", "threshold": 0.05},
    {"mode": "max", "threshold_mode": "abs", "threshold": 0.05, "cooldown": 3},
    {"patience": 0, "cooldown": 2, "factor": 0.5, "min_lr": [0.3, 0.001]},
    {"patience": 2, "factor": 0.9, "eps": 0.05},
    {"patience": 1, "factor": 0.5, "min_lr": 0.2},
]


@pytest.mark.parametrize("kwargs", PARITY, ids=[json.dumps(k) for k in PARITY])
def test_is_torch_when_the_detector_agrees(kwargs: dict[str, Any]) -> None:
    """mode, threshold, patience, cooldown, per-group min_lr, eps: all torch's own behaviour."""
    ours = PlateauScheduler(optimizer((1.0, 0.1)), **kwargs)
    ours.detector = AlwaysStalled()  # type: ignore[assignment]
    theirs = ReduceLROnPlateau(optimizer((1.0, 0.1)), **kwargs)
    rng = np.random.default_rng(1)
    values = np.cumsum(rng.standard_normal(300) * 0.1).tolist()
    values[40:45] = [float("nan")] * 5  # torch counts a NaN as a bad epoch; so do we
    values[100:120] = [values[99]] * 20  # ties are not improvements
    for value in values:
        ours.step(value)
        theirs.step(value)
        assert lrs(ours.optimizer) == lrs(theirs.optimizer)
        assert same(ours.best, theirs.best)
        assert ours.num_bad_epochs == theirs.num_bad_epochs
        assert ours.cooldown_counter == theirs.cooldown_counter
        assert ours.last_epoch == theirs.last_epoch
        assert ours.get_last_lr() == theirs.get_last_lr()
    assert len(ours.cuts) >= 1  # the configurations above all cut at least once


def test_accepts_a_tensor_metric_and_a_tensor_lr() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([param], lr=torch.tensor(0.1))
    scheduler = PlateauScheduler(opt, patience=0, factor=0.5, warmup_steps=2)
    assert float(opt.param_groups[0]["lr"]) == 0.0
    scheduler.step()
    scheduler.step()
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # filled in place
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.1)
    scheduler.detector = AlwaysStalled()  # type: ignore[assignment]
    scheduler.step(torch.tensor(1.0))
    scheduler.step(torch.tensor(2.0))
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.05)
    assert isinstance(scheduler.get_last_lr()[0], torch.Tensor)
    assert scheduler.state_dict()["_last_lr"] == [pytest.approx(0.05)]


# -- where it deliberately differs ----------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_cuts_once_the_metric_has_flattened(seed: int) -> None:
    ours, theirs = run_pair(falls_then_flat(seed), factor=0.5, min_lr=0.2)
    plateau = ours.detector.plateaus[0]
    assert plateau.kind == "mid"
    first = ours.cuts[0]
    assert first["step"] >= plateau.start
    assert first["state"] == "plateau"
    assert first["lrs"] == [0.5]
    assert lrs(ours.optimizer) == [0.2]  # halved down to min_lr, no further
    assert [c["lrs"][0] for c in ours.cuts] == [0.5, 0.25, 0.2]
    assert lrs(theirs.optimizer) == [0.2]  # torch got there too ...
    torch_first = ReduceLROnPlateau(optimizer(), factor=0.5)
    for value in falls_then_flat(seed):
        torch_first.step(value)
        if lrs(torch_first.optimizer) != [1.0]:
            break
    assert torch_first.last_epoch <= first["step"]  # ... and no later: we never cut sooner


def test_cooldown_and_patience_space_the_cuts() -> None:
    ours, _ = run_pair(falls_then_flat(2), factor=0.9, patience=3, cooldown=5)
    steps = [c["step"] for c in ours.cuts]
    assert len(steps) >= 3
    assert min(np.diff(steps)) >= 5 + 3 + 1  # cooldown, then more than `patience` bad calls


def spike_then_descent(seed: int) -> list[float]:
    """pytorch#30873: a spike, then a steady descent that takes long to pass the old best."""
    rng = np.random.default_rng(seed)
    values = [1.0] * 5 + [5 * math.exp(-i / 100) for i in range(N)]
    return [v * (1 + 0.01 * rng.standard_normal()) for v in values]


def slow_creep(seed: int) -> list[float]:
    """A power law t^-0.3 under 3 % noise: progress smaller than the noise from call to call."""
    rng = np.random.default_rng(seed)
    return [(1 + i) ** -0.3 * (1 + 0.03 * rng.standard_normal()) for i in range(N)]


def flat_from_the_start(seed: int) -> list[float]:
    """Never fell: an LR too low, a saddle or a bad init holds it there."""
    rng = np.random.default_rng(seed)
    return [1 + 0.02 * rng.standard_normal() for _ in range(N)]


@pytest.mark.parametrize(
    ("series", "move"),
    [
        (spike_then_descent, 0.0),
        (slow_creep, 0.0),
        (flat_from_the_start, 0.0),
        (falls_then_flat, 0.01),  # flat metric, weights moving steadily: hidden progress
    ],
    ids=["spike-then-descent", "slow-creep", "early-plateau", "hidden-progress"],
)
def test_waits_where_torchs_rule_misfires(series: Any, move: float) -> None:
    for seed in (0, 1):
        ours, theirs = run_pair(series(seed), move=move, factor=0.5)
        assert lrs(theirs.optimizer) < [1.0]  # torch cut ...
        assert ours.cuts == [] and lrs(ours.optimizer) == [1.0]  # ... we waited
    if move:
        assert ours.detector.state == "hidden_progress"
        same_series_still, _ = run_pair(series(1), move=0.0, factor=0.5)
        assert same_series_still.cuts  # the same metric with still weights is cut


def test_max_mode_cuts_a_flat_accuracy_but_not_a_rising_one() -> None:
    rng = np.random.default_rng(0)
    saturating = [1 - 0.9 * math.exp(-i / 30) + 0.01 * rng.standard_normal() for i in range(N)]
    rising = [0.1 + 0.002 * i + 0.01 * rng.standard_normal() for i in range(N)]
    cut, _ = run_pair(saturating, mode="max", factor=0.5)
    kept, _ = run_pair(rising, mode="max", factor=0.5)
    assert cut.cuts and cut.cuts[0]["step"] > 100
    assert kept.cuts == []
    assert cut.detector.mode == "max"


def test_never_cuts_during_warmup() -> None:
    scheduler = PlateauScheduler(optimizer(), patience=0, warmup_steps=3)
    scheduler.detector = AlwaysStalled()  # type: ignore[assignment]
    for value in (1.0, 2.0):
        scheduler.step(value)
    assert scheduler.cuts == []
    scheduler.step(3.0)  # the third tick ends the warmup: no cut on the tick itself
    assert scheduler.cuts == [] and lrs(scheduler.optimizer) == [1.0]
    scheduler.step(4.0)
    assert len(scheduler.cuts) == 1 and lrs(scheduler.optimizer) == [pytest.approx(0.1)]


# -- warmup ---------------------------------------------------------------------------------------
def test_warmup_ticks_on_calls_without_a_metric() -> None:
    opt = optimizer((0.4, 0.04))
    scheduler = PlateauScheduler(opt, warmup_steps=4)
    assert lrs(opt) == [0.0, 0.0] and scheduler.get_last_lr() == [0.0, 0.0]
    seen = []
    for _ in range(6):
        scheduler.step()  # the de-facto convention: once per batch
        seen.append(lrs(opt))
        scheduler.step(1.0) if len(seen) == 2 else None  # a metric mid-warmup is no tick
    assert seen == [
        [pytest.approx(0.1), pytest.approx(0.01)],
        [pytest.approx(0.2), pytest.approx(0.02)],
        [pytest.approx(0.3), pytest.approx(0.03)],
        [pytest.approx(0.4), pytest.approx(0.04)],
        [pytest.approx(0.4), pytest.approx(0.04)],
        [pytest.approx(0.4), pytest.approx(0.04)],
    ]
    assert scheduler.get_last_lr() == lrs(opt)
    assert scheduler.last_epoch == 1  # counts metric calls, as torch's does


def test_warmup_ticks_on_metric_calls_when_the_caller_always_passes_one() -> None:
    """Lightning and the HF Trainer never call step() without the monitored metric."""
    opt = optimizer((1.0,))
    scheduler = PlateauScheduler(opt, warmup_steps=4, warmup_start_factor=0.2)
    assert lrs(opt) == [pytest.approx(0.2)]
    for expected in (0.4, 0.6, 0.8, 1.0, 1.0):
        scheduler.step(1.0)
        assert lrs(opt) == [pytest.approx(expected)]


# -- state ----------------------------------------------------------------------------------------
def primitives_only(value: Any, path: str = "state") -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: key {key!r}"
            primitives_only(item, f"{path}.{key}")
        return
    assert isinstance(value, list), f"{path}: {type(value).__name__}"
    for i, item in enumerate(value):
        primitives_only(item, f"{path}[{i}]")


def test_state_dict_is_primitives_and_a_superset_of_torchs() -> None:
    ours, _ = run_pair(falls_then_flat(0), factor=0.5)
    state = ours.state_dict()
    torch_keys = set(ReduceLROnPlateau(optimizer()).state_dict())
    assert torch_keys <= set(state)
    primitives_only(state)
    json.dumps(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert json.dumps(loaded, sort_keys=True) == json.dumps(state, sort_keys=True)
    assert state["detector"]["plateaus"] and state["cuts"] == ours.cuts
    assert len(state["reference"][0]) == 100  # θ₀ sample: every coordinate of a small model


def train(scheduler_state: dict[str, Any] | None, steps: range, checkpoint: dict[str, Any]) -> Any:
    """A noisy regression under SGD, stepping the scheduler with the loss every step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = PlateauScheduler(opt, factor=0.5, patience=5)
    if scheduler_state is not None:
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(scheduler_state)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.5 * torch.randn(4096, 1, generator=g)
    history = []
    for step in steps:
        rows = slice(step * 16 % 4096, step * 16 % 4096 + 16)
        loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step(loss)
        history.append((loss.item(), lrs(opt)[0], scheduler.detector.state))
    checkpoint.update(model=model.state_dict(), optimizer=opt.state_dict())
    return scheduler, history


def test_resume_continues_identically() -> None:
    whole, expected = train(None, range(600), {})
    assert whole.cuts  # the resumed run must reproduce a decision, not only agree on none
    split = whole.cuts[0]["step"] // 2  # the checkpoint comes before the first cut
    assert split >= 50
    checkpoint: dict[str, Any] = {}
    first, head = train(None, range(split), checkpoint)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed, tail = train(state, range(split, 600), checkpoint)
    assert head + tail == expected
    assert resumed.cuts == whole.cuts
    assert json.dumps(resumed.state_dict()) == json.dumps(whole.state_dict())


def test_loads_torchs_state_dict_and_rejects_another_models() -> None:
    theirs = ReduceLROnPlateau(optimizer(), patience=2)
    for value in (3.0, 2.0, 2.5, 2.6):
        theirs.step(value)
    ours = PlateauScheduler(optimizer())
    ours.load_state_dict(theirs.state_dict())
    assert (ours.best, ours.num_bad_epochs, ours.patience, ours.last_epoch) == (2.0, 2, 2, 4)
    assert ours.detector.n_points == 0  # a torch state carries no detector: it starts fresh
    with pytest.raises(ValueError, match="parameter sample"):
        PlateauScheduler(optimizer(size=7)).load_state_dict(ours.state_dict())


def test_large_models_keep_a_bounded_sample() -> None:
    params = [torch.nn.Parameter(torch.zeros(50_000)), torch.nn.Parameter(torch.zeros(10_000))]
    scheduler = PlateauScheduler(torch.optim.SGD(params, lr=0.1))
    reference = scheduler.state_dict()["reference"]
    assert sum(len(r) for r in reference) == pytest.approx(4096, abs=2)
    assert len(reference[0]) > len(reference[1])  # proportional to each tensor's size


# -- frameworks -----------------------------------------------------------------------------------
def test_lightning_steps_it_with_the_monitored_metric(tmp_path: pathlib.Path) -> None:
    require("lightning", "lightning")
    import lightning

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.5 * torch.randn(2048, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)

    class Regression(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            self.scheduler = PlateauScheduler(opt, factor=0.5, patience=5)
            config = {"scheduler": self.scheduler, "monitor": "train_loss", "interval": "step"}
            return {"optimizer": opt, "lr_scheduler": config}

    module = Regression()
    trainer = lightning.Trainer(
        max_steps=600,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    scheduler = module.scheduler
    assert trainer.lr_scheduler_configs[0].reduce_on_plateau  # Lightning's isinstance check
    assert scheduler.last_epoch == 600  # one step(metric) per optimizer step
    assert scheduler.detector.n_points == 600
    assert scheduler.cuts, "the regression reaches its noise floor: the LR is cut"
    first = scheduler.cuts[0]
    assert first["step"] > 100 and first["lrs"] == [0.025]
    assert trainer.optimizers[0].param_groups[0]["lr"] < 0.05
    # Lightning checkpoints the scheduler's state_dict; it loads back with weights_only.
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["lr_schedulers"][0]
    assert json.dumps(saved, sort_keys=True) == json.dumps(scheduler.state_dict(), sort_keys=True)


# -- the documentation ----------------------------------------------------------------------------
def test_docs_example_runs() -> None:
    text = (DOCS / "scheduler.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None
    namespace: dict[str, Any] = {"__name__": "docs_scheduler"}
    exec(compile(example.group(1), "docs/scheduler.md", "exec"), namespace)
    assert namespace["scheduler"].cuts  # the example's plateau is cut


def test_a_short_run_says_why_it_was_not_cut(caplog: pytest.LogCaptureFixture) -> None:
    """patience=2 on a 10-epoch run: torch's rule holds from epoch 3, but the trend test cannot
    judge 10 values; the scheduler says so once (and how to judge sooner) instead of nothing."""
    flat = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    scheduler = PlateauScheduler(optimizer((1.0,)), patience=2)
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        for value in flat:
            scheduler.step(value)
    warnings = [r.getMessage() for r in caplog.records if "PlateauScheduler" in r.getMessage()]
    assert len(warnings) == 1 and "needs 16 metric values" in warnings[0]
    assert "min_points': 4" in warnings[0] and "\n" not in warnings[0]
    assert not scheduler.judging() and scheduler.cuts == []
    shorter = PlateauScheduler(optimizer((1.0,)), patience=2, detector_options={"min_points": 4})
    rng = np.random.default_rng(0)
    for value in [2.0, 1.5] + [1.0 + 0.001 * rng.standard_normal() for _ in range(22)]:
        shorter.step(value)
    assert shorter.judging()
    assert shorter.cuts, "with min_points=4 a flat tail after a fall is cut within 24 epochs"
