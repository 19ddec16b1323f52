"""Step time with and without a Guard, side by side in one process, interleaved.

Two identical copies of each model train on the same batches; their steps alternate
(plain, guarded, plain, guarded, ...) so drifts in machine load hit both alike. Each step is timed
on its own (with a device synchronize on GPU, for both copies alike); the table reports the
median per-step time of each and their ratio, and also the mean ratio, which includes the
guard's flush every ``flush_every`` steps.

    python bench/overhead.py [--quick] [--json PATH] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import unstuck

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Case:
    name: str
    make_model: Callable[[], torch.nn.Module]
    make_batch: Callable[[torch.Generator], Batch]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y, dtype=torch.long)


def make_cases(device: torch.device) -> list[Case]:
    x, y = _digits()
    x, y = x.to(device), y.to(device)

    def digits_batch(g: torch.Generator, size: int = 128) -> Batch:
        index = torch.randint(0, len(x), (size,), generator=g).to(device)
        return x[index], y[index]

    def image_batch(g: torch.Generator) -> Batch:
        bx, by = digits_batch(g)
        return bx.reshape(-1, 1, 8, 8), by

    vocab, seq = 256, 64

    def token_batch(g: torch.Generator) -> Batch:
        tokens = torch.randint(0, vocab, (32, seq), generator=g).to(device)
        return tokens, tokens.roll(1, dims=1)  # predict the previous token: a learnable task

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, 128)
            layer = torch.nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(128, vocab)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(tokens)))

    def token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1))

    ce = torch.nn.functional.cross_entropy
    return [
        Case(
            "mlp-digits",
            lambda: torch.nn.Sequential(
                torch.nn.Linear(64, 256),
                torch.nn.ReLU(),
                torch.nn.Linear(256, 256),
                torch.nn.ReLU(),
                torch.nn.Linear(256, 10),
            ),
            digits_batch,
            ce,
        ),
        Case(
            "cnn-digits",
            lambda: torch.nn.Sequential(
                torch.nn.Conv2d(1, 32, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 64, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(4),
                torch.nn.Flatten(),
                torch.nn.Linear(1024, 10),
            ),
            image_batch,
            ce,
        ),
        Case("transformer-tokens", Encoder, token_batch, token_loss),
    ]


def _step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    guard: unstuck.Guard | None,
    sync: Callable[[], None],
) -> float:
    sync()
    start = time.perf_counter()
    loss = loss_fn(model(batch[0]), batch[1])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if guard is not None:
        guard.step(loss)
    sync()
    return time.perf_counter() - start


def measure(case: Case, device: torch.device, steps: int, warmup: int) -> dict[str, object]:
    torch.manual_seed(0)
    plain = case.make_model().to(device)
    guarded = copy.deepcopy(plain)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    guarded_opt = torch.optim.AdamW(guarded.parameters(), lr=1e-3)
    guard = unstuck.Guard(guarded, guarded_opt, policy="observe", console=False)
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(1)
    plain_times: list[float] = []
    guarded_times: list[float] = []
    for i in range(warmup + steps):
        batch = case.make_batch(g)
        order = [
            (plain, plain_opt, None, plain_times),
            (guarded, guarded_opt, guard, guarded_times),
        ]
        if i % 2:  # alternate which copy goes first, so neither always runs on a warm cache
            order.reverse()
        for model, opt, grd, times in order:
            elapsed = _step(model, opt, batch, case.loss, grd, sync)
            if i >= warmup:
                times.append(elapsed)
    guard.close()
    base_ms = statistics.median(plain_times) * 1e3
    guarded_ms = statistics.median(guarded_times) * 1e3
    return {
        "name": case.name,
        "baseline_ms": round(base_ms, 4),
        "guarded_ms": round(guarded_ms, 4),
        "ratio": round(guarded_ms / base_ms, 4),
        "mean_ratio": round(statistics.fmean(guarded_times) / statistics.fmean(plain_times), 4),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (about a minute)")
    parser.add_argument("--json", default="bench/results/overhead.json", help="output JSON path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.getLogger("unstuck").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps, warmup = (300, 30) if args.quick else (1500, 100)
    cases = [measure(c, device, steps, warmup) for c in make_cases(device)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    result = {
        "device": f"{device.type}: {name or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "unstuck": unstuck.__version__,
        "quick": args.quick,
        "cases": cases,
    }
    print(f"Guard overhead on {result['device']} (policy='observe', default settings)\n")
    print("| case | baseline ms/step | guarded ms/step | median ratio | mean ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for c in cases:
        print(
            f"| {c['name']} | {c['baseline_ms']:.3f} | {c['guarded_ms']:.3f} | "
            f"{c['ratio']:.3f} | {c['mean_ratio']:.3f} |"
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
