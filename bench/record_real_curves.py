"""Record real training curves for the plateau-detection benchmark (CPU, bundled/generated data).

    python bench/record_real_curves.py [--out bench/data/real_curves.json] [--workers 2]

Small models really train here, with settings chosen to give plateaus and healthy runs alike:
deep sigmoid MLPs on ``sklearn.datasets.load_digits`` (inputs /16) at low LR (long plateau at
ln 10), well-tuned Adam (healthy), SGD step-decay schedules, a Saxe deep linear network from a
small init (plateau then drop), LR far too high (oscillation), label noise, a slow creep at
LR 1e-4, modular addition with weight decay (grokking-style) and sparse parity (hidden progress).

Per run it records the train loss at every step (the minibatch loss, a float), the validation
loss every 50 steps and the parameter distance ‖θ-θ0‖ every 50 steps. Each run uses one torch
thread; the runs go to a process pool. The whole recording takes about a minute or two on 2
cores. The benchmark only loads the JSON written here; it never re-trains.

Labels: the same band rule as ``bench/curves.py`` (1 % band in log space, maximal intervals,
``e - s >= max(0.2 s, 8 logging intervals)``, the same hidden-progress exception on the
recorded distance), applied to a "noise-free" curve defined as the centered rolling median of
the log loss with window ``max(5, 2 % of the number of points)`` (odd; the window shrinks
symmetrically at both ends instead of padding). The recorded distance is noisy (SGD jitters in
its noise ball), so for real runs the exception asks for a *steady* move: over the second half
of the interval (or over the last 4 samples when the half holds fewer), scipy's Theil–Sen slope of
the recorded distance samples has a
95 % interval above zero and a fitted growth of at least 5 % (the same threshold as the
generated curves). Values are rounded to 6 significant digits; non-finite values are null.

``python bench/record_real_curves.py --relabel`` recomputes the labels of the committed file
without training again.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import median_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves import DIST_GROWTH, label_plateaus

EVAL_EVERY = 50

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Run:
    name: str
    task: str
    steps: int
    make: str  # key into TASKS
    opt: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch: int = 64
    milestones: tuple[int, ...] = ()
    seed: int = 0
    kw: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- tasks

Task = tuple[torch.nn.Module, Callable[[torch.Generator], Batch], Batch, Callable[..., Any]]


def _digits(label_noise: float, seed: int) -> tuple[Batch, Batch]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    g = np.random.default_rng(seed)
    perm = g.permutation(len(x))
    x = torch.tensor(x[perm], dtype=torch.float32) / 16.0
    y = torch.tensor(y[perm], dtype=torch.long)
    xtr, ytr, xva, yva = x[:1500], y[:1500].clone(), x[1500:], y[1500:]
    if label_noise > 0:
        flip = torch.tensor(g.random(len(ytr)) < label_noise)
        ytr[flip] = torch.tensor(g.integers(0, 10, int(flip.sum())), dtype=torch.long)
    return (xtr, ytr), (xva, yva)


def _sampler(x: torch.Tensor, y: torch.Tensor, batch: int) -> Callable[[torch.Generator], Batch]:
    def sample(g: torch.Generator) -> Batch:
        if batch >= len(x):
            return x, y
        idx = torch.randint(0, len(x), (batch,), generator=g)
        return x[idx], y[idx]

    return sample


def task_digits(run: Run) -> Task:
    act = run.kw.get("act", "relu")
    depth = int(run.kw.get("depth", 2))
    width = int(run.kw.get("width", 64))
    (xtr, ytr), val = _digits(float(run.kw.get("label_noise", 0.0)), run.seed)
    layers: list[torch.nn.Module] = []
    n_in = 64
    for _ in range(depth):
        layers += [
            torch.nn.Linear(n_in, width),
            torch.nn.Sigmoid() if act == "sigmoid" else torch.nn.ReLU(),
        ]
        n_in = width
    layers.append(torch.nn.Linear(n_in, 10))
    model = torch.nn.Sequential(*layers)
    return model, _sampler(xtr, ytr, run.batch), val, torch.nn.functional.cross_entropy


def task_deep_linear(run: Run) -> Task:
    """Saxe et al. 2014: deep linear net, small init, low-rank teacher with distinct modes."""
    g = torch.Generator().manual_seed(1000 + run.seed)
    d_in, d_out, width, depth = 16, 16, 32, int(run.kw.get("depth", 4))
    u, _ = torch.linalg.qr(torch.randn(d_out, d_out, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g))
    strengths = torch.tensor(run.kw.get("modes", [4.0, 2.0, 1.0]))
    teacher = u[:, : len(strengths)] @ torch.diag(strengths) @ v[:, : len(strengths)].T
    layers = []
    n_in = d_in
    for k in range(depth):
        n_out = d_out if k == depth - 1 else width
        lin = torch.nn.Linear(n_in, n_out, bias=False)
        torch.nn.init.normal_(lin.weight, std=float(run.kw.get("init", 1e-2)))
        layers.append(lin)
        n_in = n_out
    model = torch.nn.Sequential(*layers)
    xtr = torch.randn(512, d_in, generator=g)
    xva = torch.randn(512, d_in, generator=g)
    noise = float(run.kw.get("noise", 0.0))
    ytr = xtr @ teacher.T + noise * torch.randn(512, d_out, generator=g)
    yva = xva @ teacher.T
    return model, _sampler(xtr, ytr, run.batch), (xva, yva), torch.nn.functional.mse_loss


def task_modular(run: Run) -> Task:
    """Modular addition (Power et al. 2022): embeddings + MLP, AdamW with weight decay."""
    p = int(run.kw.get("p", 23))
    g = torch.Generator().manual_seed(2000 + run.seed)
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    labels = (pairs[:, 0] + pairs[:, 1]) % p
    perm = torch.randperm(len(pairs), generator=g)
    n_tr = int(float(run.kw.get("frac", 0.5)) * len(pairs))
    tr, va = perm[:n_tr], perm[n_tr:]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(p, 32)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, p)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.mlp(self.emb(x).flatten(1))
            return out

    return (
        Net(),
        _sampler(pairs[tr], labels[tr], run.batch),
        (pairs[va], labels[va]),
        torch.nn.functional.cross_entropy,
    )


def task_parity(run: Run) -> Task:
    """Sparse parity (Barak et al. 2022): n bits, label = parity of k fixed bits; fresh batches."""
    n, k = int(run.kw.get("n", 20)), int(run.kw.get("k", 3))
    width = int(run.kw.get("width", 128))
    model = torch.nn.Sequential(
        torch.nn.Linear(n, width), torch.nn.ReLU(), torch.nn.Linear(width, 1)
    )
    gv = torch.Generator().manual_seed(3000 + run.seed)

    def label(x: torch.Tensor) -> torch.Tensor:
        return (x[:, :k].prod(dim=1) > 0).float()

    def sample(g: torch.Generator) -> Batch:
        x = torch.randint(0, 2, (run.batch, n), generator=g).float() * 2 - 1
        return x, label(x)

    xva = torch.randint(0, 2, (1000, n), generator=gv).float() * 2 - 1

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y)

    return model, sample, (xva, label(xva)), loss


def task_committee(run: Run) -> Task:
    """Teacher-student soft committee machine (Saad & Solla 1995), online SGD, erf units."""
    n, m = 50, int(run.kw.get("m", 3))
    gt = torch.Generator().manual_seed(4000 + run.seed)
    w_teacher = torch.randn(m, n, generator=gt)

    def committee(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x @ w.T / math.sqrt(2 * n)).sum(dim=1)

    class Student(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(1e-3 * torch.randn(m, n, generator=gt))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return committee(self.w, x)

    def sample(g: torch.Generator) -> Batch:
        x = torch.randn(run.batch, n, generator=g)
        return x, committee(w_teacher, x)

    xva = torch.randn(2000, n, generator=gt)
    return Student(), sample, (xva, committee(w_teacher, xva)), torch.nn.functional.mse_loss


TASKS: dict[str, Callable[[Run], Task]] = {
    "digits": task_digits,
    "deep_linear": task_deep_linear,
    "modular": task_modular,
    "parity": task_parity,
    "committee": task_committee,
}


def runs() -> list[Run]:
    sig = {"act": "sigmoid", "depth": 5, "width": 32}
    return [
        Run("digits_sigmoid_sgd_lr0.01", "digits", 3000, "digits", lr=0.01, kw=sig),
        Run("digits_sigmoid_sgd_lr0.1", "digits", 4000, "digits", lr=0.1, kw=sig),
        Run("digits_sigmoid_sgd_lr0.5", "digits", 4000, "digits", lr=0.5, kw=sig, seed=1),
        Run("digits_sigmoid_gd_lr1", "digits", 3000, "digits", lr=1.0, batch=1500, kw=sig),
        Run("digits_relu_adam_1e-3", "digits", 2000, "digits", opt="adam", lr=1e-3),
        Run(
            "digits_relu_adam_3e-4_fullbatch",
            "digits",
            3000,
            "digits",
            opt="adam",
            lr=3e-4,
            batch=1500,
        ),
        Run(
            "digits_relu_sgd_stepdecay",
            "digits",
            4500,
            "digits",
            lr=0.1,
            batch=128,
            milestones=(1500, 3000),
        ),
        Run(
            "digits_relu_gd_stepdecay",
            "digits",
            4000,
            "digits",
            lr=0.5,
            batch=1500,
            milestones=(1000, 2000, 3000),
        ),
        Run("digits_relu_sgd_lr_too_high", "digits", 2000, "digits", lr=0.8, momentum=0.9),
        Run("digits_relu_adam_lr_too_high", "digits", 2000, "digits", opt="adam", lr=0.03),
        Run(
            "digits_relu_adam_labelnoise40",
            "digits",
            4000,
            "digits",
            opt="adam",
            lr=1e-3,
            kw={"label_noise": 0.4},
        ),
        Run(
            "digits_relu_sgd_labelnoise20",
            "digits",
            3000,
            "digits",
            lr=0.05,
            kw={"label_noise": 0.2},
        ),
        Run("digits_relu_sgd_creep_lr1e-4", "digits", 2000, "digits", lr=1e-4),
        Run(
            "deep_linear_d3_init2e-2_lr0.05",
            "deep_linear",
            3000,
            "deep_linear",
            lr=0.05,
            batch=512,
            kw={"depth": 3, "init": 2e-2},
        ),
        Run(
            "deep_linear_d3_init1e-2_lr0.1",
            "deep_linear",
            3000,
            "deep_linear",
            lr=0.1,
            batch=512,
            kw={"depth": 3, "init": 1e-2},
        ),
        Run(
            "deep_linear_d3_init5e-3_lr0.05",
            "deep_linear",
            5000,
            "deep_linear",
            lr=0.05,
            batch=512,
            kw={"depth": 3, "init": 5e-3, "modes": [3.0, 1.5]},
        ),
        Run(
            "deep_linear_init3e-2_lr0.02_sgd",
            "deep_linear",
            4000,
            "deep_linear",
            lr=0.02,
            batch=32,
            kw={"init": 3e-2, "noise": 0.3},
        ),
        Run(
            "deep_linear_depth6_init1e-1",
            "deep_linear",
            3000,
            "deep_linear",
            lr=0.02,
            batch=512,
            kw={"depth": 6, "init": 0.1, "modes": [3.0, 1.0]},
        ),
        Run(
            "modular23_adamw_wd1",
            "modular",
            5000,
            "modular",
            opt="adamw",
            lr=1e-3,
            weight_decay=1.0,
            batch=512,
        ),
        Run(
            "modular23_adamw_wd0.1_frac0.3",
            "modular",
            4000,
            "modular",
            opt="adamw",
            lr=3e-3,
            weight_decay=0.1,
            batch=512,
            kw={"frac": 0.3},
        ),
        Run("parity_n20_k3_sgd", "parity", 5000, "parity", lr=0.1, batch=64),
        Run(
            "parity_n16_k3_adam",
            "parity",
            4000,
            "parity",
            opt="adam",
            lr=1e-3,
            batch=64,
            kw={"n": 16},
        ),
        Run("committee_m3_sgd", "committee", 4000, "committee", lr=0.5, batch=32),
        Run(
            "committee_m2_sgd_lr0.2", "committee", 4000, "committee", lr=0.2, batch=32, kw={"m": 2}
        ),
        Run(
            "digits_relu_adam_1e-3_seed2",
            "digits",
            1500,
            "digits",
            opt="adam",
            lr=1e-3,
            seed=2,
            kw={"depth": 3},
        ),
    ]


# ----------------------------------------------------------------------------- training


def _distance(model: torch.nn.Module, init: list[torch.Tensor]) -> float:
    total = 0.0
    for p, p0 in zip(model.parameters(), init, strict=True):
        total += float((p.detach() - p0).pow(2).sum())
    return math.sqrt(total)


def train(run: Run) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(run.seed)
    model, sample, (xva, yva), loss_fn = TASKS[run.make](run)
    init = [p.detach().clone() for p in model.parameters()]
    if run.opt == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=run.lr)
    elif run.opt == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=run.lr, momentum=run.momentum)
    sched = (
        torch.optim.lr_scheduler.MultiStepLR(opt, list(run.milestones), 0.1)
        if run.milestones
        else None
    )
    g = torch.Generator().manual_seed(run.seed)
    train_loss: list[float] = []
    val_steps: list[int] = []
    val_loss: list[float] = []
    dist: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, run.steps + 1):
        x, y = sample(g)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        train_loss.append(float(loss.detach()))
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                val_loss.append(float(loss_fn(model(xva), yva)))
            val_steps.append(step)
            dist.append(_distance(model, init))
    return {
        "name": run.name,
        "task": run.task,
        "settings": {
            "opt": run.opt,
            "lr": run.lr,
            "momentum": run.momentum,
            "batch": run.batch,
            "weight_decay": run.weight_decay,
            "milestones": list(run.milestones),
            "seed": run.seed,
            **run.kw,
        },
        "train_steps": list(range(1, run.steps + 1)),
        "train_loss": train_loss,
        "val_steps": val_steps,
        "val_loss": val_loss,
        "distance_steps": val_steps,
        "distance": dist,
        "seconds": round(time.perf_counter() - t0, 2),
    }


# ----------------------------------------------------------------------------- labels


def smooth_log(values: np.ndarray) -> np.ndarray:
    """The 'noise-free' real curve: centered rolling median of ln(loss), window 2 %, min 5."""
    n = len(values)
    w = max(5, round(0.02 * n))
    w += (w + 1) % 2  # odd
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.asarray(values, dtype=np.float64))
    finite = np.isfinite(y)
    cut = int(np.argmin(finite)) if not finite.all() else n  # non-finite ends the labeled part
    out = np.full(n, np.nan)
    out[:cut] = _centered_median(y[:cut], w)
    return out


def _centered_median(y: np.ndarray, w: int) -> np.ndarray:
    """Rolling median over [i-h, i+h]; near the ends the window shrinks symmetrically, so no
    padding value is repeated (padding would fake a flat start)."""
    n = len(y)
    if n == 0:
        return y
    h = min(w // 2, (n - 1) // 2)
    out = np.asarray(median_filter(y, size=2 * h + 1, mode="nearest"), dtype=np.float64)
    for i in range(min(h, n)):
        out[i] = np.median(y[: 2 * i + 1])
        j = n - 1 - i
        out[j] = np.median(y[2 * j - n + 1 :])
    return out


def label_real(
    steps: np.ndarray, values: np.ndarray, dist_steps: np.ndarray, dist: np.ndarray
) -> list[tuple[int, int]]:
    clean = np.exp(smooth_log(values))
    intervals = label_plateaus(steps, clean, None)
    return [iv for iv in intervals if not _steady_move(dist_steps, dist, iv)]


def _steady_move(dist_steps: np.ndarray, dist: np.ndarray, iv: tuple[int, int]) -> bool:
    """The hidden-progress exception on recorded (noisy) distance samples."""
    from scipy.stats import theilslopes

    s, e = iv
    mid = 0.5 * (s + e)
    d_steps = np.asarray(dist_steps, dtype=np.float64)
    d = np.asarray(dist, dtype=np.float64)
    usable = (d_steps <= e) & np.isfinite(d)
    keep = usable & (d_steps >= mid)
    if keep.sum() < 4 <= usable.sum():  # few samples in the second half: the latest 4, as
        keep = usable & (d_steps >= np.sort(d_steps[usable])[-4])  # the detector does
    if keep.sum() < 4:
        return False
    x, y = d_steps[keep], d[keep]
    slope, intercept, low, _high = theilslopes(y, x, 0.95)
    at_mid = intercept + slope * mid
    growth = slope * (e - mid)
    return bool(low > 0 and growth >= DIST_GROWTH * max(abs(at_mid), 1e-12))


def _round(xs: list[float]) -> list[float | None]:
    return [float(f"{v:.6g}") if math.isfinite(v) else None for v in xs]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    ap.add_argument("--out", type=Path, default=here / "data" / "real_curves.json")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--relabel", action="store_true", help="recompute the labels of --out; do not train"
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.relabel:
        with open(args.out, encoding="utf-8") as f:
            results = json.load(f)["runs"]
        for r in results:
            for k in ("train_loss", "val_loss", "distance"):
                r[k] = [math.nan if v is None else v for v in r[k]]
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(train, runs()))
    for r in results:
        ts, tl = np.array(r["train_steps"]), np.array(r["train_loss"])
        vs, vl = np.array(r["val_steps"]), np.array(r["val_loss"])
        ds, dd = np.array(r["distance_steps"]), np.array(r["distance"])
        r["train_plateaus"] = [list(iv) for iv in label_real(ts, tl, ds, dd)]
        r["val_plateaus"] = [list(iv) for iv in label_real(vs, vl, ds, dd)]
        for k in ("train_loss", "val_loss", "distance"):
            r[k] = _round(r[k])
        print(
            f"{r['name']:36s} {r['seconds']:6.1f}s train {r['train_loss'][0]!s:>9} -> "
            f"{r['train_loss'][-1]!s:>9}  plateaus train={r['train_plateaus']} "
            f"val={r['val_plateaus']}"
        )
    doc = {
        "description": "Real CPU training curves; see bench/record_real_curves.py.",
        "torch": torch.__version__,
        "eval_every": EVAL_EVERY,
        "runs": results,
    }
    text = json.dumps(doc, separators=(",", ":"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if len(text) > 2_000_000:
        out = args.out.with_suffix(".json.gz")
        with gzip.open(out, "wt", encoding="utf-8") as f:
            f.write(text)
        if args.out.exists():
            args.out.unlink()
    else:
        out = args.out
        out.write_text(text)
    print(f"wrote {out} ({len(results)} runs) in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
