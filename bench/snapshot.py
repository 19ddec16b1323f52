"""What a rescue snapshot costs, against model size: time, peak memory, spill, and under sharding.

For each size (parameters of an MLP stack, AdamW state filled by one step) the bench takes a
snapshot the way the Guard does (``take_snapshot``: parameters, buffers, optimizer state, RNG),
restores it, spills one to disk and reads it back, and times the training step that carries a
snapshot against the steps around it:

* ``take_s`` / ``restore_s``: wall time of ``take_snapshot`` / ``restore_snapshot`` (median of
  ``--repeats``);
* ``state_mb``: bytes of the training state (parameters + optimizer moments) this process holds;
* ``peak_over_state``: the resident memory the snapshot added at its peak (sampled every
  millisecond from ``/proc/self/statm`` in a thread), divided by ``state_mb``: 1.0 means the
  state is copied once and nothing more is held while copying; ``restore_peak_over_state``:
  the same for a restore (0 when it copies into the live tensors and allocates nothing);
* ``spill_put_s`` / ``spill_restore_s``: a snapshot written with ``torch.save`` past the memory
  budget, and read back (``weights_only=True``) and restored;
* ``step_ratio``: the time of a step that also takes a snapshot over the median plain step,
  measured side by side in one run (the machine is noisy: compare ratios, not seconds).

``--sharded`` repeats the smaller sizes with two gloo processes on FSDP2 (``fully_shard``) and
under DDP: per rank, the bytes a snapshot holds against the full state (FSDP2 keeps only the
rank's shards). On this CPU there is no accelerator: the device side of the issue's bar
(peak accelerator memory during a snapshot) needs a GPU run and is not estimated here.

    python bench/snapshot.py [--sizes 1e6,1e7,1e8,3e8] [--repeats 3] [--sharded] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from unstuck.rescue.snapshot import SnapshotStore, restore_snapshot, take_snapshot
from unstuck.signals.base import local_shard

HERE = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGE_SIZE")
WIDTH_FOR = {1e6: 512, 1e7: 1024, 1e8: 2048, 3e8: 4096, 1e9: 8192}  # hidden width by size
BATCH = 8


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRss:
    """The highest resident set size seen while the block runs (1 ms sampling)."""

    def __enter__(self) -> PeakRss:
        self.start = _rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def make_model(params: float) -> torch.nn.Module:
    """An MLP stack of square layers with about ``params`` parameters."""
    width = WIDTH_FOR.get(params) or max(64, int((params / 8) ** 0.5))
    depth = max(2, round(params / (width * width + width)))
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for p in model.parameters():
        for t in [p, *(v for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v))]:
            local = local_shard(t.detach())
            total += local.numel() * local.element_size()
    return total


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, width: int) -> None:
    x = torch.randn(BATCH, width)
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def measure(params: float, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make_model(params)
    width = next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).in_features
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _step(model, optimizer, width)  # fill the moments
    state = _state_bytes(model, optimizer)
    n_params = sum(p.numel() for p in model.parameters())

    takes, restores, peaks, restore_peaks = [], [], [], []
    for _ in range(repeats):
        with PeakRss() as mem:
            t0 = time.perf_counter()
            snap = take_snapshot(0, model, optimizer)
            takes.append(time.perf_counter() - t0)
        peaks.append((mem.peak - mem.start) / state)
        _step(model, optimizer, width)
        with PeakRss() as mem:
            t0 = time.perf_counter()
            restore_snapshot(snap, model, optimizer)
            restores.append(time.perf_counter() - t0)
        restore_peaks.append((mem.peak - mem.start) / state)
        del snap

    with tempfile.TemporaryDirectory(prefix="unstuck-bench-snapshot-") as spill:
        store = SnapshotStore(0, spill)
        t0 = time.perf_counter()
        key = store.put(take_snapshot(0, model, optimizer))
        spill_put = time.perf_counter() - t0
        _step(model, optimizer, width)
        t0 = time.perf_counter()
        restore_snapshot(store.get(key), model, optimizer)
        spill_restore = time.perf_counter() - t0
        store.close()

    # Steps with and without a snapshot, interleaved so load drifts hit both alike.
    plain, carrying = [], []
    for i in range(2 * repeats + 4):
        t0 = time.perf_counter()
        _step(model, optimizer, width)
        if i % 2:
            snap = take_snapshot(0, model, optimizer)
            carrying.append(time.perf_counter() - t0)
            del snap
        else:
            plain.append(time.perf_counter() - t0)
    return {
        "params": n_params,
        "state_mb": round(state / 2**20, 1),
        "take_s": round(statistics.median(takes), 4),
        "restore_s": round(statistics.median(restores), 4),
        "peak_over_state": round(max(peaks), 3),
        "restore_peak_over_state": round(max(restore_peaks), 3),
        "spill_put_s": round(spill_put, 4),
        "spill_restore_s": round(spill_restore, 4),
        "step_s": round(statistics.median(plain), 4),
        "step_ratio": round(statistics.median(carrying) / statistics.median(plain), 3),
    }


def _sharded_worker(rank: int, init_file: str, sizes: list[float], mode: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
        timeout=timedelta(seconds=600),
    )  # fmt: skip
    rows = []
    try:
        for params in sizes:
            torch.manual_seed(0)
            model: torch.nn.Module = make_model(params)
            width = next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).in_features
            if mode == "fsdp2":
                from torch.distributed.fsdp import fully_shard

                for layer in model:
                    if isinstance(layer, torch.nn.Linear):
                        fully_shard(layer)
                fully_shard(model)
            else:
                model = torch.nn.parallel.DistributedDataParallel(model)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            _step(model, optimizer, width)
            full = sum(p.numel() * p.element_size() * 3 for p in model.parameters())
            t0 = time.perf_counter()
            snap = take_snapshot(0, model, optimizer)
            take = time.perf_counter() - t0
            _step(model, optimizer, width)
            t0 = time.perf_counter()
            restore_snapshot(snap, model, optimizer)
            restore = time.perf_counter() - t0
            rows.append(
                {
                    "mode": mode,
                    "rank": rank,
                    "params": sum(p.numel() for p in model.parameters()),
                    "full_state_mb": round(full / 2**20, 1),
                    "snapshot_mb": round(snap.nbytes() / 2**20, 1),
                    "take_s": round(take, 4),
                    "restore_s": round(restore, 4),
                }
            )
            del snap
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out, f"{mode}-rank{rank}.json").write_text(json.dumps(rows))
    os._exit(0)


def measure_sharded(sizes: list[float]) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    rows: list[dict[str, Any]] = []
    for mode in ("ddp", "fsdp2"):
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(
                _sharded_worker,
                args=(str(Path(tmp, "rendezvous")), sizes, mode, tmp),
                nprocs=2,
            )
            for rank in range(2):
                rows += json.loads(Path(tmp, f"{mode}-rank{rank}.json").read_text())
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7,1e8,3e8", help="parameter counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sharded", action="store_true", help="also DDP and FSDP2 on 2 gloo ranks")
    ap.add_argument("--sharded-sizes", default="1e6,1e7,1e8")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "snapshot.json")
    args = ap.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s]
    plain = [measure(s, args.repeats) for s in sizes]
    print("plain loop, CPU (one process)\n" + table(plain) + "\n")
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "plain": plain,
    }
    if args.sharded:
        sharded = measure_sharded([float(s) for s in args.sharded_sizes.split(",") if s])
        print("two gloo ranks, per rank\n" + table(sharded) + "\n")
        result["sharded"] = sharded
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
