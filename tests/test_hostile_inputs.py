"""Hostile inputs and hostile environments (issue 21): none may take down a user's run.

Sections: the training side (a full disk, rollbacks after the user changed the optimizer or
mid-accumulation, ranks that disagree, SIGTERM, extreme numbers, bad arguments); the readers
(``unstuck analyze`` / ``report`` on hostile files) are the section at the end.
"""

from __future__ import annotations

import copy
import logging
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

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import unstuck
from conftest import regression_batch, tiny_mlp
from unstuck.record import read_events, read_metrics, read_runs
from unstuck.record.store import _Writer
from unstuck.rescue import Policy, Proposal

SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"


class _ProposeFrom(Policy):
    """Proposes ``proposals`` in order from Guard step ``start`` on (drives a real Guard)."""

    name = "test"

    def __init__(self, start: int, *proposals: Proposal) -> None:
        self.start = start
        self.proposals = list(proposals)

    def propose(self, *, step, state, findings, tried, plateau_kind=None, plateau_start=None):
        if step < self.start:
            return None
        return next((p for p in self.proposals if p.key not in tried), None)


HARMFUL = Proposal("lr_scale", {"factor": 300.0}, reason="test: a harmful action")


def _harmful_guard(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir: pathlib.Path, **extra: object
) -> unstuck.Guard:
    """A Guard that takes a harmful action at step 50 and judges it 40 steps later (so the
    rollback is what the test exercises), acting once."""
    return unstuck.Guard(
        model,
        optimizer,
        policy=_ProposeFrom(50, HARMFUL),
        run_dir=run_dir,
        flush_every=10,
        horizon=40,
        cooldown=10_000,
        console=False,
        **extra,  # type: ignore[arg-type]
    )


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _outcome(guard: unstuck.Guard, index: int = 0) -> str | None:
    actions = guard.actions
    return actions[index].outcome if len(actions) > index else None


# =========================================================================== training side
# --------------------------------------------------------------------------- a full disk


def _disk_full(self: _Writer, batch: object) -> None:
    raise sqlite3.OperationalError("database or disk is full")


def _train_plain(guard: unstuck.Guard, model, optimizer, steps: int, start: int = 0) -> None:
    for i in range(start, start + steps):
        x, y = regression_batch(seed=i)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(loss)


def test_a_full_disk_never_stops_training_and_is_said_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = unstuck.Guard(model, optimizer, run_dir=tmp_path, flush_every=10, console=False)
    _train_plain(guard, model, optimizer, 20)
    guard.flush()  # committed before the disk fills
    monkeypatch.setattr(_Writer, "_commit", _disk_full)
    with caplog.at_level(logging.DEBUG, logger="unstuck"):
        _train_plain(guard, model, optimizer, 80, start=20)  # 8 automatic flushes fail
        guard.flush()  # the explicit flush degrades the same way
        guard.close()  # and so does close (the run stays `running`: its end was not written)
    said = [r for r in caplog.records if r.levelno >= logging.WARNING and "commit" in r.message]
    assert len(said) == 1, [r.message for r in said]
    assert "free disk space" in said[0].message and "\n" not in said[0].message
    assert guard.steps == 100
    steps = read_metrics(tmp_path, names=["loss"])["loss"][0]
    assert steps == list(range(20))  # what was committed before the disk filled stays
    assert read_runs(tmp_path)[-1]["status"] == "running"


def test_the_store_itself_still_raises_on_a_waiting_flush(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct RunStore users asked to wait are told; ``wait=False`` never raises."""
    store = unstuck.record.RunStore(tmp_path)
    monkeypatch.setattr(_Writer, "_commit", _disk_full)
    store.log_metrics([("loss", 0, 1.0)])
    store.flush(wait=False)
    store.log_metrics([("loss", 1, 1.0)])
    store.flush(wait=False)
    with pytest.raises(RuntimeError, match="could not commit"):
        store.flush(wait=True)
    assert store.failed_batches == 2
    monkeypatch.undo()
    store.close()


def test_training_never_raises_because_of_recording(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's commits fail at random over a few hundred steps with rescue on: training
    completes, every action is taken and judged, and what did commit is readable."""
    chance = random.Random(21)
    real_commit = _Writer._commit

    def flaky(self: _Writer, batch: object) -> None:
        if chance.random() < 0.4:
            raise sqlite3.OperationalError("disk I/O error")
        real_commit(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(_Writer, "_commit", flaky)
    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    proposals = [
        HARMFUL,
        Proposal("lr_scale", {"factor": 0.5}, reason="test"),
        Proposal("lr_scale", {"factor": 2.0}, reason="test"),
    ]
    guard = unstuck.Guard(
        model,
        optimizer,
        policy=_ProposeFrom(50, *proposals),
        run_dir=tmp_path,
        flush_every=5,
        horizon=20,
        cooldown=10,
        console=False,
    )
    for i in range(300):
        _train_plain(guard, model, optimizer, 1, start=i)
        if i % 37 == 0:
            guard.flush()
    guard.close()
    assert guard.steps == 300
    outcomes = [a.outcome for a in guard.actions]
    assert len(outcomes) == 3 and all(o in ("kept", "rolled_back") for o in outcomes), outcomes
    assert outcomes[0] == "rolled_back"  # ×300 on a momentum SGD blows up: undone
    committed = read_metrics(tmp_path, names=["loss"]).get("loss", ([], []))[0]
    assert 0 < len(committed) < 300  # some batches committed, some were dropped


def test_a_snapshot_that_cannot_be_spilled_stays_in_memory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``snapshot_memory=0`` spills every snapshot; a full disk there keeps them in memory
    (said once) and a rollback still puts the state back."""

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = _sgd(model)
    guard = _harmful_guard(model, optimizer, tmp_path, snapshot_memory=0)
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        _train_plain(guard, model, optimizer, 150)
    guard.close()
    assert _outcome(guard) == "rolled_back"
    said = [r.message for r in caplog.records if "could not spill" in r.message]
    assert len(said) == 1 and "\n" not in said[0]


# --------------------------------------------------------------------------- rollbacks


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


class _Twin:
    """A copy of the model, optimizer and accumulated gradients, to replay steps on."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = copy.deepcopy(model)
        self.optimizer = _sgd(self.model)
        self.optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for mine, theirs in zip(self.model.parameters(), model.parameters(), strict=True):
            mine.grad = None if theirs.grad is None else theirs.grad.detach().clone()


def test_a_rollback_mid_accumulation_replays_exactly(tmp_path: pathlib.Path) -> None:
    """accumulation_steps=4 with flushes every 10 calls: the snapshot and the rollback both
    land mid-window; the next 25 micro-steps after the rollback match a replay from the
    snapshot bit for bit (the summed gradients are part of the state)."""
    k = 4
    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = _sgd(model)
    guard = unstuck.Guard(
        model,
        optimizer,
        policy=_ProposeFrom(105, HARMFUL),
        accumulation_steps=k,
        run_dir=tmp_path,
        flush_every=10,
        horizon=40,
        cooldown=10_000,
        console=False,
    )
    twin: _Twin | None = None
    twin_count = 0
    i = 0
    while _outcome(guard) != "rolled_back":
        assert i < 400, f"no rollback: {guard.actions}"
        x, y = regression_batch(seed=i)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if guard.should_step():
            optimizer.step()
            optimizer.zero_grad()
        before, acted = _Twin(model, optimizer), not guard.actions
        guard.step(loss)
        if acted and guard.actions:  # the snapshot was taken in this call, before the action
            twin, twin_count = before, (i + 1) % k
        i += 1
    assert twin is not None and twin_count != 0, "the snapshot should be mid-window"
    assert i % k != 0, "the rollback should be mid-window"
    differ = 0
    for j in range(25):
        x, y = regression_batch(seed=10_000 + j)
        F.mse_loss(model(x), y).backward()
        if guard.should_step():
            optimizer.step()
            optimizer.zero_grad()
        guard.step(torch.tensor(1.0))
        F.mse_loss(twin.model(x), y).backward()
        twin_count += 1
        if twin_count == k:
            torch._foreach_mul_([p.grad for p in twin.model.parameters()], 1.0 / k)
            twin.optimizer.step()
            twin.optimizer.zero_grad()
            twin_count = 0
        differ += not _same(_params(model), _params(twin.model))
    guard.close()
    assert differ == 0, f"{differ} of 25 steps after the rollback differ from the replay"


def _frozen_head_model() -> torch.nn.Sequential:
    model = tiny_mlp()
    model[2].requires_grad_(False)  # frozen: in no param group until the user unfreezes it
    return model


def test_a_param_group_added_after_the_snapshot_is_kept_across_an_exact_rollback(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unfreezing a layer with ``add_param_group`` while an action runs: the rollback puts the
    snapshot back and keeps the new group (its state cleared, as when added); the next steps
    replay exactly, and no torch error reaches the loop."""
    torch.manual_seed(0)
    model = _frozen_head_model()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.05, momentum=0.9)
    guard = _harmful_guard(model, optimizer, tmp_path)
    twin = None
    i = 0
    while not guard.actions:
        x, y = regression_batch(seed=i)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        twin = (copy.deepcopy(model), copy.deepcopy(optimizer.state_dict()))  # as snapshotted
        guard.step(loss)
        i += 1
    model[2].requires_grad_(True)
    optimizer.add_param_group({"params": list(model[2].parameters()), "lr": 0.01})
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        while _outcome(guard) == "pending":
            assert i < 300
            _train_plain(guard, model, optimizer, 1, start=i)
            i += 1
    assert _outcome(guard) == "rolled_back", guard.actions
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert twin is not None
    twin_model, state = twin
    twin_opt = torch.optim.SGD(twin_model[0].parameters(), lr=0.05, momentum=0.9)
    twin_opt.load_state_dict(state)
    twin_model[2].requires_grad_(True)
    twin_opt.add_param_group({"params": list(twin_model[2].parameters()), "lr": 0.01})
    assert _same(_params(model), _params(twin_model))
    for j in range(25):
        for m, opt in ((model, optimizer), (twin_model, twin_opt)):
            x, y = regression_batch(seed=20_000 + j)
            loss = F.mse_loss(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        guard.step(torch.tensor(1.0))  # later flushes run as usual
        assert _same(_params(model), _params(twin_model)), f"step {j} differs from the replay"
    guard.close()


def test_a_model_changed_since_the_snapshot_fails_the_rollback_in_one_line(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A structure the snapshot cannot be put back into: the action is marked ``failed`` with
    the reason, the model is left as it is (not half restored), said once, and training and
    later flushes go on."""
    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = _sgd(model)
    guard = _harmful_guard(model, optimizer, tmp_path)
    _train_plain(guard, model, optimizer, 60)
    assert _outcome(guard) == "pending"
    model.register_buffer("extra", torch.zeros(2))  # not used in forward; changes the state
    before = None
    with caplog.at_level(logging.WARNING, logger="unstuck"):
        i = 60
        while _outcome(guard) == "pending":
            assert i < 300
            before = _params(model)
            _train_plain(guard, model, optimizer, 1, start=i)
            i += 1
        _train_plain(guard, model, optimizer, 50, start=i)  # later flushes do not raise
    action = guard.actions[0]
    assert action.outcome == "failed"
    assert "could not roll back" in action.evidence["failed_because"]
    assert guard.lr_multiplier == 1.0  # the action's own change (the LR factor) is undone
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "\n" not in said[0].message
    assert before is not None
    guard.close()
    outcomes = read_events(tmp_path, kind="action_outcome")
    assert [e["payload"]["outcome"] for e in outcomes] == ["failed"]


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("kind", ["python", "tensor", "numpy"])
def test_a_finite_float64_loss_near_its_maximum_stays_finite(
    tmp_path: pathlib.Path, kind: str
) -> None:
    big = 1e308
    value = {
        "python": big,
        "tensor": torch.tensor(big, dtype=torch.float64),
        "numpy": np.float64(big),
    }[kind]
    model = tiny_mlp()
    optimizer = _sgd(model)
    guard = unstuck.Guard(
        model, optimizer, policy="rescue", run_dir=tmp_path, flush_every=10, console=False
    )
    for i in range(60):
        x, y = regression_batch(seed=i)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(value if i == 25 else loss)
    guard.close()
    assert "nonfinite" not in [f.cause for f in guard.findings]
    assert not [a for a in guard.actions if a.evidence.get("cause") == "nonfinite"]
    assert "a non-finite loss" not in [a.evidence.get("rolled_back_because") for a in guard.actions]
    steps, values = read_metrics(tmp_path, names=["loss"])["loss"]
    assert values[steps.index(25)] == big
    assert all(math.isfinite(v) for v in values)
    nonfinite = read_metrics(tmp_path, names=["nonfinite_loss"])["nonfinite_loss"][1]
    assert not any(nonfinite)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"horizon": float("nan")}, ValueError, r"horizon must be an int >= 1 .*got nan"),
        ({"horizon": float("inf")}, ValueError, r"horizon must be an int >= 1 .*got inf"),
        ({"cooldown": float("nan")}, ValueError, r"cooldown must be an int >= 0 .*got nan"),
        ({"cooldown": -float("inf")}, ValueError, r"cooldown must be an int >= 0"),
        ({"horizon": "10"}, ValueError, r"horizon must be an int >= 1 .*got '10' \(str\)"),
        ({"horizon": 0}, ValueError, r"horizon must be an int >= 1 .*got 0"),
        ({"horizon": True}, ValueError, r"horizon must be an int"),
        ({"run_dir": ""}, ValueError, r"run_dir is an empty path"),
        ({"run_dir": "  "}, ValueError, r"run_dir is an empty path"),
        ({"run_dir": 3}, TypeError, r"run_dir must be a directory path or None"),
    ],
    ids=[
        "horizon-nan",
        "horizon-inf",
        "cooldown-nan",
        "cooldown--inf",
        "horizon-str",
        "horizon-0",
        "horizon-bool",
        "run_dir-empty",
        "run_dir-blank",
        "run_dir-int",
    ],
)
def test_bad_arguments_are_one_line_errors_before_anything_is_written(
    kwargs: dict, error: type, match: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = tiny_mlp()
    with pytest.raises(error, match=match) as info:
        unstuck.Guard(model, _sgd(model), **kwargs)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing written into the working directory


def test_numpy_integers_are_whole_numbers_for_horizon_and_cooldown() -> None:
    model = tiny_mlp()
    guard = unstuck.Guard(model, _sgd(model), horizon=np.int64(10), cooldown=np.int32(0))
    guard.close()


@pytest.mark.parametrize(
    "value", [np.float32(0.5), np.int64(2), np.array(0.5, dtype=np.float32), np.float16(0.5)]
)
def test_numpy_scalars_of_every_width_are_losses(value: object, tmp_path: pathlib.Path) -> None:
    model = tiny_mlp()
    guard = unstuck.Guard(model, _sgd(model), run_dir=tmp_path, flush_every=2, console=False)
    guard.step(value)  # type: ignore[arg-type]
    guard.validate(value)  # type: ignore[arg-type]
    guard.step(value)  # type: ignore[arg-type]
    guard.close()
    assert read_metrics(tmp_path, names=["loss"])["loss"][1] == [float(value)] * 2  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shared run_dir


def test_two_guards_sharing_a_run_dir_each_report_their_own_run(tmp_path: pathlib.Path) -> None:
    first_model, second_model = tiny_mlp(), tiny_mlp()
    first = unstuck.Guard(first_model, _sgd(first_model), run_dir=tmp_path, console=False)
    second = unstuck.Guard(second_model, _sgd(second_model), run_dir=tmp_path, console=False)
    first_id, second_id = (r["run_id"] for r in read_runs(tmp_path))
    second.close()
    first.close()  # closes last: its report must still be its own run, not the latest
    html = (tmp_path / "report.html").read_text()
    assert first_id in html and second_id not in html


# --------------------------------------------------------------------------- ranks out of step

DDP_TIMEOUT_S = 20  # the process group's own timeout: a rank left waiting would sit this long
DDP_CASES = {
    # rank: guard.step calls before close()
    "one_more": (100, 101),  # rank 1 steps once more: its close has a window to flush
    "extra_before_close": (100, 160),  # rank 1 goes on past a flush while rank 0 closes
}


def _out_of_step_worker(rank: int, init_file: str, out_dir: str, case: str) -> None:
    import json
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=DDP_TIMEOUT_S),
    )
    model = tiny_mlp()
    guard = unstuck.Guard(model, _sgd(model), flush_every=50, console=False, report=False)
    out: dict[str, object] = {"where": None, "error": None}
    start = time.monotonic()
    try:
        for _ in range(DDP_CASES[case][rank]):
            out["where"] = "step"
            guard.step(torch.tensor(1.0))
        out["where"] = "close"
        guard.close()
        out["where"] = None
    except Exception as exc:  # what each rank saw, compared by the test
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["elapsed"] = time.monotonic() - start
    pathlib.Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    os._exit(0)  # no teardown of a process group that just failed: nothing left to wait on


@pytest.mark.parametrize("case", sorted(DDP_CASES))
def test_ranks_out_of_step_fail_fast_with_the_same_error(tmp_path: pathlib.Path, case: str) -> None:
    import json

    import torch.multiprocessing as mp

    ctx = mp.spawn(
        _out_of_step_worker,
        args=(str(tmp_path / "rendezvous"), str(tmp_path), case),
        nprocs=2,
        join=False,
    )
    deadline = time.monotonic() + 3 * DDP_TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.terminate()
            pytest.fail("the ranks did not finish")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    errors = [r["error"] for r in ranks]
    assert errors[0] and errors[0] == errors[1], ranks
    calls = DDP_CASES[case][1] if case == "one_more" else 150
    assert errors[0].startswith("RuntimeError: unstuck: the ranks are out of step")
    assert f"rank 1 is at guard.step {calls}" in errors[0]
    assert "\n" not in errors[0]
    assert all(r["elapsed"] < DDP_TIMEOUT_S / 2 for r in ranks), ranks  # nobody waited it out
    assert ranks[0]["where"] == "close"
    assert ranks[1]["where"] == ("close" if case == "one_more" else "step")


# --------------------------------------------------------------------------- SIGTERM

SIGTERM_CHILD = textwrap.dedent(
    """
    import pathlib, signal, sys
    import torch
    import unstuck

    run_dir, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    stopping = []
    if mode == "handler":
        def handler(signum, frame):  # the user's own: note it, let the loop finish its epoch
            (run_dir / "handler-called").write_text(str(signum))
            stopping.append(signum)
        signal.signal(signal.SIGTERM, handler)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = unstuck.Guard(model, optimizer, run_dir=run_dir, flush_every=10)
    step = 0
    while True:
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(loss)  # after SIGTERM closed the Guard: ignored, not an error
        step += 1
        if stopping and len(stopping) < 5:
            stopping.append(step)
        elif stopping:
            sys.exit(3)
        if step == 30:
            guard.flush()
            print("READY", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["default", "handler"])
def test_sigterm_closes_the_run_and_writes_its_report(tmp_path: pathlib.Path, mode: str) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_CHILD, str(run_dir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read() if proc.stderr else line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    if mode == "handler":
        assert proc.returncode == 3, err  # the user's handler decided how the process ends
        assert (run_dir / "handler-called").read_text() == str(int(signal.SIGTERM))
    else:
        assert proc.returncode == -signal.SIGTERM, err  # ended by SIGTERM, as without unstuck
    runs = read_runs(run_dir)
    assert [r["status"] for r in runs] == ["closed"], err
    assert runs[0]["meta"]["steps"] >= 30
    assert (run_dir / "report.html").is_file()
    assert "got signal 15; closing the run" in err


# =========================================================================== readers
# ``unstuck analyze`` / ``unstuck report`` on hostile files (issue 21, items 5-10) go here: each
# hostile file generated at test time, every case ending in exit 2 with one line, in bounded
# time and memory, without writing to its input.

import contextlib  # noqa: E402  (the readers section's own imports, kept with it)
import shutil  # noqa: E402
import stat as stat_module  # noqa: E402
import struct  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from unstuck.analyze import _limits, load  # noqa: E402
from unstuck.cli.main import main  # noqa: E402
from unstuck.record.store import STORE_FILENAME, RunStore  # noqa: E402

READ_SECONDS = 20  # any hostile input is refused well within this (the hangs were unbounded)
DEEP = 100_000  # JSON nesting levels of the RecursionError cases


@contextlib.contextmanager
def _bounded(seconds: int = READ_SECONDS) -> Iterator[None]:
    """Fail the test, instead of hanging the suite, when a read blocks (a FIFO, a recursive
    view): SIGALRM interrupts the blocking call in the main thread."""

    def _timeout(signum: int, frame: object) -> None:
        raise TimeoutError(f"the read took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _refused(capsys: pytest.CaptureFixture[str], *argv: str, peak_bytes: int | None = None) -> str:
    """Run the CLI on a hostile input: exit 2 with exactly one line on stderr, in bounded time
    (and, given ``peak_bytes``, with Python allocating at most that much while it runs)."""
    import tracemalloc

    capsys.readouterr()
    if peak_bytes is not None:
        tracemalloc.start()
    try:
        with _bounded():
            code = main(list(argv))
        peak = tracemalloc.get_traced_memory()[1] if peak_bytes is not None else 0
    finally:
        if peak_bytes is not None:
            tracemalloc.stop()
    if peak_bytes is not None:
        assert peak <= peak_bytes, f"{peak} bytes allocated"
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _store(run_dir: pathlib.Path, points: int = 60) -> pathlib.Path:
    """A real, closed run store with a falling loss and one event."""
    with RunStore(run_dir) as store:
        store.log_metrics([("loss", step, 2.0 / (1 + step)) for step in range(points)])
        store.log_event("state", points - 1, {"state": "improving"})
        store.flush()
    return run_dir / STORE_FILENAME


def _edit(file: pathlib.Path, *statements: str) -> None:
    conn = sqlite3.connect(file)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()


def _fingerprint(run_dir: pathlib.Path) -> dict[str, tuple[bytes, int] | None]:
    """The store's bytes and mtime, and the -wal beside it (absent: None)."""
    out: dict[str, tuple[bytes, int] | None] = {}
    for suffix in ("", "-wal"):
        f = run_dir / (STORE_FILENAME + suffix)
        out[suffix] = (f.read_bytes(), f.stat().st_mtime_ns) if f.exists() else None
    out["-shm present"] = (b"", 1) if (run_dir / (STORE_FILENAME + "-shm")).exists() else None
    return out


# --------------------------------------------------------------------------- 5: a recursive view


def test_a_store_whose_metrics_is_a_recursive_view_is_refused_at_once(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    file = _store(run_dir)
    _edit(
        file,
        "DROP TABLE metrics",
        "CREATE VIEW metrics AS WITH RECURSIVE r(run, name, step, value) AS "
        "(SELECT 1, 'loss', 0, 0.5 UNION ALL SELECT run, name, step + 1, value FROM r) "
        "SELECT * FROM r ORDER BY step DESC",
    )
    before = _fingerprint(run_dir)
    for argv in (
        ["analyze", str(run_dir), "--no-report"],
        ["report", str(run_dir), "-o", str(tmp_path / "r.html")],
    ):
        # in a child process: a query inside SQLite does not see SIGALRM, and this one never
        # ends on its own (it grew the temp disk by ~13 MB/s)
        done = subprocess.run(
            [sys.executable, "-m", "unstuck", *argv],
            capture_output=True,
            text=True,
            timeout=READ_SECONDS,
            env={**os.environ, "PYTHONPATH": str(SRC_DIR)},
        )
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "'metrics' is a view, not a table" in done.stderr
    assert _fingerprint(run_dir) == before


def test_a_store_query_past_its_deadline_is_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    _store(run_dir, points=20_000)
    monkeypatch.setattr(_limits, "QUERY_SECONDS", 0.0)
    line = _refused(capsys, "report", str(run_dir), "-o", str(tmp_path / "r.html"))
    assert "took over 0 s" in line


# --------------------------------------------------------------------------- 6: a FIFO


@pytest.mark.parametrize(
    "argv",
    [
        ("analyze", "{fifo}", "--no-report"),
        ("analyze", "{fifo}", "--format", "csv", "--no-report"),
        ("analyze", "{fifo}", "--format", "unstuck", "--no-report"),
        ("report", "{fifo}", "-o", "{out}"),
    ],
)
def test_a_fifo_is_refused_without_blocking(
    argv: tuple[str, ...], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "metrics.csv"
    os.mkfifo(fifo)
    args = [a.format(fifo=fifo, out=tmp_path / "r.html") for a in argv]
    line = _refused(capsys, *args)
    assert "fifo" in line.lower() or "pipe" in line or "no run store" in line


def test_a_folder_whose_store_is_a_fifo_is_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / STORE_FILENAME)
    _refused(capsys, "analyze", str(tmp_path), "--no-report")
    _refused(capsys, "report", str(tmp_path))


# --------------------------------------------------------------------------- 7: size limits


@pytest.mark.parametrize("fmt", [None, "csv", "text", "jsonl", "lightning"])
def test_a_sparse_file_past_the_size_limit_is_refused_before_reading(
    fmt: str | None,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_limits, "MAX_FILE_BYTES", 1 << 20)  # the 2 GB case as a 2 MB one
    log = tmp_path / "train.csv"
    log.write_text("step,epoch,loss\n0,0,2.0\n")
    with log.open("r+b") as fh:
        fh.truncate(64 << 20)  # sparse: the rest reads as NUL bytes (no disk used)
    forced = ["--format", fmt] if fmt else []
    # far less than the file: it is refused, not read (imports on first use take a few MiB)
    line = _refused(capsys, "analyze", str(log), *forced, "--no-report", peak_bytes=8 << 20)
    assert "over the 1 MiB" in line


@pytest.mark.parametrize(
    ("name", "head", "fmt"),
    [
        ("train.csv", "step,loss\n", None),
        ("train.csv", "step,loss\n", "csv"),
        ("metrics.jsonl", '{"step": 0, "loss": 1}\n', "jsonl"),
        ("train.log", "step 1: loss 0.5\n", "text"),
        ("trainer_state.json", '{"log_history": [\n', "hf"),
    ],
)
def test_a_line_past_the_line_limit_is_refused(
    name: str,
    head: str,
    fmt: str | None,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_limits, "MAX_LINE_BYTES", 64 * 1024)  # the 100 MB line as a 200 KB one
    log = tmp_path / name
    log.write_text(head + "1," + "9" * 200_000 + "\n" + "2,0.5\n" * 10)
    forced = ["--format", fmt] if fmt else []
    line = _refused(capsys, "analyze", str(log), *forced, "--no-report", peak_bytes=8 << 20)
    assert "over 0.0625 MiB" in line or "no known log" in line


def test_a_field_past_the_csv_default_limit_is_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "train.csv"  # a 200 KB quoted field: csv's own 128 KiB limit raised _csv.Error
    log.write_text("step,loss,note\n" + '0,1.0,"' + "x" * 200_000 + '"\n' + "1,0.9,a\n" * 5)
    with _bounded():
        data = load(log)
    assert data.series["loss"][1][0] == 1.0


def test_points_past_the_limit_are_thinned_with_a_note(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_limits, "MAX_POINTS", 100)
    log = tmp_path / "train.csv"
    log.write_text("step,loss\n" + "".join(f"{s},{1 / (1 + s)}\n" for s in range(1000)))
    data = load(log)
    steps, _ = data.series["loss"]
    assert 50 <= len(steps) <= 100
    assert list(steps[:3]) == [0, 10, 20]
    assert any("every 10th is kept" in note for note in data.meta["notes"])


def test_a_store_series_past_the_point_limit_is_thinned_with_a_note(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_limits, "MAX_POINTS", 100)
    run_dir = tmp_path / "run"
    _store(run_dir, points=1000)
    data = load(run_dir)
    steps, _ = data.series["loss"]
    assert len(steps) == 100 and list(steps[:3]) == [0, 10, 20]
    assert any("every 10th is kept" in note for note in data.meta["notes"])


# --------------------------------------------------------------------------- 8: JSON and numbers


def _nested(levels: int = DEEP) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("metrics.jsonl", '{"step": 0, "loss": 1, "x": ' + _nested() + "}\n" * 1),
        ("trainer_state.json", '{"log_history": ' + _nested() + "}"),
    ],
)
def test_json_nested_100k_levels_is_one_line(
    name: str, text: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / name
    log.write_text(text + ('\n{"step": 1, "loss": 0.5}\n' if name.endswith("l") else ""))
    line = _refused(capsys, "analyze", str(log), "--no-report")
    assert "nested" in line or "not JSON" in line or "no known log" in line


def test_a_store_event_payload_nested_100k_levels_is_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    file = _store(run_dir)
    _edit(file, f"UPDATE events SET payload = '{_nested()}'")
    line = _refused(capsys, "report", str(run_dir), "-o", str(tmp_path / "r.html"))
    assert "nested deeper" in line
    line = _refused(capsys, "analyze", str(run_dir), "--no-report")
    assert "nested deeper" in line


@pytest.mark.parametrize("huge", ["1e30", "1e300", "-1e300", "9223372036854775808"])
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_huge_step_numbers_are_skipped_with_a_note(
    huge: str, kind: str, tmp_path: pathlib.Path
) -> None:
    rows = [(str(s), 2.0 / (1 + s)) for s in range(40)] + [(huge, 0.1)]
    if kind == "csv":
        log = tmp_path / "train.csv"
        log.write_text("step,loss\n" + "".join(f"{s},{v}\n" for s, v in rows))
    else:
        log = tmp_path / "train.jsonl"
        log.write_text("".join(f'{{"step": {s}, "loss": {v}}}\n' for s, v in rows))
    data = load(log)
    steps, _ = data.series["loss"]
    assert len(steps) == 40 and max(steps) == 39
    assert any("skipped" in note for note in data.meta["notes"])


def test_a_tensorboard_record_claiming_2_to_the_40_bytes_is_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(tmp_path))
    writer.close()
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    with event_file.open("ab") as fh:
        fh.write(struct.pack("<Q", 1 << 40) + b"\0" * 4 + b"x" * 64)
    line = _refused(capsys, "analyze", str(tmp_path), "--no-report")
    assert "claiming 1099511627776 bytes" in line


# --------------------------------------------------------------------------- 9: a fake MLflow db

_MLFLOW_TABLES = ("experiments", "runs", "metrics", "params", "tags", "latest_metrics")


@pytest.mark.parametrize(
    "statements",
    [
        # what detection takes for MLflow, and nothing else
        ("CREATE TABLE experiments (x)", "CREATE TABLE alembic_version (version_num TEXT)"),
        # every table MLflow's store has, with a version no MLflow knows
        (
            *(f"CREATE TABLE {t} (x)" for t in _MLFLOW_TABLES),
            "CREATE TABLE alembic_version (version_num TEXT)",
            "INSERT INTO alembic_version VALUES ('deadbeef0000')",
        ),
    ],
    ids=["two-tables", "all-tables-unknown-version"],
)
def test_a_fake_mlflow_db_is_one_line_and_never_written(
    statements: tuple[str, ...], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "mlflow.db"
    conn = sqlite3.connect(db)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    before = (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
    line = _refused(capsys, "analyze", str(db), "--no-report")
    assert "mlflow" in line.lower()
    assert (db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(tmp_path))) == before


# --------------------------------------------------------------------------- 10: read-only stores


def _killed_store(run_dir: pathlib.Path) -> None:
    """A store whose writer was SIGKILLed after a flush: its rows are in the -wal."""
    script = textwrap.dedent(
        f"""
        import os
        from unstuck.record.store import RunStore
        store = RunStore({str(run_dir)!r})
        store.log_metrics([("loss", s, 2.0 / (1 + s)) for s in range(60)])
        store.flush()
        os._exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    assert (run_dir / (STORE_FILENAME + "-wal")).exists()


@pytest.mark.parametrize("kind", ["killed", "closed"])
def test_reading_a_store_never_modifies_it(
    kind: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    if kind == "killed":
        _killed_store(run_dir)
    else:
        _store(run_dir)
    before = _fingerprint(run_dir)
    time.sleep(0.01)  # a rewrite would move the mtime
    assert main(["analyze", str(run_dir), "--no-report", "--json"]) == 0
    assert main(["report", str(run_dir), "-o", str(tmp_path / "r.html")]) == 0
    assert read_metrics(run_dir)["loss"][0] == list(range(60))
    assert _fingerprint(run_dir) == before


def test_a_store_on_a_read_only_folder_is_read(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    _store(run_dir)
    copy = tmp_path / "ro"
    shutil.copytree(run_dir, copy)
    (copy / STORE_FILENAME).chmod(stat_module.S_IRUSR)
    copy.chmod(stat_module.S_IRUSR | stat_module.S_IXUSR)
    try:
        assert main(["report", str(copy), "-o", str(tmp_path / "r.html")]) == 0
        assert main(["analyze", str(copy), "--no-report", "--json"]) == 0
        assert sorted(os.listdir(copy)) == [STORE_FILENAME]
    finally:
        copy.chmod(stat_module.S_IRWXU)


def test_a_killed_store_whose_wal_cannot_be_opened_is_read_immutable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only mount refuses the WAL index (as root, chmod cannot make one): the reader
    falls back to ``immutable=1`` and reads the main file instead of calling it no store."""
    from unstuck.record import store as store_module

    run_dir = tmp_path / "run"
    _killed_store(run_dir)
    _edit(run_dir / STORE_FILENAME)  # checkpoint: the rows are in the main file too
    _killed_store(run_dir)  # and a second run left in the -wal
    real_connect = sqlite3.connect
    opened: list[str] = []

    def read_only_mount(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        opened.append(database)
        if "immutable=1" not in database:
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(database, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.sqlite3, "connect", read_only_mount)
    runs = read_runs(run_dir)
    assert len(runs) >= 1
    assert any("immutable=1" in uri for uri in opened)
