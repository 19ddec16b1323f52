"""Does the optimizer's update norm warn of a loss spike before the loss does?

    python bench/spike_lead.py [--seeds N] [--every K] [--out PATH]

Runs ``bench/rescue.py``'s ``gpt_lr_spike`` task (its LR ×50 on steps 480-519) under a Guard that
only observes (``policy="observe"``), with the update/weight ratio ‖Δθ‖ / ‖θ‖ sampled every
``--every`` optimizer steps (the Guard's default is 32), and reports per seed:

* ``loss_jump``: the first step from 100 steps before the spike on whose training loss is more
  than twice the median of the 50 losses before it;
* ``update_jump``: the first sampled step, from the same point, whose update ratio is more than
  twice the median of the 5 samples before it;
* ``lead``: ``loss_jump − update_jump`` (steps by which the update norm's jump comes first);
* ``diverging_at``: the first flush at or after the spike's start whose detector state is
  ``diverging`` (what a rewind answers).

Results go to ``bench/results/spike_lead.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rescue  # noqa: E402
import rescue_tasks  # noqa: E402

LOSS_WINDOW = 50  # losses before a step whose median it is compared with
UPDATE_WINDOW = 5  # update-ratio samples before one whose median it is compared with
FACTOR = 2.0  # "a jump": more than twice that median (the detector's doubling)
LOOK_BACK = 100  # steps before the spike's start from which a jump is looked for


def first_jump(steps: list[int], values: list[float], start: int, window: int) -> int | None:
    """The first step at or after ``start`` whose value is above FACTOR × the median of the
    ``window`` values before it."""
    v = np.asarray(values, dtype=float)
    for i, s in enumerate(steps):
        prior = v[max(0, i - window) : i]
        if s >= start and prior.size and v[i] > FACTOR * float(np.median(prior)):
            return int(s)
    return None


def observe_run(task: rescue_tasks.Task, seed: int, every: int) -> dict[str, Any]:
    """One run of ``task`` under an observing Guard; the series it saw and its states."""

    seen: dict[str, Any] = {"loss": ([], []), "update_ratio": ([], []), "states": []}

    class Observe(rescue.Unstuck):
        policy = "observe"

        def __init__(self, task: Any, model: torch.nn.Module, budget: int, spe: int) -> None:
            super().__init__(task, model, budget, spe)
            monitor = self.guard._monitor
            observe = monitor.observe

            def spy(step: int, frame: Any, **kwargs: Any) -> Any:
                for name in ("loss", "update_ratio"):
                    series = frame.signals.get(name)
                    if series is not None:
                        seen[name][0].extend(int(s) for s in series[0])
                        seen[name][1].extend(float(x) for x in series[1])
                update = observe(step, frame, **kwargs)
                seen["states"].append((int(step), str(monitor.state)))
                return update

            monitor.observe = spy  # type: ignore[method-assign]

        def guard_options(self) -> dict[str, Any]:
            return {"update_ratio_every": every}

    rescue.run(task, Observe, seed)
    return seen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Update-norm lead over the loss on a spike.")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--every", type=int, default=32, help="update-ratio sampling (default 32)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "spike_lead.json")
    args = ap.parse_args(argv)
    rescue._init_worker()
    task = rescue_tasks.TASKS["gpt_lr_spike"]
    assert task.spike is not None
    start = task.spike.start
    rows = []
    for seed in range(args.seeds):
        seen = observe_run(task, seed, args.every)
        (loss_steps, losses), (update_steps, updates) = seen["loss"], seen["update_ratio"]
        loss_jump = first_jump(loss_steps, losses, start - LOOK_BACK, LOSS_WINDOW)
        update_jump = first_jump(update_steps, updates, start - LOOK_BACK, UPDATE_WINDOW)
        diverging = next((s for s, st in seen["states"] if st == "diverging" and s >= start), None)
        lead = None if loss_jump is None or update_jump is None else loss_jump - update_jump
        rows.append(
            {
                "seed": seed,
                "loss_jump": loss_jump,
                "update_jump": update_jump,
                "lead": lead,
                "diverging_at": diverging,
            }
        )
        print(
            f"seed {seed}: update ratio ×{FACTOR:g} at step {update_jump}, loss ×{FACTOR:g} at "
            f"step {loss_jump} (lead {lead}), detector diverging at flush {diverging} "
            f"(spike from step {start}, update ratio sampled every {args.every})"
        )
    result = {"task": task.name, "spike_start": start, "every": args.every, "seeds": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
