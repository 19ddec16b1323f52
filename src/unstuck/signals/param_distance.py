"""Distance of the parameters from a reference point, ‖θ − θ_ref‖, once per flush.

This is the hidden-progress signal: when the loss is flat but this distance keeps growing
steadily, the run is moving (grokking, sparse parity, a Saxe plateau before its drop) and the
right action is to wait (Barak et al. 2022; Pesme et al. 2020 use the same quantity).

For large models the reference is a fixed random subset of coordinates, so the memory cost is
bounded; the squared distance on the subset, scaled by total/sampled coordinates, is an unbiased
estimate of the full squared distance.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from unstuck.signals.base import CostTier, Packet, Reduction, StepContext, Tap
from unstuck.signals.host import Series
from unstuck.signals.sampling import DEFAULT_MAX_ELEMENTS, CoordinateSample

__all__ = ["DEFAULT_MAX_ELEMENTS", "ParamDistanceTap"]

# The detector's hidden-progress trend needs a few samples before it decides, so the distance is
# sampled between flushes too; one sample costs about one optimizer step's arithmetic. The Guard
# passes its own cadence (``distance_every``).
DEFAULT_EVERY = 16


class ParamDistanceTap(Tap):
    """‖θ − θ_ref‖ with θ_ref the parameters when monitoring began (or was re-anchored)."""

    name: ClassVar[str] = "param_distance"
    tier: ClassVar[CostTier] = "always"
    # A detector input: rank 0's on every rank, so every rank's detectors agree (equal on ranks
    # in sync; a desync is the rank_desync rule's business, not a reason to disagree).
    reduction: ClassVar[Reduction] = "lead"
    provides: ClassVar[frozenset[str]] = frozenset({"param_distance"})

    def __init__(
        self, every: int = DEFAULT_EVERY, max_elements: int = DEFAULT_MAX_ELEMENTS, seed: int = 0
    ) -> None:
        if max_elements < 1:
            raise ValueError(f"distance_max_elements must be >= 1, got {max_elements!r}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"distance_every must be a positive int, got {every!r}")
        self.every = every
        self._rows: list[torch.Tensor] = []
        self._steps: list[int] = []
        self.max_elements = max_elements
        self.seed = seed
        self._params: list[torch.Tensor] = []
        self._sample: CoordinateSample | None = None
        self._reference: list[torch.Tensor] = []
        self._scale = 1.0
        self.current_step = 0

    def bind(self, ctx: StepContext) -> None:
        self._params = list(ctx.params)
        self._sample = CoordinateSample(self._params, self.max_elements, self.seed)
        self._scale = self._sample.scale
        self.reanchor()

    def _view(self) -> list[torch.Tensor]:
        assert self._sample is not None
        return self._sample.view(self._params)

    def reanchor(self) -> None:
        """Take the current parameters as the new reference point."""
        self._reference = [v.clone() for v in self._view()]

    def reference_norm(self) -> float:
        """``‖θ_ref‖`` (estimated like the distance): the scale the distance is judged against.

        A host read; called once at construction, never on the hot path.
        """
        if not self._reference:
            return 0.0
        squared = sum(float(r.double().pow(2).sum()) for r in self._reference)
        return math.sqrt(squared) * self._scale

    def _distance(self) -> torch.Tensor:
        deltas = torch._foreach_sub(self._view(), self._reference)
        norms = torch._foreach_norm(deltas)
        home = norms[0].device
        stacked = torch.stack([n.float().to(home) for n in norms])  # one kernel, not one per tensor
        distance: torch.Tensor = torch.linalg.vector_norm(stacked) * self._scale
        return distance.reshape(())

    def on_post_step(self, ctx: StepContext, opt_step: int) -> None:
        if opt_step % self.every == 0 and self._params:
            self._rows.append(self._distance())
            self._steps.append(self.current_step)

    def collect(self) -> Packet:
        if not self._params:
            return Packet()
        if not self._steps or self._steps[-1] != self.current_step:
            self._rows.append(self._distance())  # the flush step itself, always
            self._steps.append(self.current_step)
        packet = Packet(tensors={"distance": torch.stack(self._rows)}, host={"steps": self._steps})
        self._rows, self._steps = [], []
        return packet

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        if "distance" not in host:
            return {}
        values = [float(v) for v in host["distance"]]
        return {"param_distance": Series(list(host["steps"]), values)}

    def state_dict(self) -> dict[str, Any]:
        return {"reference": [r.detach().cpu().clone() for r in self._reference]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ref = state.get("reference")
        if ref and len(ref) == len(self._reference):
            self._reference = [r.to(old.device) for r, old in zip(ref, self._reference)]
