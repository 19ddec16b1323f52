"""Rank checksums and the rank_desync rule: real gloo processes, and hand-built evidence.

Two ranks are spawned once (``torch.multiprocessing.spawn``, ``file://`` rendezvous in a temporary
folder, a timeout on the join, REFERENCE.md §5); each trains three tiny runs in turn under a Guard
with its defaults and writes what it found: DDP (in sync), a different seed per rank without DDP,
and a hand-written gradient all-reduce where one rank skips an optimizer step.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import unstuck
from unstuck.diagnose import Evidence, get_rule, run_rules
from unstuck.diagnose.causes.rank_desync import DESYNC_TOLERANCE
from unstuck.signals import RankChecksumTap, SignalHub
from unstuck.signals.distributed import PROJECTION_SEED, checksum_spread

WORLD = 2
STEPS = 120  # two flushes at the Guard's default cadence of 50, and the close
SPAWN_TIMEOUT_S = 120.0


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _train(rank: int, mode: str) -> dict:
    torch.manual_seed(rank if mode in ("seeds", "ddp") else 0)  # per-rank seeds: the classic bug
    net = _model()
    model: torch.nn.Module = net
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(net)  # broadcasts rank 0's weights
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, opt, console=False)
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees its own data
    w = torch.linspace(-1, 1, 6)
    for step in range(STEPS):
        x = torch.randn(32, 6, generator=g)
        y = (x @ w).unsqueeze(1)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if mode == "skip":
            for p in net.parameters():  # a hand-written data-parallel gradient average
                dist.all_reduce(p.grad)
                p.grad /= WORLD
            if rank == 1 and step == 30:
                guard.step(loss)  # e.g. a rank-local "skip this step if the loss spiked"
                continue
        opt.step()
        guard.step(loss)
    guard.close()
    ev = guard._evidence.build(guard.steps)
    spread = ev.values_of("rank_checksum_spread").tolist()
    return {
        "findings": [
            [f.cause, round(f.confidence, 9), f.step]
            for f in guard.findings
            if f.cause == "rank_desync"
        ],
        "spread": spread,
        "checksums": ev.get("rank_checksums"),
        "world": ev.get("rank_world_size"),
    }


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        results = {mode: _train(rank, mode) for mode in ("ddp", "seeds", "skip")}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.barrier()  # both ranks done talking before either tears gloo down
    finally:
        dist.destroy_process_group()
    # Leave without interpreter teardown: gloo's threads sometimes abort the process there
    # ("terminate called without an active exception", ~1 run in 20) after all work is done
    # and written, which made this fixture flaky. Reached only when the ranks succeeded.
    os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("dist")
    ctx = mp.spawn(_worker, args=(str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.terminate()
            pytest.fail(f"gloo ranks did not finish within {SPAWN_TIMEOUT_S:.0f} s")
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_ddp_ranks_in_sync_get_no_finding(ranks):
    for result in ranks:
        ddp = result["ddp"]
        assert ddp["world"] == WORLD
        assert len(ddp["checksums"]) == WORLD
        assert ddp["checksums"][0] == ddp["checksums"][1]  # bitwise the same weights
        assert ddp["spread"] and max(ddp["spread"]) <= DESYNC_TOLERANCE
        assert ddp["findings"] == []


@pytest.mark.parametrize("mode", ["seeds", "skip"])
def test_diverged_ranks_get_rank_desync_on_every_rank_identically(ranks, mode):
    first, second = ranks[0][mode], ranks[1][mode]
    assert first["findings"], f"rank 0 found no rank_desync in mode {mode}"
    assert first["findings"] == second["findings"]  # same decisions, same steps, same confidence
    assert first["spread"] == second["spread"]
    assert all(conf >= 0.9 for _, conf, _ in first["findings"])
    assert max(first["spread"]) > DESYNC_TOLERANCE


def test_skipped_step_is_found_at_the_first_flush_after_it(ranks):
    # rank 1 skipped step 30; the first flush is at step 49 (Guard default flush_every=50)
    assert ranks[0]["skip"]["findings"][0][2] == 49


# ------------------------------------------------------------------ single process: a no-op


def test_tap_is_a_noop_without_a_process_group():
    assert not dist.is_initialized()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tap = RankChecksumTap()
    hub = SignalHub(model, opt, [tap])
    assert type(tap).on_pre_step is unstuck.signals.Tap.on_pre_step  # no per-step hook at all
    assert type(tap).on_post_step is unstuck.signals.Tap.on_post_step
    frame = hub.flush()
    assert frame.signals == {}
    hub.close()


def test_tap_is_a_noop_with_world_size_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        guard = unstuck.Guard(model, opt, console=False)
        for _ in range(60):
            loss = model(torch.randn(4, 6)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.step(loss)
        guard.close()
        ev = guard._evidence.build(guard.steps)
        assert "rank_checksums" not in ev
        assert "loss" in ev
    finally:
        dist.destroy_process_group()


def test_local_checksum_matches_hand_computation():
    model = _model()
    tap = RankChecksumTap()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hub = SignalHub(model, opt, [tap])
    got = tap._local_checksum().tolist()
    flat = [p.detach().double().reshape(-1) for p in model.parameters()]
    gen = torch.Generator().manual_seed(PROJECTION_SEED)
    proj = sum(
        float(f.dot(torch.randn(f.numel(), generator=gen, dtype=torch.float64))) for f in flat
    )
    expected = [
        float(sum(f.sum() for f in flat)),
        float(sum(f.square().sum() for f in flat)),
        proj,
        float(sum(f.numel() for f in flat)),
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    hub.close()


# ------------------------------------------------------------------ the rule on hand-built evidence


def _table(delta: float, n: int = 1000) -> list[list[float]]:
    base = [1.5, 40.0, -3.0, float(n)]
    scale = math.sqrt(n * 40.0)
    return [base, [1.5 + delta * scale, 40.0, -3.0, float(n)]]


def test_rule_fires_on_a_clear_difference():
    finding = get_rule("rank_desync").check(Evidence({"rank_checksums": _table(1e-3)}, step=99))
    assert finding is not None and finding.cause == "rank_desync"
    assert finding.step == 99
    assert 0.9 <= finding.confidence <= 1.0
    assert finding.evidence["ranks_differing_from_rank0"] == [1]
    assert finding.evidence["spread"] == pytest.approx(1e-3)
    assert not any(r.automatic for r in finding.remedies)


def test_rule_confidence_grows_with_the_spread():
    rule = get_rule("rank_desync")
    near = rule.check(Evidence({"rank_checksums": _table(2e-6)}))
    far = rule.check(Evidence({"rank_checksums": _table(0.5)}))
    assert near is not None and far is not None
    assert near.confidence < far.confidence
    assert far.confidence == pytest.approx(1.0)


@pytest.mark.parametrize("delta", [0.0, 1e-12, 5e-7, DESYNC_TOLERANCE])
def test_rule_quiet_within_tolerance(delta):
    assert get_rule("rank_desync").check(Evidence({"rank_checksums": _table(delta)})) is None


@pytest.mark.parametrize(
    "table",
    [
        [],
        [[1.0, 2.0, 3.0, 4.0]],  # one rank
        [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 8.0]],  # different parameter counts: sharded
        [[math.nan] * 4, [math.nan] * 4],  # NaN on every rank: the nonfinite rule's business
        [[1.0, 2.0], [1.0, 3.0]],  # malformed rows
        "garbage",
        None,
    ],
)
def test_rule_quiet_on_empty_partial_or_unusable_evidence(table):
    assert get_rule("rank_desync").check(Evidence({"rank_checksums": table})) is None


def test_rule_fires_when_only_some_ranks_are_nonfinite():
    table = [[1.0, 2.0, 3.0, 4.0], [math.nan, math.nan, math.nan, 4.0]]
    finding = get_rule("rank_desync").check(Evidence({"rank_checksums": table}))
    assert finding is not None and finding.confidence == pytest.approx(1.0)
    assert checksum_spread(table) == math.inf


def test_rule_is_continuous_and_runs_outside_plateaus():
    ev = Evidence({"rank_checksums": _table(1e-2), "detector_state": "improving"})
    assert "rank_desync" in [f.cause for f in run_rules(ev, continuous_only=True)]
