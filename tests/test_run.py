"""``unstuck run``: real, unmodified scripts in child processes, and what unstuck recorded.

Each script is written at test time and never mentions unstuck (except the one that breaks an
unstuck internal on purpose, to check that the script goes on unchanged).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from unstuck.cli.run import build_command
from unstuck.record import read_metrics, read_runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
EXAMPLES = ROOT / "examples"  # the unmodified scripts the docs name
TIMEOUT_S = 240

# The example scripts, exactly as shipped in examples/ (none mentions unstuck).
PLAIN = (EXAMPLES / "plain_low_lr.py").read_text()

# Two optimizers stepping in turn, as a GAN's generator and discriminator do.
GAN = """
import torch

torch.manual_seed(0)
gen = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
disc = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
bce = torch.nn.functional.binary_cross_entropy_with_logits
for step in range(200):
    real = torch.randn(32, 2) * 0.5 + 2.0
    fake = gen(torch.randn(32, 4))
    d_loss = bce(disc(real), torch.ones(32, 1)) + bce(disc(fake.detach()), torch.zeros(32, 1))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = bce(disc(fake), torch.ones(32, 1))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
print("gan done", flush=True)
"""

# Gradients from torch.autograd.grad, assigned by hand: no backward() on a scalar anywhere.
NO_BACKWARD = """
import torch

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(256, 8), torch.randn(256, 1)
for step in range(120):
    loss = torch.nn.functional.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    optimizer.step()
print("manual done", flush=True)
"""

# The plain loop, with an unstuck internal broken on purpose before training starts.
BROKEN = (
    """
import unstuck.integrations.loop as loop

def broken(self, *args, **kwargs):
    raise RuntimeError("deliberately broken unstuck internal")

loop.Guard.step = broken
"""
    + PLAIN
)


def _run(
    tmp_path: pathlib.Path, script: str, *cli_args: str, steps: int = 300
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(script).replace("range(300)", f"range({steps})"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "unstuck.cli.main", "run", *cli_args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=TIMEOUT_S,
    )


def test_an_unmodified_plain_script_is_watched_and_keeps_its_exit_status(
    tmp_path: pathlib.Path,
) -> None:
    proc = _run(tmp_path, PLAIN, "--run-dir", "runs/plain", "train.py", "3")
    assert proc.returncode == 3, proc.stderr[-2000:]  # the script's own exit status
    assert "script done" in proc.stdout
    err = proc.stderr
    assert "lr_too_low" in err and "lr ≈" in err  # the finding with the concrete change
    assert "summary after" in err
    runs = read_runs(tmp_path / "runs" / "plain")
    assert len(runs) == 1 and runs[0]["status"] == "closed"
    assert runs[0]["meta"]["framework"] == "autorun"
    steps, _ = read_metrics(tmp_path / "runs" / "plain", names=["loss"])["loss"]
    assert len(steps) >= 290  # every step after the one that built the Guard
    assert (tmp_path / "runs" / "plain" / "report.html").is_file()


def test_a_broken_unstuck_internal_leaves_the_script_running(tmp_path: pathlib.Path) -> None:
    proc = _run(tmp_path, BROKEN, "--run-dir", "none", "train.py", "5", steps=120)
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert "script done" in proc.stdout
    assert proc.stderr.count("turned off for this process") == 1
    assert "deliberately broken unstuck internal" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_optimizers_get_a_guard_each_and_rescue_falls_back_to_observe(
    tmp_path: pathlib.Path,
) -> None:
    proc = _run(tmp_path, GAN, "--policy", "rescue", "--run-dir", "runs/gan", "train.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gan done" in proc.stdout
    assert proc.stderr.count("observing only (2 optimizers)") == 1
    first, second = tmp_path / "runs" / "gan", tmp_path / "runs" / "gan" / "opt1"
    for store in (first, second):
        (run,) = read_runs(store)
        assert run["meta"]["policy"] == "observe" and run["status"] == "closed"
        assert len(read_metrics(store, names=["loss"])["loss"][0]) >= 190


def test_a_script_without_a_scalar_backward_is_told_once(tmp_path: pathlib.Path) -> None:
    proc = _run(tmp_path, NO_BACKWARD, "--run-dir", "none", "train.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "manual done" in proc.stdout
    assert proc.stderr.count("no backward() on a scalar loss") == 1


def test_bad_command_lines_are_one_line_errors(tmp_path: pathlib.Path) -> None:
    for args, message in (((), "name the script"), (("missing.py",), "no such script")):
        proc = _run(tmp_path, "", *args)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_build_command_runs_scripts_and_modules_under_this_python() -> None:
    assert build_command(["train.py", "--lr", "1"]) == [sys.executable, "train.py", "--lr", "1"]
    assert build_command(["--", "-m", "pkg.train"]) == [sys.executable, "-m", "pkg.train"]
    assert build_command(["torchrun", "--nproc_per_node", "2", "t.py"])[0] == "torchrun"
    with pytest.raises(ValueError, match="name the script"):
        build_command([])


DDP = """
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
x = torch.randn(2048, 16)
y = (x @ torch.randn(16, 4)).argmax(dim=1)
net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
model = torch.nn.parallel.DistributedDataParallel(net)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
g = torch.Generator().manual_seed(1 + rank)
for step in range(200):
    idx = torch.randint(0, len(x), (64,), generator=g)
    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
dist.barrier()
dist.destroy_process_group()
print(f"rank {rank} done", flush=True)
# gloo aborts now and then at interpreter teardown ("terminate called without an active
# exception", SIGABRT, after everything above has run; tests/test_distributed.py's workers leave
# the same way for the same reason). unstuck closed in destroy_process_group above.
import os
os._exit(0)
"""

LIGHTNING = (EXAMPLES / "lightning_low_lr.py").read_text()


def test_torchrun_workers_are_watched_and_rank_0_records(tmp_path: pathlib.Path) -> None:
    """The sitecustomize reaches the workers torchrun starts; both ranks decide the same and
    only rank 0 writes the store."""
    proc = _run(
        tmp_path,
        DDP,
        "--run-dir",
        "runs/ddp",
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29537",
        "train.py",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 done" in proc.stdout and "rank 1 done" in proc.stdout
    assert proc.stderr.count("lr_too_low") >= 1
    assert proc.stderr.count("summary after") == 1  # rank 0 speaks for both
    assert "could not close" not in proc.stderr
    (run,) = read_runs(tmp_path / "runs" / "ddp")
    assert run["status"] == "closed"


def test_a_lightning_script_without_the_callback_is_watched(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("lightning")
    proc = _run(tmp_path, LIGHTNING, "--run-dir", "runs/pl", "train.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lightning done" in proc.stdout
    assert "lr_too_low" in proc.stderr
    (run,) = read_runs(tmp_path / "runs" / "pl")
    assert run["status"] == "closed"
    steps, _ = read_metrics(tmp_path / "runs" / "pl", names=["loss"])["loss"]
    assert len(steps) >= 290


HF = (EXAMPLES / "hf_low_lr.py").read_text()


def test_an_hf_trainer_script_without_the_callback_is_watched(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("transformers")
    proc = _run(tmp_path, HF, "--run-dir", "runs/hf", "train.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hf done" in proc.stdout
    (run,) = read_runs(tmp_path / "runs" / "hf")
    assert run["status"] == "closed"
    steps, _ = read_metrics(tmp_path / "runs" / "hf", names=["loss"])["loss"]
    assert len(steps) >= 290
    assert "lr_too_low" in proc.stderr
