"""What one ``unstuck watch`` refresh costs over a fleet: 200 runs of 10k points by default.

Writes the fleet to a temporary folder (a quarter each: unstuck run stores, CSV, JSON lines,
Lightning ``version_N/metrics.csv``; a third of the runs flat, a third improving, a third
diverging), then times, in one process:

* the first refresh (every point read and fed to each run's detector), a refresh with nothing
  new (the steady state of watching finished or idle runs) and a refresh after ``--append``
  points were appended to every run (a live fleet's refresh), over the whole fleet with
  ``--feed refresh`` (one ``update_many`` per run per refresh, as a live Guard's flush);
* the same over the first ``--point-runs`` runs with ``--feed point`` (one ``update`` per
  point, as ``unstuck analyze`` feeds a log: watch's default). Point by point costs what
  ``analyze`` costs, about a detector decision per point on a diverging run, so the whole fleet
  would take tens of minutes here; the per-run figures scale linearly.

Time is wall time without tracing. Memory is the peak of Python allocations (tracemalloc) during
a second quiet refresh and a second appended one (traced apart from the timed ones: tracing
slows Python), and the process' peak RSS growth over the first refresh (tracemalloc would slow
it several-fold).

    python bench/watch.py [--runs 200] [--points 10000] [--append 100] [--point-runs 20]
                          [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from unstuck.fleet import Watcher
from unstuck.record.store import RunStore

FORMATS = ("unstuck", "csv", "jsonl", "lightning")  # a quarter of the fleet each
KINDS = ("flat", "improving", "diverging")
NOISE = 0.03  # log-normal noise of every curve
QUICK = {"runs": 20, "points": 2000}  # --quick: a smoke run


def _curve(kind: str, t: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "flat":
        v = 0.4 + 2.0 * np.exp(-t / (0.05 * n))
    elif kind == "improving":
        v = 3.0 * (t / 10 + 1) ** -0.7
    else:
        v = np.where(t < 0.4 * n, 2.0 * np.exp(-t / (0.1 * n)) + 0.3, 0.3 * np.exp(t / n))
    return v * np.exp(rng.normal(0, NOISE, t.size))


class Fleet:
    """The generated runs, and appending to each of them."""

    def __init__(self, root: Path, runs: int, points: int) -> None:
        self.root = root
        self.points = points
        self.runs: list[tuple[str, str, Path, np.random.Generator]] = []
        self.stores: dict[Path, RunStore] = {}
        for i in range(runs):
            fmt, kind = FORMATS[i % len(FORMATS)], KINDS[i % len(KINDS)]
            rng = np.random.default_rng(i)
            if fmt == "unstuck":
                path = root / "stores" / f"r{i:03d}"
            elif fmt == "lightning":
                path = root / "lightning_logs" / f"version_{i}" / "metrics.csv"
            else:
                path = root / "logs" / f"r{i:03d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.runs.append((fmt, kind, path, rng))
            self._write(i, 0, points, first=True)
        self.length = points

    def _write(self, i: int, start: int, n: int, first: bool = False) -> None:
        fmt, kind, path, rng = self.runs[i]
        t = np.arange(start + 1, start + n + 1, dtype=float)
        values = _curve(kind, t, self.points, rng).tolist()
        steps = range(start, start + n)
        if fmt == "unstuck":
            if first:
                self.stores[path] = RunStore(path)
            store = self.stores[path]
            store.log_metrics([("loss", s, v) for s, v in zip(steps, values)])
            store.flush()
            return
        with path.open("a", encoding="utf-8") as fh:
            if fmt == "jsonl":
                fh.writelines(
                    json.dumps({"step": s, "loss": v}) + "\n" for s, v in zip(steps, values)
                )
                return
            if first:
                fh.write("epoch,step,train_loss\n" if fmt == "lightning" else "step,loss\n")
            if fmt == "lightning":
                fh.writelines(f"{s // 1000},{s},{v}\n" for s, v in zip(steps, values))
            else:
                fh.writelines(f"{s},{v}\n" for s, v in zip(steps, values))

    def append(self, n: int) -> None:
        for i in range(len(self.runs)):
            self._write(i, self.length, n)
        self.length += n

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


def _rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _timed(watcher: Watcher, trace: bool) -> dict[str, Any]:
    before = watcher.points_read
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    rows = watcher.refresh()
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "seconds": round(seconds, 4),
        "points_read": watcher.points_read - before,
    }
    if trace:
        out["peak_alloc_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
        tracemalloc.stop()
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    out["states"] = states
    return out


def _measure(paths: list[str], feed: str, fleet: Fleet, append: int) -> dict[str, Any]:
    watcher = Watcher(paths, feed=feed, stale_after=1e9)
    rss0 = _rss_mib()
    first = _timed(watcher, trace=False)
    first["rss_growth_mib"] = round(_rss_mib() - rss0, 1)
    quiet = _timed(watcher, trace=False)
    quiet["peak_alloc_mib"] = _timed(watcher, trace=True)["peak_alloc_mib"]
    fleet.append(append)
    appended = _timed(watcher, trace=False)
    fleet.append(append)
    appended["peak_alloc_mib"] = _timed(watcher, trace=True)["peak_alloc_mib"]
    out = {
        "runs": len(watcher.runs),
        "first_refresh": first,
        "nothing_new": quiet,
        f"appended_{append}_per_run": appended,
    }
    logging.info("feed=%s: %s", feed, json.dumps(out))
    return out


def bench(runs: int, points: int, append: int, point_runs: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "runs": runs,
        "points_per_run": points,
        "formats": list(FORMATS),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "feeds": {},
    }
    with tempfile.TemporaryDirectory(prefix="unstuck-watch-bench-") as tmp:
        t0 = time.perf_counter()
        fleet = Fleet(Path(tmp), runs, points)
        result["write_fleet_seconds"] = round(time.perf_counter() - t0, 2)
        try:
            result["feeds"]["refresh"] = _measure([tmp], "refresh", fleet, append)
            if point_runs > 0:
                subset = [str(p) for _, _, p, _ in fleet.runs]
                result["feeds"]["point"] = _measure(subset[:point_runs], "point", fleet, append)
        finally:
            fleet.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--append", type=int, default=100, help="points appended per run")
    parser.add_argument(
        "--point-runs", type=int, default=20, help="runs measured with --feed point (0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 runs of 2k points")
    parser.add_argument("--json", metavar="PATH", help="also write the result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    runs, points = (QUICK["runs"], QUICK["points"]) if args.quick else (args.runs, args.points)
    point_runs = min(args.point_runs, runs)
    result = bench(runs, points, args.append, point_runs)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
