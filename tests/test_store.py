"""Run store: round trips, several runs per file, errors, live reads, and a SIGKILLed writer."""

from __future__ import annotations

import math
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from unstuck.record.store import (
    SCHEMA_VERSION,
    STORE_FILENAME,
    RunStore,
    read_events,
    read_meta,
    read_metrics,
    read_runs,
)

SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"
CRASH_FLUSH_EVERY = 37  # rows per flush in the killed writer; odd so flushes straddle events
CRASH_MIN_FLUSHES = 5  # kill only after this many reported flushes
CRASH_TIMEOUT_S = 30.0  # generous: the child imports unstuck (and torch) before writing


def _same(a: float, b: float) -> bool:
    """Exact equality that also treats NaN as equal to NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_metrics_round_trip_keeps_nan_and_infinities(tmp_path: pathlib.Path) -> None:
    values = [1.5, math.nan, math.inf, -math.inf, 0.0, 1e-310, -2.5e300, 3.141592653589793]
    with RunStore(tmp_path) as store:
        store.log_metrics(("loss", i, v) for i, v in enumerate(values))
        store.log_metrics([("grad_norm/fc.weight", 7, 2.0), ("grad_norm/fc.weight", 3, 1.0)])
    series = read_metrics(tmp_path)
    steps, got = series["loss"]
    assert steps == list(range(len(values)))
    assert len(got) == len(values)
    assert all(_same(a, b) for a, b in zip(got, values, strict=True)), got
    assert series["grad_norm/fc.weight"] == ([3, 7], [1.0, 2.0])  # ordered by step
    assert set(read_metrics(tmp_path, names=["loss"])) == {"loss"}
    assert read_metrics(tmp_path, names=[]) == {}


def test_events_round_trip_nested_payloads_in_write_order(tmp_path: pathlib.Path) -> None:
    finding = {
        "code": "dead_relu",
        "confidence": 0.8,
        "evidence": {"dead_fraction": [0.5, math.nan], "layers": ("fc1", "fc2"), "z": math.inf},
        "remedies": [{"action": "lr_warmup", "params": {"factor": -math.inf}}],
        "ok": True,
        "none": None,
    }
    with RunStore(tmp_path) as store:
        store.log_event("state", 10, {"state": "plateau"})
        store.log_event("finding", 10, finding)
        store.log_event("state", 12, {"state": "improving"})
    events = read_events(tmp_path)
    assert [(e["kind"], e["step"], e["seq"]) for e in events] == [
        ("state", 10, 0),
        ("finding", 10, 1),
        ("state", 12, 2),
    ]
    got = events[1]["payload"]
    assert got["evidence"]["dead_fraction"][0] == 0.5
    assert math.isnan(got["evidence"]["dead_fraction"][1])
    assert got["evidence"]["z"] == math.inf
    assert got["evidence"]["layers"] == ["fc1", "fc2"]  # tuples come back as lists
    assert got["remedies"][0]["params"]["factor"] == -math.inf
    assert (got["ok"], got["none"], got["code"]) == (True, None, "dead_relu")
    states = read_events(tmp_path, kind="state")
    assert [e["payload"]["state"] for e in states] == ["plateau", "improving"]


def test_payloads_are_strict_json_queryable_with_plain_sqlite(tmp_path: pathlib.Path) -> None:
    with RunStore(tmp_path) as store:
        store.log_event("note", 0, {"x": math.nan, "y": {"z": 2}})
    conn = sqlite3.connect(tmp_path / STORE_FILENAME)
    try:
        (z,) = conn.execute("SELECT json_extract(payload, '$.y.z') FROM events").fetchone()
        (version,) = conn.execute(
            "SELECT value FROM schema_info WHERE key = 'schema_version'"
        ).fetchone()
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    assert z == 2
    assert int(version) == SCHEMA_VERSION
    assert mode == "wal"


def test_meta_round_trip_and_update(tmp_path: pathlib.Path) -> None:
    with RunStore(tmp_path, meta={"lr": 3e-4, "model": {"layers": 4}}, run_id="a") as store:
        assert read_meta(tmp_path) == {"lr": 3e-4, "model": {"layers": 4}}
        store.update_meta(seed=7, lr=1e-3, best=math.nan)
        assert read_meta(tmp_path)["lr"] == 3e-4  # not flushed yet
        store.flush()
        meta = read_meta(tmp_path, run_id="a")
    assert meta["lr"] == 1e-3
    assert meta["seed"] == 7
    assert meta["model"] == {"layers": 4}
    assert math.isnan(meta["best"])


def test_several_runs_share_one_file(tmp_path: pathlib.Path) -> None:
    with RunStore(tmp_path, run_id="first", meta={"i": 1}) as store:
        store.log_metrics([("loss", 0, 1.0)])
        store.log_event("note", 0, {"n": 1})
    with RunStore(tmp_path, run_id="second", meta={"i": 2}) as store:
        store.log_metrics([("loss", 0, 2.0), ("loss", 1, 1.9)])
    runs = read_runs(tmp_path)
    assert [r["run_id"] for r in runs] == ["first", "second"]
    assert all(r["status"] == "closed" and r["ended_at"] is not None for r in runs)
    assert read_meta(tmp_path) == {"i": 2}  # latest by default
    assert read_meta(tmp_path, "first") == {"i": 1}
    assert read_metrics(tmp_path, "first") == {"loss": ([0], [1.0])}
    assert read_metrics(tmp_path) == {"loss": ([0, 1], [2.0, 1.9])}
    assert read_events(tmp_path) == []
    assert len(read_events(tmp_path, "first")) == 1
    with pytest.raises(ValueError, match="no run 'third'"):
        read_metrics(tmp_path, "third")
    with pytest.raises(ValueError, match="already in"):
        RunStore(tmp_path, run_id="first")


def test_default_run_ids_are_unique(tmp_path: pathlib.Path) -> None:
    ids = set()
    for _ in range(5):
        with RunStore(tmp_path) as store:
            ids.add(store.run_id)
    assert len(ids) == 5


def test_unwritable_run_dir_is_a_value_error_at_construction(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"is not writable: .*run_dir=None"):
        RunStore(blocker / "run")
    with pytest.raises(ValueError, match="is not writable"):
        RunStore(blocker)  # run_dir is itself a file
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / STORE_FILENAME).mkdir()  # the store's name is taken by a directory
    with pytest.raises(ValueError, match="is not writable"):
        RunStore(tmp_path / "dir")


def test_bad_payload_fails_at_the_call(tmp_path: pathlib.Path) -> None:
    with RunStore(tmp_path) as store:
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            store.log_event("note", 0, {"obj": object()})
        with pytest.raises(ValueError, match="non-empty str"):
            store.log_event("", 0, {})
        store.log_event("note", 1, {"ok": 1})
    assert [e["step"] for e in read_events(tmp_path)] == [1]


def test_use_after_close_is_a_runtime_error(tmp_path: pathlib.Path) -> None:
    store = RunStore(tmp_path)
    store.log_metrics([("loss", 0, 1.0)])
    store.close()
    store.close()  # idempotent
    store.flush()  # nothing left to do
    assert store.closed
    with pytest.raises(RuntimeError, match="RunStore is closed; create a new Guard/RunStore"):
        store.log_metrics([("loss", 1, 1.0)])
    with pytest.raises(RuntimeError, match="RunStore is closed"):
        store.log_event("note", 1, {})
    with pytest.raises(RuntimeError, match="RunStore is closed"):
        store.update_meta(x=1)
    assert read_metrics(tmp_path) == {"loss": ([0], [1.0])}


def test_read_while_writer_is_open_sees_exactly_the_flushed_rows(tmp_path: pathlib.Path) -> None:
    store = RunStore(tmp_path, run_id="live")
    try:
        store.log_metrics([("loss", i, float(i)) for i in range(10)])
        assert read_metrics(tmp_path) == {}  # buffered, not on disk
        store.flush()
        assert read_metrics(tmp_path)["loss"][0] == list(range(10))
        store.log_metrics([("loss", 10, 10.0)])
        store.log_event("state", 10, {"state": "plateau"})
        store.flush(wait=False)
        store.flush()  # waits for the wait=False batch too
        assert read_metrics(tmp_path)["loss"][0] == list(range(11))
        assert read_runs(tmp_path)[0]["status"] == "running"
        assert len(read_events(tmp_path)) == 1
    finally:
        store.close()
    assert read_runs(tmp_path)[0]["status"] == "closed"


def test_unclosed_store_is_flushed_when_dropped(tmp_path: pathlib.Path) -> None:
    store = RunStore(tmp_path)
    store.log_metrics([("loss", 0, 4.0)])
    del store  # the finalizer flushes and marks the run closed
    assert read_metrics(tmp_path) == {"loss": ([0], [4.0])}
    assert read_runs(tmp_path)[0]["status"] == "closed"


def test_reading_a_missing_store_names_the_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run store"):
        read_runs(tmp_path)
    assert not (tmp_path / STORE_FILENAME).exists()  # reading creates nothing


CRASH_WRITER = textwrap.dedent(
    """
    import math, sys
    from unstuck.record.store import RunStore

    def value(i):
        return (math.nan, math.inf, -math.inf)[i % 3] if i % 10 == 9 else i * 0.001 - 1.0 / (i + 1)

    store = RunStore(sys.argv[1], run_id="doomed", meta={"kind": "crash-test"})
    every = int(sys.argv[2])
    i = 0
    while True:
        store.log_metrics([("loss", i, value(i)), ("acc", i, i / 7)])
        if i % 5 == 0:
            store.log_event("note", i, {"i": i, "nested": {"v": [value(i)]}})
        i += 1
        if i % every == 0:
            store.flush()
            print(i, flush=True)
    """
)


def _crash_value(i: int) -> float:
    if i % 10 == 9:
        return (math.nan, math.inf, -math.inf)[i % 3]
    return i * 0.001 - 1.0 / (i + 1)


def test_sigkilled_writer_leaves_every_flushed_row(tmp_path: pathlib.Path) -> None:
    paths = [str(SRC_DIR), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(tmp_path), str(CRASH_FLUSH_EVERY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    reported: list[int] = []
    deadline = time.monotonic() + CRASH_TIMEOUT_S
    try:
        while len(reported) < CRASH_MIN_FLUSHES and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break  # the writer died on its own
            reported.append(int(line))
        time.sleep(random.uniform(0.0, 0.01))  # let the kill land anywhere, mid-commit included
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate(timeout=CRASH_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, err
    reported += [int(x) for x in rest.split()]  # flushes completed before the kill landed
    assert len(reported) >= CRASH_MIN_FLUSHES, err
    last = reported[-1]

    runs = read_runs(tmp_path)
    assert [(r["run_id"], r["status"]) for r in runs] == [("doomed", "running")]
    assert read_meta(tmp_path) == {"kind": "crash-test"}
    series = read_metrics(tmp_path)
    steps, values = series["loss"]
    assert len(steps) >= last
    assert steps == list(range(len(steps)))  # a gap-free prefix: whole batches or nothing
    assert len(steps) % CRASH_FLUSH_EVERY == 0
    assert all(_same(values[i], _crash_value(i)) for i in range(len(steps)))
    assert series["acc"] == (steps, [i / 7 for i in steps])
    events = read_events(tmp_path)
    assert [e["step"] for e in events] == list(range(0, len(steps), 5))
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(_same(e["payload"]["nested"]["v"][0], _crash_value(e["step"])) for e in events)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+ warns on threads
def test_forked_child_neither_writes_nor_hangs(tmp_path: pathlib.Path) -> None:
    store = RunStore(tmp_path)
    store.log_metrics([("loss", 0, 1.0)])
    pid = os.fork()
    if pid == 0:  # child, like a DataLoader worker: exiting must not touch the parent's store
        try:
            store.log_metrics([("loss", 1, 9.0)])
            store.close()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.close()
    assert read_metrics(tmp_path) == {"loss": ([0], [1.0])}
