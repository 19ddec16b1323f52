"""Which runs the zoo holds, and the hurt check each mutant passes before it counts as a fault.

A run is a base program at a seed, either healthy (``operator`` is None) or mutated by one
operator at one severity. The full zoo: every program healthy at ``SEEDS`` seeds, once trained
``LONG_FACTOR``× longer (converging) and once with a quarter of the batch (noisy); and every
applicable operator at ``SEEDS`` seeds, each seed with its own severity drawn from the
operator's range. ``--quick`` keeps two mutants per operator on two programs (taken in
turn, so the operators spread over the split's programs) and
one healthy run per program.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from zoo import SPLIT, load_programs
from zoo._spec import Outcome, Spec, execute
from zoo.operators import OPERATORS

__all__ = ["HURT_MARGIN", "Job", "hurt", "run_job", "zoo_runs"]

SEEDS = 3  # seeds per (program, operator) and healthy runs per program in the full zoo
LONG_FACTOR = 3  # the long healthy run: steps × this
NOISY_DIVISOR = 4  # the noisy healthy run: batch size ÷ this (at least 4)
QUICK_PER_OPERATOR = 2  # --quick: mutants per operator, on different programs
QUICK_SEVERITY = 0.7  # --quick: this far from the mild end of each range (a clear fault)
# A mutant hurts when its clean validation metric ends worse than the reference's by this share
# of the reference (at least HURT_FLOOR absolute), or reaches the reference's end value (plus
# the same margin) at least SLOWDOWN× later, or ends non-finite.
HURT_MARGIN = 0.25  # relative; a quarter worse is beyond seed noise on these small sets
HURT_FLOOR = 0.02  # absolute: two points of error rate, or 0.02 of a standardized MSE
SLOWDOWN = 2.0  # steps to the reference's end value, mutant over reference


@dataclass(frozen=True)
class Job:
    """One zoo run."""

    program: str
    seed: int
    operator: str | None  # None: a healthy run
    severity: float | None
    variant: str = ""  # healthy runs: "", "long" or "noisy"
    max_steps: int | None = None  # a cap for tests

    @property
    def expected(self) -> str | None:
        return OPERATORS[self.operator].cause if self.operator else None

    @property
    def key(self) -> str:
        if self.operator is None:
            return f"{self.program}/healthy{'-' + self.variant if self.variant else ''}@{self.seed}"
        return f"{self.program}/{self.operator}[{self.severity:.3g}]@{self.seed}"


def _quantile(*parts: object) -> float:
    """A severity quantile fixed by the run's identity (crc32: the same on every machine)."""
    h = zlib.crc32("/".join(map(str, parts)).encode())
    return float(np.random.default_rng(h).uniform())


def zoo_runs(split: str, *, quick: bool = False, only: set[str] | None = None) -> list[Job]:
    """Every run of ``split`` (train, test or all), in a fixed order; ``only``: these programs."""
    programs = load_programs()
    names = sorted(
        p for p in programs if (split == "all" or SPLIT[p] == split) and (not only or p in only)
    )
    specs = {p: programs[p].make(0) for p in names}
    jobs: list[Job] = []
    if quick:
        jobs += [Job(p, 0, None, None) for p in names]
        for i, op in enumerate(OPERATORS.values()):
            fits = [p for p in names if op.applies(specs[p])]
            for k in range(min(QUICK_PER_OPERATOR, len(fits))):
                p = fits[(i + k) % len(fits)]
                jobs.append(Job(p, 0, op.name, op.worse(QUICK_SEVERITY)))
        return jobs
    for p in names:
        jobs += [Job(p, s, None, None) for s in range(SEEDS)]
        jobs.append(Job(p, 0, None, None, variant="long"))
        jobs.append(Job(p, 0, None, None, variant="noisy"))
        for op in OPERATORS.values():
            if op.applies(specs[p]):
                jobs += [
                    Job(p, s, op.name, op.severity(_quantile(p, op.name, s))) for s in range(SEEDS)
                ]
    return jobs


def _cap(spec: Spec, max_steps: int | None) -> Spec:
    if max_steps is not None and spec.steps > max_steps:
        spec.steps = max_steps
    return spec


def build(job: Job) -> tuple[Spec, Spec | None]:
    """The spec to run and, for a mutant, the reference it is compared with."""
    base = load_programs()[job.program].make(job.seed)
    if job.operator is None:
        if job.variant == "long":
            base.steps *= LONG_FACTOR
        elif job.variant == "noisy":  # a quarter of the batch: noisier steps, no fault
            base.batch_size = max(base.batch_size // NOISY_DIVISOR, 4)
        return _cap(base, job.max_steps), None
    op = OPERATORS[job.operator]
    assert job.severity is not None
    mutant = op.apply(base, job.severity, job.seed)
    ref = op.reference(base, job.severity, job.seed) if op.reference else base
    return _cap(mutant, job.max_steps), _cap(ref, job.max_steps)


def _steps_to(outcome: Outcome, target: float) -> float:
    for step, value in outcome.checkpoints:
        if value <= target:
            return float(step)
    return math.inf


def hurt(mutant: Outcome, reference: Outcome) -> dict[str, Any]:
    """Whether a mutant really hurt training, from the clean metric on held-out data without
    unstuck (the training metric is recorded but not used: a data fault changes the training
    labels it would be measured against)."""
    target = reference.final_val + max(HURT_MARGIN * reference.final_val, HURT_FLOOR)
    ref_steps, mut_steps = _steps_to(reference, target), _steps_to(mutant, target)
    reasons = []
    if not (math.isfinite(mutant.final_val) and math.isfinite(mutant.final_train)):
        reasons.append("non-finite")
    else:
        if mutant.final_val > target:
            reasons.append("worse validation")
        if mut_steps >= SLOWDOWN * ref_steps:
            reasons.append("slower")
    return {
        "hurt": bool(reasons),
        "why": reasons,
        "reference_val": reference.final_val,
        "mutant_val": mutant.final_val,
        "reference_train": reference.final_train,
        "mutant_train": mutant.final_train,
        "reference_steps_to_target": ref_steps,
        "mutant_steps_to_target": mut_steps,
    }


def run_job(job: Job) -> dict[str, Any]:
    """Run one zoo job: the Guard on the spec, and for a mutant the hurt check without it."""
    spec, ref_spec = build(job)
    guarded = execute(spec, job.seed, guard=True)
    record: dict[str, Any] = {
        **asdict(job),
        "key": job.key,
        "split": SPLIT[job.program],
        "expected": job.expected,
        "ranking": guarded.ranking,
        "findings": guarded.findings,
        "final_val": guarded.final_val,
        "seconds": guarded.seconds,
    }
    if job.operator is not None:
        assert ref_spec is not None
        op = OPERATORS[job.operator]
        check = hurt(execute(spec, job.seed, guard=False), execute(ref_spec, job.seed, guard=False))
        record["hurt_check"] = check
        record["hurt"] = check["hurt"]
        record["scored"] = check["hurt"] or not op.hurt_required
    else:
        record["hurt"] = None
        record["scored"] = True
    return record
