"""Shared by the tests that start real gloo ranks: the spawn harness, and a harmful policy.

Each rank runs ``work(rank, out_dir) -> dict`` inside a gloo process group (``file://``
rendezvous in a temporary folder); the harness joins with a deadline, so a rank left waiting
fails the test instead of hanging the suite, and returns every rank's dict in rank order.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unstuck.rescue import Policy, Proposal

Work = Callable[[int, str], dict[str, Any]]


class HarmfulOnce(Policy):
    """Raises the LR x1000 once, at the first decision after step 100: the loss blows up."""

    name = "harmful"

    def propose(self, *, step, state, findings, tried, plateau_kind=None, plateau_start=None):
        proposal = Proposal("lr_scale", {"factor": 1000.0}, reason="test: a harmful action")
        return proposal if step >= 100 and proposal.key not in tried else None


def _rank_main(rank: int, work: Work, out_dir: str, world: int, group_timeout_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{Path(out_dir, 'rendezvous')}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=group_timeout_s),
    )
    try:
        result = work(rank, out_dir)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()  # every rank done talking before any tears gloo down
    finally:
        dist.destroy_process_group()
    # Leave without interpreter teardown: gloo's threads sometimes abort the process there
    # ("terminate called without an active exception", ~1 run in 20) after all work is done
    # and written. Reached only when the rank succeeded.
    os._exit(0)


def run_on_ranks(
    work: Work,
    out_dir: Path,
    world: int = 2,
    timeout_s: float = 120.0,
    group_timeout_s: float = 60.0,
) -> list[dict[str, Any]]:
    """``work`` on ``world`` gloo ranks; every rank's result, in rank order."""
    args = (work, str(out_dir), world, group_timeout_s)
    ctx = mp.spawn(_rank_main, args=args, nprocs=world, join=False)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.terminate()
            pytest.fail(f"gloo ranks did not finish within {timeout_s:.0f} s")
    return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]


def rank_batch(step: int, rank: int, world: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's regression batch at ``step``: the same teacher on every rank, its own inputs,
    and label noise that grows with the rank (so the ranks' losses differ)."""
    w = torch.linspace(-1.0, 1.0, 12).reshape(4, 3)
    g = torch.Generator().manual_seed(world * step + rank)
    x = torch.randn(32, 4, generator=g)
    return x, x @ w + (0.05 + noise * rank) * torch.randn(32, 3, generator=g)
