"""The Guard under torch.distributed: real gloo processes, and hand-built evidence.

Two ranks are spawned once (``torch.multiprocessing.spawn``, ``file://`` rendezvous in a temporary
folder, a timeout on the join, REFERENCE.md §5); each trains tiny runs in turn and writes what it
found. Three check rank checksums and the rank_desync rule under a Guard with its defaults: DDP
(in sync), a different seed per rank without DDP, and a hand-written gradient all-reduce where one
rank skips an optimizer step. Two check identical decisions (docs/distributed.md): a DDP run at an
LR far too low, each rank on its own data shard, under ``policy="rescue"`` (actions kept), and a
healthy DDP run under a policy whose one action (LR ×1000) is harmful (rolled back). The runnable
example of docs/distributed.md runs too, as its own script.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import unstuck
from _gloo import HarmfulOnce, rank_batch, run_on_ranks
from unstuck.diagnose import Evidence, get_rule, run_rules
from unstuck.diagnose.causes.rank_desync import DESYNC_TOLERANCE
from unstuck.integrations._distributed import RankSync
from unstuck.rescue import Policy
from unstuck.signals import (
    GradNoiseTap,
    GradNormTap,
    LossTap,
    ParamDistanceTap,
    RankChecksumTap,
    SignalHub,
)
from unstuck.signals.distributed import PROJECTION_SEED, checksum_spread
from unstuck.signals.host import Frame, Series

WORLD = 2
STEPS = 120  # two flushes at the Guard's default cadence of 50, and the close
SPAWN_TIMEOUT_S = 120.0
RESCUE_STEPS = 400
RESCUE_KW = {"flush_every": 25, "horizon": 100, "cooldown": 50, "console": False, "report": False}
VAL_EVERY = 100
ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGE = ROOT / "docs" / "distributed.md"


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
    ev = guard.evidence.build(guard.steps)
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


def _digest(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: equal digests are bitwise equal weights."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _train_decisions(rank: int, mode: str, run_dir: str) -> dict:
    """DDP, each rank on its own shard (a different noise level too), one Guard per rank."""
    torch.manual_seed(rank)  # DDP broadcasts rank 0's weights; the RNG streams stay per rank
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model = torch.nn.parallel.DistributedDataParallel(net)
    if mode == "rescue":
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.5)  # far too low
        policy: str | Policy = "rescue"
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        policy = HarmfulOnce()
    guard = unstuck.Guard(model, opt, policy=policy, run_dir=run_dir, **RESCUE_KW)
    lr_history, local_loss, local_val = [], [], []
    for step in range(RESCUE_STEPS):
        x, y = rank_batch(step, rank, WORLD, 0.3)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss)
        lr_history.append(guard.lr_multiplier)
        local_loss.append(loss.item())
        if step % VAL_EVERY == VAL_EVERY - 1:
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(model(x + 0.1), y)
            local_val.append(float(val))
            guard.validate(val)
    guard.close()
    loss_steps, loss_values = guard.evidence.series("loss")
    return {
        "actions": [[a.name, a.step, a.outcome, a.verified_step] for a in guard.actions],
        "findings": [[f.cause, f.step, f.confidence, f.series] for f in guard.findings],
        "plateaus": [p.to_dict() for p in guard.plateaus],
        "state": guard.state,
        "lr_history": lr_history,
        "params": _digest(model),
        "loss_steps": loss_steps.tolist(),
        "loss": loss_values.tolist(),
        "local_loss": local_loss,
        "val": guard.evidence.series("val_loss")[1].tolist(),
        "local_val": local_val,
        "run_dir": None if guard.run_dir is None else str(guard.run_dir),
    }


def _failures(rank: int) -> dict:
    """Misuse and a failure on rank 0 raise on every rank, instead of leaving one waiting."""
    out = {}
    model = torch.nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, opt, console=False)
    for _ in range(3 + rank):  # rank 1 steps once more before flushing by hand
        guard.step(model(torch.randn(4, 6)).pow(2).mean())
    try:
        guard.flush()
    except RuntimeError as exc:
        out["mismatch"] = str(exc)
    guard = unstuck.Guard(model, opt, console=False)
    if rank == 0:

        def broken(*args: object) -> list:
            raise ZeroDivisionError("a rule failed")

        guard._monitor._run_rules = broken  # type: ignore[method-assign]
    for _ in range(3):
        guard.step(model(torch.randn(4, 6)).pow(2).mean())
    try:
        guard.flush()
    except (RuntimeError, ZeroDivisionError) as exc:
        out["rank0_failed"] = f"{type(exc).__name__}: {exc}"
    return out


def _work(rank: int, out_dir: str) -> dict:
    results = {mode: _train(rank, mode) for mode in ("ddp", "seeds", "skip")}
    results["failures"] = _failures(rank)
    for mode in ("rescue", "rollback"):
        results[mode] = _train_decisions(rank, mode, str(Path(out_dir, f"run-{mode}")))
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_on_ranks(_work, tmp_path_factory.mktemp("dist"), WORLD, SPAWN_TIMEOUT_S)


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
        ev = guard.evidence.build(guard.steps)
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


# ------------------------------------------------------------------ identical decisions under DDP


def _same(a, b) -> bool:
    """Equal, NaN included (JSON spells NaN the same on both sides)."""
    return json.dumps(a) == json.dumps(b)


@pytest.mark.parametrize("mode", ["rescue", "rollback"])
def test_every_rank_makes_the_same_decisions(ranks, mode):
    first, second = ranks[0][mode], ranks[1][mode]
    assert not _same(first["local_loss"], second["local_loss"])  # each rank saw its own shard
    for key in ("actions", "findings", "plateaus", "state", "lr_history", "loss_steps", "loss"):
        assert _same(first[key], second[key]), key
    assert _same(first["val"], second["val"])
    assert first["params"] == second["params"]  # bitwise the same weights at the end


@pytest.mark.parametrize("mode", ["rescue", "rollback"])
def test_every_rank_decides_on_the_mean_loss_over_ranks(ranks, mode):
    first, second = ranks[0][mode], ranks[1][mode]
    pairs = list(zip(first["local_loss"], second["local_loss"]))
    expected = [math.fsum(pairs[s]) / WORLD for s in first["loss_steps"]]
    assert _same(first["loss"], expected)
    val_pairs = zip(first["local_val"], second["local_val"])
    assert _same(first["val"], [math.fsum(p) / WORLD for p in val_pairs])


def test_a_plateau_at_a_tiny_lr_is_acted_on_identically(ranks):
    run = ranks[0]["rescue"]
    assert "lr_too_low" in [cause for cause, *_ in run["findings"]]
    assert any(p["series"] == "train" for p in run["plateaus"])
    kept = [a for a in run["actions"] if a[2] == "kept"]
    assert kept and all(a[0] == "lr_scale" for a in kept), run["actions"]
    assert run["lr_history"][0] == 1.0 and run["lr_history"][-1] > 10.0


def test_a_harmful_action_is_rolled_back_identically(ranks):
    run = ranks[0]["rollback"]
    assert [a[:3] for a in run["actions"]] == [["lr_scale", run["actions"][0][1], "rolled_back"]]
    acted, verified = run["actions"][0][1], run["actions"][0][3]
    lr = run["lr_history"]
    assert lr[acted] == 1000.0 and lr[verified] == 1.0 and lr[-1] == 1.0
    assert all(v == 1000.0 for v in lr[acted:verified])
    assert math.isfinite(run["loss"][-1])  # the rollback put finite weights back


@pytest.mark.parametrize("mode", ["rescue", "rollback"])
def test_only_rank_0_writes_the_run_store(ranks, mode):
    lead, other = ranks[0][mode], ranks[1][mode]
    assert other["run_dir"] is None
    assert lead["run_dir"] is not None
    assert (Path(lead["run_dir"]) / "unstuck.sqlite").exists()


def _docs_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOCS_PAGE.read_text(), flags=re.DOTALL)
    runnable = [b for b in blocks if 'if __name__ == "__main__":' in b]
    assert len(runnable) == 1, "docs/distributed.md should hold one runnable example"
    return runnable[0]


def test_the_docs_example_runs_and_its_ranks_agree(tmp_path):
    script = tmp_path / "ddp_example.py"
    script.write_text(_docs_example())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    # Its own session, so a hang is ended with the ranks it spawned.
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=SPAWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail(f"the docs example did not finish within {SPAWN_TIMEOUT_S:.0f} s")
    assert proc.returncode == 0, err
    lines = dict(re.findall(r"^rank (\d+): (.*)$", out, flags=re.MULTILINE))
    assert sorted(lines) == ["0", "1"], out
    assert lines["0"] == lines["1"]  # the same LR multiplier and actions on both ranks
    assert "'kept'" in lines["0"], out
    assert (tmp_path / "runs" / "ddp" / "unstuck.sqlite").exists()  # written by rank 0
    assert "lr_too_low" in err  # rank 0's console line


def test_ranks_that_flushed_different_steps_all_raise(ranks):
    for rank in ranks:
        message = rank["failures"].get("mismatch", "")
        assert "the ranks are out of step (rank 1 is at guard.step 4" in message
        assert "rank 0: flushing after 3 guard.step calls" in message
        assert "rank 1: flushing after 4 guard.step calls" in message


def test_a_failure_on_rank_0_while_deciding_raises_on_every_rank(ranks):
    assert ranks[0]["failures"]["rank0_failed"] == "ZeroDivisionError: a rule failed"
    assert ranks[1]["failures"]["rank0_failed"] == (
        "RuntimeError: unstuck: rank 0 failed while deciding: ZeroDivisionError: a rule failed"
    )


# --------------------------------------------------------------------------- declared reductions


class _TwoRanks(RankSync):
    """A RankSync whose gather hands back the given per-rank payloads (this rank's first)."""

    def __init__(self, others: list[dict]) -> None:
        super().__init__(rank=0, world=1 + len(others))
        self.others = others
        self.sent: list[dict] = []

    def gather(self, obj, call="gather", steps=None):
        self.sent.append(obj)
        return [obj, *self.others]


def test_the_sync_applies_what_the_taps_declare():
    model = torch.nn.Linear(2, 1)
    taps = [LossTap(), ParamDistanceTap(), GradNoiseTap(), GradNormTap()]
    hub = SignalHub(model, torch.optim.SGD(model.parameters(), lr=0.1), taps)
    reductions = hub.reductions()
    hub.close()
    assert reductions == {
        "loss": "mean",
        "nonfinite_loss": "mean",
        "param_distance": "lead",
        "grad_snr": "lead",
    }
    frame = Frame(
        step=3,
        signals={
            "loss": Series([0, 1, 2], [1.0, 2.0, float("nan")]),
            "nonfinite_loss": Series([2], [1.0]),
            "param_distance": Series([2], [0.5]),
            "grad_norm": Series([0], [7.0]),
        },
    )
    other = {"loss": ([0, 1, 2], [3.0, 4.0, 1.0]), "param_distance": None, "grad_snr": None}
    sync = _TwoRanks([other])
    sync.merge_frame(frame, reductions)
    assert set(sync.sent[0]) == {"loss", "param_distance", "grad_snr"}  # local ones stay home
    loss = frame.signals["loss"]
    assert isinstance(loss, Series) and loss.steps == [0, 1, 2]
    assert loss.values[:2] == [2.0, 3.0] and math.isnan(loss.values[2])
    assert frame.signals["nonfinite_loss"] == Series([2], [1.0])  # counted on the mean
    assert frame.signals["param_distance"] == Series([2], [0.5])  # this rank leads
    assert frame.signals["grad_norm"] == Series([0], [7.0])  # local: untouched
    with pytest.raises(RuntimeError, match="flushed different steps"):
        _TwoRanks([{**other, "loss": ([0, 1], [3.0, 4.0])}]).merge_frame(frame, reductions)
