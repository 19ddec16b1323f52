"""``unstuck watch``: a generated fleet of 50 runs in every watched format, read incrementally.

The fleet is written at test time: unstuck run stores (some still open, some closed), CSV and
JSON-lines logs, Lightning ``version_N/metrics.csv``, TensorBoard event folders, HF
``trainer_state.json``, a printed log and one file no reader knows. A third of the runs stall
(flat loss), a third improve, a third diverge.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unstuck.analyze import analyze, load
from unstuck.cli.main import main
from unstuck.fleet import Watcher, shell_hook
from unstuck.fleet.render import format_table, write_html
from unstuck.fleet.watcher import ATTENTION
from unstuck.record.store import RunStore

N = 80  # points per generated run: enough for the detector's verdicts, cheap to replay
KINDS = ("flat", "improving", "diverging")
NOISE = 0.03  # log-normal noise of improving and diverging curves
STAMP_MS = 1_700_000_000_000  # MLflow's timestamps are in ms
FLAT_NOISE = 0.01  # ... and of flat ones: 3 % makes a few seeds' flat tails read as "slow"
EXPECTED = {"flat": "plateau", "improving": "improving", "diverging": "diverging"}


def curve(kind: str, n: int = N, seed: int = 0, start: int = 0) -> list[float]:
    """A noisy loss curve of ``n`` points: stalls, improves or diverges."""
    rng = np.random.default_rng(seed)
    t = np.arange(start + 1, start + n + 1, dtype=float)
    if kind == "flat":
        v = 0.4 + 2.0 * np.exp(-t / (0.05 * N))
    elif kind == "improving":
        v = 3.0 * (t / 10 + 1) ** -0.7
    else:
        rise = 0.3 * np.exp((t - 0.4 * N) / (0.1 * N))
        v = np.where(t < 0.4 * N, 2.0 * np.exp(-t / (0.1 * N)) + 0.3, rise + 0.037)
    noise = FLAT_NOISE if kind == "flat" else NOISE
    return [float(x) for x in v * np.exp(rng.normal(0, noise, n))]


def write_csv(path: Path, values: list[float], start: int = 0, header: bool = True) -> None:
    with path.open("a", encoding="utf-8") as fh:
        if header:
            fh.write("step,loss\n")
        fh.writelines(f"{start + i},{v}\n" for i, v in enumerate(values))


def write_jsonl(path: Path, values: list[float], start: int = 0) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps({"step": start + i, "loss": v}) + "\n" for i, v in enumerate(values)
        )


def write_lightning(folder: Path, values: list[float]) -> None:
    folder.mkdir(parents=True)
    rows = ["epoch,step,train_loss,val_loss"]
    for i, v in enumerate(values):
        rows.append(f"{i // 40},{i},{v},")
        if i % 40 == 39:
            rows.append(f"{i // 40},{i},,{v * 1.1}")
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


class TBRun:
    """A TensorBoard run folder written with tensorboard's own event writer (no torch)."""

    def __init__(self, folder: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import (  # type: ignore[import-untyped]
            EventFileWriter,
        )

        self.writer = EventFileWriter(str(folder))

    def add(self, values: list[float], start: int = 0) -> None:
        from tensorboard.compat.proto import (  # type: ignore[import-untyped]
            event_pb2,
            summary_pb2,
        )

        for i, v in enumerate(values):
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag="train/loss", simple_value=v)]
            )
            self.writer.add_event(
                event_pb2.Event(step=start + i, wall_time=time.time(), summary=summary)
            )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_hf(folder: Path, values: list[float]) -> None:
    folder.mkdir(parents=True)
    history = [{"step": i + 1, "loss": v, "epoch": i / len(values)} for i, v in enumerate(values)]
    state = {"global_step": len(values), "max_steps": 10 * len(values), "log_history": history}
    (folder / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")


def store_run(folder: Path, values: list[float], start: int = 0) -> RunStore:
    store = RunStore(folder)
    store.log_metrics([("loss", start + i, v) for i, v in enumerate(values)])
    store.flush()
    return store


def build_fleet(root: Path) -> tuple[dict[str, str], list[Any]]:
    """50 runs under ``root``; returns {run name: kind} and what must be closed after."""
    kinds: dict[str, str] = {}
    handles: list[Any] = []
    seed = 0

    def nxt(i: int) -> tuple[str, int]:
        nonlocal seed
        seed += 1
        return KINDS[i % 3], seed

    for i in range(12):  # run stores: the first six stay open (live), the rest are closed
        kind, s = nxt(i)
        store = store_run(root / "stores" / f"s{i:02d}-{kind}", curve(kind, seed=s))
        if i < 6:
            handles.append(store)
        else:
            store.close()
        kinds[f"root/stores/s{i:02d}-{kind}"] = kind
    (root / "logs").mkdir()
    for i in range(10):
        kind, s = nxt(i)
        write_csv(root / "logs" / f"c{i:02d}-{kind}.csv", curve(kind, seed=s))
        kinds[f"root/logs/c{i:02d}-{kind}.csv"] = kind
    for i in range(10):
        kind, s = nxt(i)
        write_jsonl(root / "logs" / f"j{i:02d}-{kind}.jsonl", curve(kind, seed=s))
        kinds[f"root/logs/j{i:02d}-{kind}.jsonl"] = kind
    for i in range(10):
        kind, s = nxt(i)
        write_lightning(root / "lightning_logs" / f"version_{i}", curve(kind, seed=s))
        kinds[f"root/lightning_logs/version_{i}"] = kind
    for i in range(4):
        kind, s = nxt(i)
        tb = TBRun(root / "tb" / f"t{i}-{kind}")
        tb.add(curve(kind, seed=s))
        handles.append(tb)
        kinds[f"root/tb/t{i}-{kind}"] = kind
    for i in range(2):
        kind, s = nxt(i)
        write_hf(root / "hf" / f"h{i}-{kind}", curve(kind, seed=s))
        kinds[f"root/hf/h{i}-{kind}"] = kind
    text = "\n".join(f"step {i}: loss {v:.5f}" for i, v in enumerate(curve("flat", seed=99)))
    (root / "logs" / "printed-flat.log").write_text(text + "\n", encoding="utf-8")
    kinds["root/logs/printed-flat.log"] = "flat"
    (root / "logs" / "notes.txt").write_text("just some notes\nnothing logged\n", encoding="utf-8")
    kinds["root/logs/notes.txt"] = "unreadable"
    assert len(kinds) == 50
    return kinds, handles


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("fleet") / "root"
    root.mkdir()
    kinds, handles = build_fleet(root)
    yield root, kinds
    for h in handles:
        h.close()


@pytest.fixture(scope="module")
def once_json(
    fleet: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """``unstuck watch --once --json`` over the fleet, as a script would run it."""
    import contextlib
    import io

    root, _ = fleet
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["watch", "--once", "--json", str(root)]) == 0
    rows: list[dict[str, Any]] = json.loads(out.getvalue())
    return rows


def test_fleet_every_run_once_with_its_state(
    fleet: tuple[Path, dict[str, str]], once_json: list[dict[str, Any]]
) -> None:
    _, kinds = fleet
    by_name = {r["name"]: r for r in once_json}
    assert sorted(by_name) == sorted(kinds)
    for name, kind in kinds.items():
        row = by_name[name]
        if kind == "unreadable":
            assert row["state"] == "unreadable" and row["error"], row
            continue
        assert row["error"] is None, row
        assert row["detector_state"] == EXPECTED[kind], (name, row)
        if "stores/s" in name and int(name.split("/s")[-1][:2]) >= 6:
            assert row["state"] == "finished"  # a closed store is a finished run
    sources = {r["source"] for r in once_json}
    assert {"unstuck", "csv", "jsonl", "lightning", "tensorboard", "hf", "text"} <= sources


def test_fleet_stalled_on_top(once_json: list[dict[str, Any]]) -> None:
    order = [ATTENTION.index(r["state"]) for r in once_json]
    assert order == sorted(order)
    live_stuck = [r for r in once_json if r["state"] in ("diverging", "plateau")]
    assert len(live_stuck) >= 20
    assert once_json[: len(live_stuck)] == live_stuck
    plateau = [r for r in once_json if r["state"] == "plateau"]
    assert all(r["stuck_steps"] > 0 and r["plateau_start"] is not None for r in plateau)
    assert all(r["finding"].startswith("loss flat since step") for r in plateau)
    assert once_json[-1]["state"] == "finished"


def test_once_json_agrees_with_analyze(
    fleet: tuple[Path, dict[str, str]], once_json: list[dict[str, Any]]
) -> None:
    for row in once_json:
        if row["state"] == "unreadable":
            continue
        run = analyze(load(row["path"]))
        series = run.meta["analysis"]["series"]["loss"]
        assert row["detector_state"] == series["final_state"], row["name"]
        open_plateaus = [p for p in run.plateaus if p.series == "train" and p.end is None]
        start = open_plateaus[-1].start if open_plateaus else None
        assert row["plateau_start"] == start, row["name"]
        assert row["steps"] == series["last_step"], row["name"]


def test_appended_points_are_the_only_ones_read(tmp_path: Path) -> None:
    """Runs that grow between refreshes: only the new points are read, and the state moves."""
    stores = tmp_path / "fleet"
    (stores / "logs").mkdir(parents=True)
    head = curve("improving", n=40, seed=1)
    write_csv(stores / "logs" / "a.csv", head)
    write_jsonl(stores / "logs" / "b.jsonl", head)
    store = store_run(stores / "store", head)
    tb = TBRun(stores / "tb")
    tb.add(head)
    try:
        watcher = Watcher([str(stores)])
        rows = watcher.refresh()
        assert {r["detector_state"] for r in rows} <= {"improving", "unknown"}
        first = watcher.points_read
        assert first == 4 * len(head)
        t0 = time.perf_counter()
        watcher.refresh()
        assert time.perf_counter() - t0 < 1.0
        assert watcher.points_read == first  # nothing new, nothing read
        flat = [0.4 * float(x) for x in np.exp(np.random.default_rng(5).normal(0, 0.01, 160))]
        write_csv(stores / "logs" / "a.csv", flat, start=40, header=False)
        write_jsonl(stores / "logs" / "b.jsonl", flat, start=40)
        store.log_metrics([("loss", 40 + i, v) for i, v in enumerate(flat)])
        store.flush()
        tb.add(flat, start=40)
        rows = watcher.refresh()
        assert watcher.points_read - first == 4 * len(flat)
        for r in rows:
            assert r["steps"] == 199, r
            assert r["detector_state"] == "plateau", r
            assert r["plateau_start"] is not None and r["plateau_start"] >= 30, r
    finally:
        store.close()
        tb.close()
    # The store is closed now: the run is finished, and reading that costs no point.
    rows = watcher.refresh()
    assert next(r for r in rows if r["source"] == "unstuck")["state"] == "finished"
    assert watcher.points_read - first == 4 * len(flat)


def test_rewritten_csv_starts_the_run_over(tmp_path: Path) -> None:
    log = tmp_path / "run.csv"
    write_csv(log, curve("flat", seed=3))
    watcher = Watcher([str(log)])
    assert watcher.refresh()[0]["detector_state"] == "plateau"
    log.write_text("step,loss,acc\n" + "".join(f"{i},{3.0 / (i + 1)},0\n" for i in range(10)))
    row = watcher.refresh()[0]
    assert row["steps"] == 9 and row["points"] == 10 and row["plateau_start"] is None
    assert [r.resets for r in watcher.runs.values()] == [1]


def test_on_stall_once_per_episode(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write_csv(logs / "stuck.csv", curve("flat", seed=7))
    write_jsonl(logs / "blowup.jsonl", curve("diverging", seed=8))
    write_csv(logs / "fine.csv", curve("improving", seed=9))
    out = tmp_path / "hook.jsonl"
    watcher = Watcher([str(logs)], on_stall=shell_hook(f"cat >> '{out}'"))
    watcher.refresh()
    fired = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["name"] for r in fired) == ["logs/blowup.jsonl", "logs/stuck.csv"]
    assert {r["state"] for r in fired} == {"plateau", "diverging"}
    watcher.refresh()  # nothing new: the same episodes
    more = curve("flat", seed=10)[-40:]
    write_csv(logs / "stuck.csv", more, start=N, header=False)
    watcher.refresh()  # the plateau goes on: still the same episode
    assert len(out.read_text().splitlines()) == 2
    # The run recovers (falls a lot), then stalls again: a new episode, one more call.
    drop = [0.05 * float(x) for x in np.exp(np.random.default_rng(11).normal(0, 0.02, 400))]
    write_csv(logs / "stuck.csv", drop, start=N + 40, header=False)
    row = next(r for r in watcher.refresh() if r["name"] == "logs/stuck.csv")
    assert row["detector_state"] == "plateau" and row["plateau_start"] >= N + 40
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["plateau_start"] == row["plateau_start"]


def test_stale_and_unreadable_never_crash(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write_csv(logs / "old.csv", curve("improving", seed=12))
    hour_ago = time.time() - 3600
    os.utime(logs / "old.csv", (hour_ago, hour_ago))
    (logs / "garbage.csv").write_bytes(b"\x00\x01\x02 not a log \xff\xfe")
    write_csv(logs / "new.csv", curve("improving", seed=13))
    watcher = Watcher([str(logs)], stale_after=600)
    rows = {r["name"]: r for r in watcher.refresh()}
    assert rows["logs/old.csv"]["state"] == "stale"
    assert rows["logs/old.csv"]["finding"].startswith("no new data for")
    assert rows["logs/new.csv"]["state"] == "improving"
    assert rows["logs/garbage.csv"]["state"] == "unreadable"
    assert "cannot read" in rows["logs/garbage.csv"]["error"]
    # a run whose file is deleted between refreshes disappears; one made unreadable says so
    (logs / "new.csv").write_text("step,acc\n1,0.5\n")
    rows = {r["name"]: r for r in watcher.refresh()}
    assert rows["logs/new.csv"]["state"] == "unreadable"
    assert "no loss column" in rows["logs/new.csv"]["error"]


def test_mlflow_two_experiments(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    from mlflow.entities import Metric

    expected: dict[str, str] = {}
    for exp_name, kinds in (("alpha", ("flat", "improving")), ("beta", ("diverging",))):
        exp = client.create_experiment(exp_name, artifact_location=str(tmp_path / exp_name))
        for kind in kinds:
            run = client.create_run(exp, run_name=f"{exp_name}-{kind}")
            values = curve(kind, seed=len(expected) + 20)
            metrics = [Metric("train_loss", v, STAMP_MS + i, i) for i, v in enumerate(values)]
            client.log_batch(run.info.run_id, metrics=metrics)
            if kind == "improving":
                client.set_terminated(run.info.run_id)
            expected[f"{exp_name}/{exp_name}-{kind}"] = kind
    watcher = Watcher(["mlflow:alpha"], tracking_uri=str(db), stale_after=1e12)
    rows = {r["name"]: r for r in watcher.refresh()}
    assert sorted(rows) == ["alpha/alpha-flat", "alpha/alpha-improving"]
    assert rows["alpha/alpha-flat"]["state"] == "plateau"
    assert rows["alpha/alpha-improving"]["state"] == "finished"
    assert rows["alpha/alpha-improving"]["detector_state"] == "improving"
    read = watcher.points_read
    watcher.refresh()
    assert watcher.points_read == read + N  # the live run's history again, not the ended one's
    both = Watcher(["mlflow:"], tracking_uri=uri, stale_after=1e12).refresh()
    assert {r["name"]: r["detector_state"] for r in both} == {
        k: EXPECTED[v] for k, v in expected.items()
    }


def test_cli_table_html_and_errors(
    fleet: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write_csv(logs / "stuck.csv", curve("flat", seed=30))
    write_csv(logs / "fine.csv", curve("improving", seed=31))
    page = tmp_path / "fleet.html"
    assert main(["watch", "--once", "--html", str(page), str(logs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("unstuck watch") and "2 runs" in out[0]
    assert out[2].startswith("logs/stuck.csv") and "plateau since" in out[2]
    text = page.read_text(encoding="utf-8")
    assert text.count("<polyline") == 2
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")
    assert main(["watch", "--once", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file or folder" in err[0]
    assert main(["watch", "--once", "--interval", "0", str(logs)]) == 2
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["watch", "--once", "mlflow:x"]) == 2
    assert "--tracking-uri" in capsys.readouterr().err
    lines = format_table([])
    assert "0 runs" in lines[0]
    write_html(tmp_path / "empty.html", [], lambda r: ([], []))


def test_watch_imports_no_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    write_csv(tmp_path / "a.csv", curve("flat", n=40))
    write_jsonl(tmp_path / "b.jsonl", curve("flat", n=40))
    code = (
        "import sys, contextlib, io; from unstuck.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main(['watch', '--once', '--html', {str(tmp_path / 'p.html')!r}, "
        f"{str(tmp_path)!r}])\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_diagnose_shows_analyze_top_finding_once_per_episode(tmp_path: Path) -> None:
    write_csv(tmp_path / "blowup.csv", curve("diverging", seed=3))
    write_csv(tmp_path / "stuck.csv", curve("flat", seed=3))
    watcher = Watcher([str(tmp_path)], diagnose=True)
    rows = {r["name"]: r for r in watcher.refresh()}
    top = analyze(load(tmp_path / "blowup.csv")).findings[0]
    assert rows[f"{tmp_path.name}/blowup.csv"]["finding"] == f"{top.cause}: {top.summary}"
    # analyze names no cause for the plain flat curve: the detector's reading stays
    assert rows[f"{tmp_path.name}/stuck.csv"]["finding"].startswith("loss flat since step")
    again = {r["name"]: r for r in watcher.refresh()}  # the episode goes on: kept, not re-run
    assert again[f"{tmp_path.name}/blowup.csv"]["finding"].startswith(top.cause)


def test_live_view_refreshes_until_interrupted(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    write_csv(tmp_path / "run.csv", curve("flat", n=40))
    proc = subprocess.Popen(
        [sys.executable, "-m", "unstuck", "watch", "--interval", "0.3", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background by a shell without job control inherits SIGINT
        # ignored, and Python then keeps ignoring it: give the child the default disposition,
        # as a terminal's Ctrl-C would find it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 30
        seen = ""
        assert proc.stdout is not None
        while seen.count("unstuck watch ") < 2 and time.time() < deadline:
            seen += proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen.count("unstuck watch ") >= 2, seen + err
    assert proc.returncode == 0, err
