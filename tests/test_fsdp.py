"""The Guard under FSDP2 (``torch.distributed.fsdp.fully_shard``): real gloo processes on the CPU.

Every parameter of an FSDP2 model is a ``DTensor`` of which each rank holds one shard. The Guard
must never gather a full tensor of its own accord: taps read each rank's shards, snapshots copy
and restore each rank's shards in place (and count only those against ``snapshot_memory``), and
the curvature probe, which runs where the rules run (rank 0 alone), is skipped because its
forward pass would wait for the other ranks forever. Decisions stay identical on every rank (the
loss is averaged over ranks as under DDP).

Two ranks are spawned once (``file://`` rendezvous, a timeout on the join); each trains three
tiny sharded runs and writes what it saw: a run at an LR far too low under ``policy="rescue"``
with a ``loss_fn`` (so a plateau asks for the curvature probe), a healthy run under a policy
whose one action (LR x1000) is harmful, and a direct snapshot / spill / restore round trip.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import unstuck
from _gloo import HarmfulOnce, rank_batch, run_on_ranks
from unstuck.record.store import read_events
from unstuck.rescue import Policy
from unstuck.rescue.snapshot import SnapshotStore, restore_snapshot, take_snapshot

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):  # pragma: no cover - torch builds without FSDP2
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)

WORLD = 2
STEPS = 400
SPAWN_TIMEOUT_S = 180.0
GUARD_KW = {"flush_every": 25, "horizon": 100, "cooldown": 50, "console": False, "report": False}


def _sharded_model(seed: int = 0) -> torch.nn.Module:
    """An MLP whose odd-sized layers shard unevenly over two ranks (3 rows, 8 rows)."""
    torch.manual_seed(seed)  # the same full weights on every rank before sharding
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            fsdp.fully_shard(layer)
    fsdp.fully_shard(net)
    return net


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _shard_digest(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """A hash of this rank's shards of every parameter and optimizer-state tensor."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(_local(p.detach()).contiguous().numpy().tobytes())
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor):
                h.update(_local(value.detach()).contiguous().numpy().tobytes())
    return h.hexdigest()


def _train(rank: int, mode: str, run_dir: str) -> dict[str, Any]:
    model = _sharded_model()
    if mode == "rescue":
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.5)  # far too low
        policy: str | Policy = "rescue"
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        policy = HarmfulOnce()
    guard = unstuck.Guard(
        model,
        opt,
        policy=policy,
        run_dir=run_dir,
        loss_fn=torch.nn.functional.mse_loss,  # a plateau asks for the curvature probe
        **GUARD_KW,
    )
    lr_history, local_loss, digests = [], [], []
    for step in range(STEPS):
        x, y = rank_batch(step, rank, WORLD, 0.2)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss, batch=(x, y))
        lr_history.append(guard.lr_multiplier)
        local_loss.append(loss.item())
        digests.append(_shard_digest(model, opt))
    guard.close()
    full = [p.full_tensor().detach() for p in model.parameters()]  # a collective: every rank
    return {
        "actions": [[a.name, a.step, a.outcome, a.verified_step] for a in guard.actions],
        "findings": [[f.cause, f.step, f.confidence, f.series] for f in guard.findings],
        "plateaus": [p.to_dict() for p in guard.plateaus],
        "state": guard.state,
        "lr_history": lr_history,
        "local_loss": local_loss,
        "digests": digests,
        "full_finite": all(bool(torch.isfinite(t).all()) for t in full),
        "run_dir": None if guard.run_dir is None else str(guard.run_dir),
    }


def _snapshot_round_trip(spill_dir: str) -> dict[str, Any]:
    """take_snapshot / spill / restore on sharded state, checked shard by shard."""
    model = _sharded_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def train(n: int) -> None:
        for _ in range(n):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    train(3)
    before = _shard_digest(model, opt)
    local_bytes = sum(
        _local(t.detach()).numel() * t.element_size()
        for p in model.parameters()
        for t in [p, *(v for v in opt.state[p].values() if isinstance(v, torch.Tensor))]
    )
    global_bytes = sum(
        t.numel() * t.element_size()
        for p in model.parameters()
        for t in [p, *(v for v in opt.state[p].values() if isinstance(v, torch.Tensor))]
    )
    out: dict[str, Any] = {"local_bytes": local_bytes, "global_bytes": global_bytes}
    for name, budget in (("memory", 1 << 30), ("spilled", 0)):
        store = SnapshotStore(budget, Path(spill_dir, name))
        snap = take_snapshot(0, model, opt)
        key = store.put(snap)
        train(2)
        moved = _shard_digest(model, opt) != before
        restore_snapshot(store.get(key), model, opt)
        out[name] = {
            "nbytes": snap.nbytes(),
            "spilled": store.spilled,
            "moved": moved,
            "restored": _shard_digest(model, opt) == before,
        }
        store.close()
    return out


def _work(rank: int, out_dir: str) -> dict[str, Any]:
    results: dict[str, Any] = {
        mode: _train(rank, mode, str(Path(out_dir, f"run-{mode}")))
        for mode in ("rescue", "rollback")
    }
    results["snapshot"] = _snapshot_round_trip(str(Path(out_dir, f"spill{rank}")))
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("fsdp")
    return run_on_ranks(_work, out, WORLD, SPAWN_TIMEOUT_S, group_timeout_s=90.0)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a) == json.dumps(b)


@pytest.mark.parametrize("mode", ["rescue", "rollback"])
def test_every_rank_makes_the_same_decisions_on_sharded_parameters(ranks, mode):
    first, second = ranks[0][mode], ranks[1][mode]
    assert not _same(first["local_loss"], second["local_loss"])  # each rank saw its own data
    assert first["digests"][-1] != second["digests"][-1]  # ... and holds its own shards
    for key in ("actions", "findings", "plateaus", "state", "lr_history"):
        assert _same(first[key], second[key]), key
    assert first["full_finite"] and second["full_finite"]


def test_a_plateau_at_a_tiny_lr_is_found_and_fixed_under_fsdp(ranks):
    run = ranks[0]["rescue"]
    assert "lr_too_low" in [cause for cause, *_ in run["findings"]]
    kept = [a for a in run["actions"] if a[2] == "kept"]
    assert kept, run["actions"]
    assert run["lr_history"][0] == 1.0 and run["lr_history"][-1] > 10.0


def test_the_curvature_probe_is_skipped_not_left_waiting_under_fsdp(ranks):
    # Reaching this test at all means rank 0 did not hang in the probe's forward pass.
    probes = read_events(Path(ranks[0]["rescue"]["run_dir"], "unstuck.sqlite"), kind="probe")
    curvature = [e["payload"] for e in probes if e["payload"].get("probe") == "curvature"]
    assert curvature, "no plateau asked for the curvature probe"
    assert all(p["status"] == "skipped" and "sharded" in p["reason"] for p in curvature)
    assert ranks[1]["rescue"]["run_dir"] is None  # only rank 0 records


@pytest.mark.parametrize("rank", range(WORLD))
def test_a_rollback_restores_each_ranks_shards_bit_for_bit(ranks, rank):
    run = ranks[rank]["rollback"]
    assert [a[:3] for a in run["actions"]] == [["lr_scale", run["actions"][0][1], "rolled_back"]]
    acted, verified = run["actions"][0][1], run["actions"][0][3]
    digests = run["digests"]
    # The snapshot is taken at the decision of step `acted` (after its optimizer step) and the
    # rollback at step `verified` puts exactly that state back: shards and optimizer moments.
    assert digests[verified] == digests[acted]
    assert digests[verified - 1] != digests[acted]  # the harmful steps had moved the shards
    assert run["lr_history"][verified] == 1.0


@pytest.mark.parametrize("rank", range(WORLD))
def test_snapshots_hold_and_restore_only_this_ranks_shards(ranks, rank):
    snap = ranks[rank]["snapshot"]
    assert snap["local_bytes"] < snap["global_bytes"]  # the shards really are a part
    for name, spilled in (("memory", 0), ("spilled", 1)):
        case = snap[name]
        assert case["spilled"] == spilled
        assert case["moved"] and case["restored"], case
        # The budget counts what this rank holds (plus the step counters Adam keeps whole).
        assert case["nbytes"] <= snap["local_bytes"] + 64
        assert case["nbytes"] < snap["global_bytes"]


def test_taps_read_local_shards_without_a_process_group() -> None:
    """The shard helpers are the identity on plain tensors (single-process runs unchanged)."""
    from unstuck.signals.base import local_grads, local_shard

    t = torch.randn(3, requires_grad=True)
    assert local_shard(t) is t
    assert local_grads([t]) == [None]
    t.grad = torch.ones(3)
    assert local_grads([t])[0] is t.grad
