"""The data taps: sample ids per nominal epoch, per-sample loss groups, loss components."""

from __future__ import annotations

import io
import math

import pytest
import torch

import unstuck
from unstuck.diagnose import run_rules
from unstuck.diagnose.evidence import EvidenceBuilder
from unstuck.signals import samples as samples_module
from unstuck.signals.components import LossComponentsTap
from unstuck.signals.hub import Frame
from unstuck.signals.samples import PERSIST_OBSERVATIONS, SamplesTap


def _feed(tap: SamplesTap, ids, losses=None, targets=None, step=0):
    ids_t = torch.as_tensor(ids)
    loss = torch.as_tensor(losses, dtype=torch.float32) if losses is not None else torch.tensor(1.0)
    tgt = torch.as_tensor(targets) if targets is not None else None
    tap.on_loss(step, loss, ids_t, tgt)


def _flush(tap: SamplesTap) -> dict:
    packet = tap.collect()
    host = dict(packet.host)
    for name, tensor in packet.tensors.items():
        host[name] = tensor.reshape(-1).tolist()
    return tap.finish(host)


def _evidence(frames: list[dict], step: int):
    builder = EvidenceBuilder()
    for k, signals in enumerate(frames):
        builder.add_frame(Frame(step=k, signals=signals))
    return builder.build(step)


# ------------------------------------------------------------------------- epochs and reach


def test_fixed_subset_counts_coverage_new_ids_overlap_and_reach():
    tap = SamplesTap(dataset_size=8)
    for _epoch in range(3):  # ids 0..3 twice per nominal epoch of 8 draws
        for _ in range(2):
            _feed(tap, [0, 1, 2, 3], losses=[0.1] * 4)
    out = _flush(tap)
    assert out["epoch_coverage"] == [0.5, 0.5, 0.5]
    assert out["epoch_new_ids"] == [0.5, 0.0, 0.0]  # 4 new ids of 8 in the first epoch only
    assert out["epoch_overlap"] == [0.0, 1.0, 1.0]  # no previous epoch, then the same ids
    assert out["data_reach"] == 0.5
    assert out["samples_per_step"] == 4.0


def test_shuffled_loader_reaches_everything_and_trips_no_data_rule():
    n, batch = 100, 16
    gen = torch.Generator().manual_seed(0)
    tap = SamplesTap(dataset_size=n)
    frames = []
    step = 0
    for _epoch in range(6):  # a shuffled loader with drop_last=True: 6 batches, 4 ids dropped
        order = torch.randperm(n, generator=gen)
        for b in range(n // batch):
            _feed(tap, order[b * batch : (b + 1) * batch], step=step)
            step += 1
        frames.append(_flush(tap))
    out = frames[-1]
    assert out["data_reach"] == 1.0
    assert min(out["epoch_coverage"]) > 0.7  # a window straddles two permutations
    ev = _evidence(frames, step)
    causes = {f.cause for f in run_rules(ev, continuous_only=True)}
    assert not causes & {"truncated_data", "repeated_data"}


def test_unseen_last_batch_without_shuffle_is_not_truncation():
    n, batch = 100, 32  # shuffle=False, drop_last=True: ids 96..99 never drawn
    tap = SamplesTap(dataset_size=n)
    frames = []
    for _epoch in range(5):
        for b in range(n // batch):
            _feed(tap, torch.arange(b * batch, (b + 1) * batch))
        frames.append(_flush(tap))
    assert frames[-1]["data_reach"] == pytest.approx(0.96)
    causes = {f.cause for f in run_rules(_evidence(frames, 500), continuous_only=True)}
    assert not causes & {"truncated_data", "repeated_data"}


def test_truncated_and_repeated_streams_each_name_only_their_cause():
    def stream(ids_per_step, steps):
        tap = SamplesTap(dataset_size=200)
        frames = []
        for s in range(steps):
            _feed(tap, ids_per_step(s), step=s)
            if s % 10 == 9:
                frames.append(_flush(tap))
        return {f.cause for f in run_rules(_evidence(frames, steps), continuous_only=True)}

    quarter = torch.arange(0, 200, 4)  # a fixed quarter, walked in batches of 10
    truncated = stream(lambda s: quarter[(s % 5) * 10 : (s % 5) * 10 + 10], 200)
    repeated = stream(lambda s: torch.arange(10), 200)  # the same batch every step
    assert "truncated_data" in truncated and "repeated_data" not in truncated
    assert "repeated_data" in repeated and "truncated_data" not in repeated


def test_reach_table_is_bounded(monkeypatch):
    monkeypatch.setattr(samples_module, "MAX_TRACKED_IDS", 5)
    tap = SamplesTap(dataset_size=10)
    _feed(tap, list(range(10)))
    out = _flush(tap)
    assert "data_reach" not in out  # overflowed: the reach is unknown, not wrong
    assert len(tap._ever_seen) == 0


# ------------------------------------------------------------------------ per-sample groups


def test_sample_groups_match_hand_computation():
    tap = SamplesTap(dataset_size=10)
    ids = list(range(10))
    targets = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]  # 4 classes: chance = ln 4
    # ids 0, 1: worse than chance (3.0 > ln 4); id 2: unlearned, better than chance (1.0);
    # the rest fitted (0.1).
    losses = [3.0, 3.0, 1.0] + [0.1] * 7
    for _ in range(PERSIST_OBSERVATIONS):
        _feed(tap, ids, losses, targets)
        out = _flush(tap)
    groups = out["sample_groups"]
    assert groups["chance_loss"] == pytest.approx(math.log(4))
    assert groups["n"] == 10 and groups["n_classes"] == 4
    assert groups["wrong_fraction"] == pytest.approx(0.2)
    assert groups["unlearned_fraction"] == pytest.approx(0.3)
    total = 7.0 + 0.7
    assert groups["wrong_share"] == pytest.approx(6.0 / total)
    assert groups["unlearned_share"] == pytest.approx(7.0 / total)
    assert groups["wrong_median"] == pytest.approx(3.0)
    assert groups["unlearned_median"] == pytest.approx(3.0)
    assert groups["wrong_rest_median"] == pytest.approx(0.1)
    assert groups["wrong_of_unlearned"] == pytest.approx(2 / 3)
    assert groups["wrong_purity"] == pytest.approx(0.5)  # classes 0 and 1, one each
    assert sorted(groups["wrong_ids"]) == [0, 1]
    assert out["class_counts"] == {0: 9, 1: 9, 2: 6, 3: 6}
    assert out["class_loss"][0] == pytest.approx((3.0 + 0.1 + 0.1) / 3)


def test_one_good_observation_resets_the_streak():
    tap = SamplesTap()
    ids, targets = list(range(4)), [0, 1, 0, 1]
    for loss in (3.0, 3.0, 0.01, 3.0):  # id 0 is fitted once in between
        _feed(tap, ids, [loss, 0.1, 0.1, 0.1], targets)
        out = _flush(tap)
    assert out["sample_groups"]["wrong_fraction"] == 0.0
    assert out["sample_groups"]["wrong_ids"] == []


def test_non_finite_losses_are_skipped():
    tap = SamplesTap()
    _feed(tap, [0, 1, 2], [float("nan"), 1.0, float("inf")], [0, 1, 1])
    out = _flush(tap)
    assert out["per_sample"]["mean"] == pytest.approx(1.0)
    assert out["sample_groups"]["n"] == 1


def test_state_dict_round_trips_through_torch_save():
    tap = SamplesTap(dataset_size=6)
    for k in range(4):
        _feed(tap, [0, 1, 2, 3], [3.0, 0.1, 0.1, 2.0], [0, 1, 2, 0], step=k)
        _flush(tap)
    buffer = io.BytesIO()
    torch.save(tap.state_dict(), buffer)
    buffer.seek(0)
    restored = SamplesTap(dataset_size=6)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict() == tap.state_dict()
    # both continue identically
    for t in (tap, restored):
        _feed(t, [4, 5, 0, 1], [3.0, 0.1, 3.0, 0.1], [1, 2, 0, 1], step=9)
    assert _flush(tap) == _flush(restored)


# ------------------------------------------------------------------------ loss components


def test_components_tap_against_hand_values():
    tap = LossComponentsTap()
    for step in range(3):
        tap.record(step, {"ce": torch.tensor(2.0 - step), "mse": torch.tensor(100.0)})
    packet = tap.collect()
    host = dict(packet.host)
    host.update({k: t.tolist() for k, t in packet.tensors.items()})
    out = tap.finish(host)
    assert out["loss_component/ce"] == ([0, 1, 2], [2.0, 1.0, 0.0])
    assert out["loss_component/mse"] == ([0, 1, 2], [100.0, 100.0, 100.0])
    assert out["loss_components_start"] == {"ce": pytest.approx(1.0), "mse": 100.0}
    tap.record(3, {"ce": torch.tensor(5.0)})
    packet = tap.collect()
    host = dict(packet.host)
    host.update({k: t.tolist() for k, t in packet.tensors.items()})
    later = tap.finish(host)
    assert later["loss_components_start"]["ce"] == pytest.approx(1.0)  # the first flush stays
    restored = LossComponentsTap()
    restored.load_state_dict(tap.state_dict())
    assert restored.start == tap.start


def test_guard_wires_components_and_samples_to_evidence():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = unstuck.Guard(
        model, opt, policy="observe", console=False, dataset_size=8, flush_every=4
    )
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for step in range(8):
        idx = torch.arange(4) + 4 * (step % 2)
        out = model(x[idx])
        per = torch.nn.functional.cross_entropy(out, y[idx], reduction="none")
        opt.zero_grad()
        per.mean().backward()
        opt.step()
        guard.step(per.detach(), ids=idx, targets=y[idx])
    ev = guard.evidence.build(guard.steps)
    assert ev["data_reach"] == 1.0
    assert ev["epoch_coverage"] == [1.0, 1.0, 1.0, 1.0]
    assert ev["class_counts"] == {0: 12, 1: 12, 2: 8}
    guard.close()

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = unstuck.Guard(model, opt, policy="observe", console=False, flush_every=4)
    for _ in range(8):
        pred = model(x)
        a, b = pred.pow(2).mean(), 10.0 * pred.abs().mean()
        opt.zero_grad()
        (a + b).backward()
        opt.step()
        guard.step(a + b, components={"a": a, "b": b})
    ev = guard.evidence.build(guard.steps)
    assert list(ev.steps_of("loss_component/a")) == list(range(8))
    assert set(ev["loss_components_start"]) == {"a", "b"}
    guard.close()
