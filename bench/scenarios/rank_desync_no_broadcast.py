"""Hand-written data parallelism that never broadcasts rank 0's initial weights (2 gloo ranks).

The bug, as in a Horovod-style loop without ``hvd.broadcast_parameters``: every rank calls
``torch.manual_seed(seed + rank)`` (meant to give each rank its own data order) *before* building
the model, then averages gradients with ``all_reduce`` after ``backward``. The gradients are the
same on every rank, but they are applied to different weights: the ranks train different models
forever. ``run()`` spawns the two ranks itself and returns rank 0's result.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scenarios._common import RunResult, Scenario, digits, mlp, train

WORLD = 2
TIMEOUT_S = 120.0


def _average_gradients(optimizer: Any, args: Any, kwargs: Any) -> None:
    # The hand-rolled all-reduce a practitioner writes between backward() and step().
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)  # SUM then divide: portable on gloo
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def _rank(rank: int, seed: int, short: bool, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        data = digits(seed)
        data.x, data.y = data.x[rank::WORLD], data.y[rank::WORLD]  # each rank its shard
        torch.manual_seed(seed + rank)  # the bug: per-rank seed before the model is built
        model = mlp(64, 64, 10)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        opt.register_step_pre_hook(_average_gradients)  # before the Guard's hooks: DDP-like
        result = train(
            model, opt, data, steps=150 if short else 1000, batch_size=32, seed=seed + rank
        )
        if rank == 0:
            Path(folder, "result.pkl").write_bytes(pickle.dumps(result))
        dist.barrier()  # both ranks done talking before either tears gloo down
    finally:
        dist.destroy_process_group()
    # Leave without interpreter teardown: gloo's threads sometimes abort the process there
    # ("terminate called without an active exception") after the result is written.
    os._exit(0)


def run(seed: int, short: bool) -> RunResult:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        ctx = mp.spawn(_rank, args=(seed, short, folder), nprocs=WORLD, join=False)
        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.terminate()
                raise TimeoutError(f"rank_desync scenario: ranks did not finish in {TIMEOUT_S} s")
        result: RunResult = pickle.loads(Path(folder, "result.pkl").read_bytes())
    result.seconds = time.perf_counter() - start
    return result


SCENARIO = Scenario(
    name="rank_desync_no_broadcast",
    expected="rank_desync",
    arch="mlp",
    optimizer="momentum",
    description="Two gloo ranks seeded seed+rank before building the model average gradients by "
    "hand but never broadcast rank 0's weights, so they train different models.",
    run=run,
)
