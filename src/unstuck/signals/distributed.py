"""Parameter checksums compared across ranks, once per flush.

In data-parallel training every rank must hold the same weights. When they drift apart (each rank
seeded its own initialisation and nothing broadcast rank 0's weights, a rank skipped an optimizer
step, a hand-written gradient all-reduce missed a tensor) the run trains several different models
at once and the averaged loss stalls. This tap makes each rank compute a small float64 vector over
its optimizer parameters, ``[Σθ, Σθ², Σ r·θ, numel]`` with ``r`` a fixed-seed Gaussian projection,
and gathers the vectors of every rank with one ``all_gather`` per flush.

Every rank calls the same collective in the same order (REFERENCE.md §5: DDP pitfalls), so the
Guard must be built on every rank and flush on the same steps (it does: the flush cadence counts
``guard.step`` calls). Gloo and NCCL both support ``all_gather``; on gloo the vector crosses to
the CPU first. Without ``torch.distributed``, before ``init_process_group`` or with a single rank,
the tap does nothing and costs nothing: it has no per-step hook at all.

Sharded parameters (FSDP, DTensor) differ between ranks by design; the tap then gathers nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from unstuck.signals.base import CostTier, Packet, Reduction, StepContext, Tap
from unstuck.signals.host import CHECKSUM_FIELDS, Series, checksum_spread

__all__ = ["CHECKSUM_FIELDS", "RankChecksumTap", "distributed_world", "is_sharded"]

PROJECTION_SEED = 20_240_917  # any fixed value: every rank must draw the same projection


def distributed_world() -> int:
    """The world size of the default process group, or 1 when there is none."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return int(dist.get_world_size())


def is_sharded(model: torch.nn.Module | None, params: list[torch.Tensor]) -> bool:
    """True for FSDP / DTensor parameters: each rank then holds a different shard."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch builds without distributed
        DTensor = None  # type: ignore[assignment,misc]  # noqa: N806
    if DTensor is not None and any(isinstance(p, DTensor) for p in params):
        return True
    if model is not None:
        for module in model.modules():
            cls = type(module).__name__  # FSDP1 wrapper, or FSDP2's generated FSDP<Name> class
            if cls == "FullyShardedDataParallel" or cls.startswith("FSDP"):
                return True
    return False


class RankChecksumTap(Tap):
    """When torch.distributed is initialised, gathers a checksum of the parameters per rank.

    Emits ``rank_checksums`` (one ``[Σθ, Σθ², Σ r·θ, numel]`` row per rank, the same table on
    every rank), ``rank_world_size`` and the series ``rank_checksum_spread`` (the largest
    difference to rank 0, relative to the checksum's scale).
    """

    name: ClassVar[str] = "rank_checksum"
    tier: ClassVar[CostTier] = "always"
    provides: ClassVar[frozenset[str]] = frozenset(
        {"rank_checksums", "rank_world_size", "rank_checksum_spread"}
    )
    reduction: ClassVar[Reduction] = "local"  # it gathers every rank's checksums itself

    def __init__(self) -> None:
        self._params: list[torch.Tensor] = []
        self._sharded = False
        self.current_step = 0  # set by the hub at each flush: the latest Guard step

    def bind(self, ctx: StepContext) -> None:
        self._params = list(ctx.params)
        self._sharded = is_sharded(ctx.model, self._params)

    def _local_checksum(self) -> torch.Tensor:
        home = self._params[0].device if self._params else torch.device("cpu")
        total = torch.zeros(3, dtype=torch.float64, device=home)
        gen = torch.Generator(device=home).manual_seed(PROJECTION_SEED)
        numel = 0
        with torch.no_grad():
            for p in self._params:
                flat = p.detach().reshape(-1).to(device=home, dtype=torch.float64)
                r = torch.randn(flat.numel(), generator=gen, device=home, dtype=torch.float64)
                total += torch.stack([flat.sum(), flat.square().sum(), flat.dot(r)])
                numel += flat.numel()
        count = torch.tensor([float(numel)], dtype=torch.float64, device=home)
        return torch.cat([total, count])

    def collect(self) -> Packet:
        world = distributed_world()
        if world <= 1 or self._sharded:
            return Packet()
        dist = torch.distributed
        local = self._local_checksum()
        if dist.get_backend() == "gloo" and local.device.type != "cpu":
            local = local.cpu()
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)  # the same collective on every rank, once per flush
        table = torch.stack(gathered).cpu().tolist()  # float64 kept: the hub packs float32
        return Packet(host={"table": table, "step": self.current_step})

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        table = host.get("table")
        if not table:
            return {}
        spread = checksum_spread(table)
        return {
            "rank_checksums": [list(map(float, row)) for row in table],
            "rank_world_size": len(table),
            "rank_checksum_spread": Series([int(host.get("step", 0))], [spread]),
        }
