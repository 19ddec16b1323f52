"""What the Guard's flush, store and report cost as a model's parameter *tensors* multiply.

Large models hold thousands of parameter tensors. Every tap that reads per-tensor values (grad
norms, update ratios, weight norms) grows with that count; what the Guard stores and reports
must not grow past what it really records. Models with ``--tensors`` parameter tensors (a chain
of small ``Linear`` layers, weight + bias each, the same total width) train ``--steps`` steps
under a Guard at its defaults with a ``run_dir``; the bench reports, per model:

* ``flush_ms``: the median time of a ``guard.step`` that flushes, and ``step_ms`` of one that
  does not (the plain step's time is ``plain_ms``, measured in the same run);
* ``rows_per_flush``: metric rows written to the run store per flush, and ``store_kb`` /
  ``report_kb``: the files' sizes at the end.

    python bench/many_tensors.py [--tensors 20,200,2000] [--steps 300] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import unstuck

HERE = Path(__file__).resolve().parent
WIDTH = 8


def make_model(tensors: int) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for _ in range(max(1, tensors // 2)):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def measure(tensors: int, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make_model(tensors)
    plain_model = make_model(tensors)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01)
    with tempfile.TemporaryDirectory(prefix="unstuck-bench-tensors-") as tmp:
        guard = unstuck.Guard(model, opt, run_dir=tmp, console=False)
        flush_every = guard.flush_every
        flushes, others, plain = [], [], []
        for step in range(steps):
            x = torch.randn(16, WIDTH)
            t0 = time.perf_counter()
            loss = plain_model(x).pow(2).mean()
            plain_opt.zero_grad()
            loss.backward()
            plain_opt.step()
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.step(loss)
            elapsed = time.perf_counter() - t0
            (flushes if (step + 1) % flush_every == 0 else others).append(elapsed)
        guard.close()
        store = Path(tmp, "unstuck.sqlite")
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        finally:
            conn.close()
        report = Path(tmp, "report.html")
        n_flush = max(1, steps // flush_every)
        return {
            "tensors": sum(1 for _ in model.parameters()),
            "params": sum(p.numel() for p in model.parameters()),
            "plain_ms": round(1e3 * statistics.median(plain), 3),
            "step_ms": round(1e3 * statistics.median(others), 3),
            "flush_ms": round(1e3 * statistics.median(flushes), 1) if flushes else None,
            "rows_per_flush": round(rows / n_flush, 1),
            "store_kb": round(store.stat().st_size / 1024, 1),
            "report_kb": round(report.stat().st_size / 1024, 1) if report.exists() else None,
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", default="20,200,2000")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "many_tensors.json")
    args = ap.parse_args(argv)
    logging.getLogger("unstuck").setLevel(logging.ERROR)
    rows = [measure(int(n), args.steps) for n in args.tensors.split(",") if n]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))
    return {"rows": rows}


if __name__ == "__main__":
    main()
