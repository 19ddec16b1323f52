"""Ranks disagree: data-parallel replicas hold different weights."""

from __future__ import annotations

import math
from typing import ClassVar

from unstuck.diagnose.base import Rule
from unstuck.diagnose.evidence import Evidence
from unstuck.signals.host import checksum_spread
from unstuck.types import Finding, Remedy

# Float32 weights carry ~7 significant digits (eps 1.19e-7); the float64 checksums of identical
# weights agree to ~1e-12 whatever the summation order. A spread above ~10 float32 ulps of the
# whole vector is a difference in the weights themselves, not rounding.
DESYNC_TOLERANCE = 1e-6  # ours: 10 × float32 eps, far above float64 summation noise
FULL_CONFIDENCE_DECADES = (
    5.0  # ours: a spread 1e5 × the tolerance (≥ 10 % of the weights) is certain
)


class RankDesync(Rule):
    """Per-rank parameter checksums differ beyond float tolerance: replicas train apart."""

    code: ClassVar[str] = "rank_desync"
    requires: ClassVar[frozenset[str]] = frozenset({"rank_checksums"})
    continuous: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "In data-parallel training every rank must hold the same weights; unstuck compares a "
        "checksum of the parameters (sum, sum of squares and a fixed random projection) across "
        "ranks at every flush, and here they differ. The ranks are training different models and "
        "averaging gradients that belong to none of them, so the loss stalls or behaves oddly. "
        "Usual causes: each rank seeded its own initialisation and nothing broadcast rank 0's "
        "weights (wrap the model in DistributedDataParallel, which broadcasts at construction, or "
        "call a broadcast of the parameters and buffers from rank 0 before training, as "
        "Horovod's broadcast_parameters); a hand-written gradient all-reduce that misses tensors; "
        "one rank skipping optimizer.step (a local NaN/overflow check, a rank-dependent branch); "
        "or a rank-local change of the LR or of the weights after loading a checkpoint on one "
        "rank only. Sharded (FSDP, tensor-parallel) parameters differ by design and are not "
        "compared."
    )

    def check(self, ev: Evidence) -> Finding | None:
        table = ev.get("rank_checksums")
        if not isinstance(table, (list, tuple)) or len(table) < 2:
            return None
        spread = checksum_spread([list(row) for row in table])
        if math.isnan(spread) or spread <= DESYNC_TOLERANCE:
            return None
        decades = (
            FULL_CONFIDENCE_DECADES if math.isinf(spread) else math.log10(spread / DESYNC_TOLERANCE)
        )
        confidence = min(1.0, 0.9 + 0.1 * decades / FULL_CONFIDENCE_DECADES)
        ref = [float(v) for v in table[0]]
        differing = [
            r
            for r, row in enumerate(table)
            if r > 0 and checksum_spread([ref, [float(v) for v in row]]) > DESYNC_TOLERANCE
        ]
        return Finding(
            cause=self.code,
            confidence=float(confidence),
            evidence={
                "world_size": len(table),
                "spread": float(spread),
                "tolerance": DESYNC_TOLERANCE,
                "ranks_differing_from_rank0": differing,
                "checksums": [[float(v) for v in row] for row in table],
            },
            step=ev.step,
            summary=f"{len(differing)} of {len(table)} ranks hold weights that differ from rank "
            f"0's (checksum spread {spread:.1e} > tolerance {DESYNC_TOLERANCE:.0e})",
            remedies=(
                Remedy(
                    "sync_ranks",
                    note="wrap the model in DistributedDataParallel or broadcast rank 0's "
                    "parameters before training; make every rank run optimizer.step",
                ),
            ),
        )
