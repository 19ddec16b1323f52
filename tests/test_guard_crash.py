"""A guarded run killed with SIGKILL keeps everything ``guard.flush()`` returned from."""

from __future__ import annotations

import json
import math
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from unstuck.record import read_events, read_meta, read_metrics, read_runs

SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"
MIN_MARKERS = 4
TIMEOUT_S = 60.0
NAN_STEP = 37  # the child hands the Guard a NaN loss here: a nonfinite finding follows

CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    import unstuck

    torch.set_num_threads(1)
    torch.manual_seed(0)
    run_dir, flush_every, marker_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.05)  # model[0] left out: a finding
    guard = unstuck.Guard(
        model, optimizer, run_dir=run_dir, flush_every=flush_every, grad_norm_every=1,
        meta={"kind": "crash"},
    )
    step = 0
    while True:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(torch.tensor(float("nan")) if step == NAN_STEP else loss)
        step += 1
        if step % marker_every == 0:
            guard.flush()
            causes = [f.cause for f in guard.findings]
            print("FLUSHED", guard.steps, json.dumps(causes), flush=True)
    """
).replace("NAN_STEP", str(NAN_STEP))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sigkill_mid_training_keeps_every_flushed_row_and_event(tmp_path: pathlib.Path) -> None:
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC_DIR), os.environ.get("PYTHONPATH")) if p),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    # flush_every does not divide marker_every: automatic (wait=False) flushes interleave
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run_dir), "7", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    markers: list[tuple[int, list[str]]] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(markers) < MIN_MARKERS and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break  # the child died on its own
            if line.startswith("FLUSHED"):
                _, steps, causes = line.split(" ", 2)
                markers.append((int(steps), json.loads(causes)))
        time.sleep(random.uniform(0.0, 0.02))  # land the kill anywhere, mid-commit included
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, err
    for line in rest.splitlines():  # markers printed before the kill landed
        if line.startswith("FLUSHED"):
            _, steps, causes = line.split(" ", 2)
            markers.append((int(steps), json.loads(causes)))
    assert len(markers) >= MIN_MARKERS, err
    last_steps, last_causes = markers[-1]
    assert last_steps >= MIN_MARKERS * 20

    runs = read_runs(run_dir)
    assert len(runs) == 1
    assert runs[0]["status"] == "running"  # killed, never closed
    assert read_meta(run_dir)["kind"] == "crash"

    metrics = read_metrics(run_dir)
    steps, values = metrics["loss"]
    assert len(steps) >= last_steps
    assert steps == list(range(len(steps)))  # a gap-free prefix, no duplicates
    assert math.isnan(values[NAN_STEP])
    assert all(math.isfinite(v) for i, v in enumerate(values) if i != NAN_STEP)
    grad_steps = metrics["grad_norm"][0]
    assert grad_steps[:last_steps] == list(range(last_steps))
    flushed_at = {s + 1 for s in metrics["param_distance"][0]}
    assert set(range(20, last_steps + 1, 20)) <= flushed_at  # each guard.flush() ran the pipeline

    findings = [e["payload"]["cause"] for e in read_events(run_dir, kind="finding")]
    assert findings[: len(last_causes)] == last_causes
    assert "frozen_parameters" in last_causes
    assert "nonfinite" in last_causes
    events = read_events(run_dir)
    assert [e["seq"] for e in events] == list(range(len(events)))
