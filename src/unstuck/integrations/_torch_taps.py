"""The taps a Guard puts on a torch run: every candidate built (so a bad cadence is refused at
once), then only those that the registered rules, the detector and the report read are kept.

Like pylint's ``only_required_for_messages``: a rule that is not registered costs no step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unstuck.diagnose import all_rules
from unstuck.diagnose.selection import ALWAYS_NEEDED, select_taps
from unstuck.integrations.defaults import (
    DEFAULT_ACTIVATION_EVERY,
    DEFAULT_DISTANCE_EVERY,
    DEFAULT_GRAD_NOISE_EVERY,
    DEFAULT_GRAD_NORM_EVERY,
    DEFAULT_OPTIMIZER_STATE_EVERY,
    DEFAULT_PRECISION_EVERY,
    DEFAULT_UPDATE_RATIO_EVERY,
)
from unstuck.record.rundata import MOMENTUM_SERIES
from unstuck.signals import (
    ActivationTap,
    ClipTap,
    GradNoiseTap,
    GradNormTap,
    LossComponentsTap,
    LossTap,
    LRTap,
    OptimizerStateTap,
    OutputTap,
    ParamDistanceTap,
    PrecisionTap,
    RankChecksumTap,
    SamplesTap,
    UpdateRatioTap,
    WeightNormTap,
)
from unstuck.signals.architecture import momentum_of
from unstuck.signals.base import Tap

__all__ = ["TorchTaps", "guard_rows", "torch_taps"]

logger = logging.getLogger("unstuck")


@dataclass
class TorchTaps:
    """The kept taps, and the ones the Guard records into by hand (``None`` when dropped)."""

    taps: list[Tap]
    distance: ParamDistanceTap
    clip: ClipTap | None
    components: LossComponentsTap | None
    outputs: OutputTap | None


def torch_taps(
    *,
    grad_norm_every: int = DEFAULT_GRAD_NORM_EVERY,
    update_ratio_every: int = DEFAULT_UPDATE_RATIO_EVERY,
    distance_every: int = DEFAULT_DISTANCE_EVERY,
    grad_noise_every: int = DEFAULT_GRAD_NOISE_EVERY,
    activation_every: int = DEFAULT_ACTIVATION_EVERY,
    optimizer_state_every: int = DEFAULT_OPTIMIZER_STATE_EVERY,
    precision_every: int = DEFAULT_PRECISION_EVERY,
    dataset_size: int | None = None,
    scaler: Any = None,
) -> TorchTaps:
    """Every candidate tap at these cadences (the Guard's defaults unless given), and the
    selection the registered rules need."""
    distance = ParamDistanceTap(distance_every)
    clip = ClipTap()
    components = LossComponentsTap()
    outputs = OutputTap(activation_every)
    candidates: list[Tap] = [
        LossTap(),
        GradNormTap(grad_norm_every),
        LRTap(),
        UpdateRatioTap(update_ratio_every),
        distance,
        SamplesTap(dataset_size),
        GradNoiseTap(grad_noise_every),
        ActivationTap(activation_every),
        outputs,
        OptimizerStateTap(optimizer_state_every),
        PrecisionTap(precision_every, scaler),
        clip,
        components,
        WeightNormTap(),
        RankChecksumTap(),
    ]
    selection = select_taps(candidates, all_rules().values(), always=ALWAYS_NEEDED)
    for reader, names in selection.unknown.items():
        logger.warning(
            "unstuck: %s reads %s, which no signal provides; the rule cannot run (check the "
            "spelling of its requires/uses)",
            reader,
            ", ".join(sorted(names)),
        )
    kept = list(selection.needed)
    return TorchTaps(
        taps=kept,
        distance=distance,
        clip=clip if clip in kept else None,
        components=components if components in kept else None,
        outputs=outputs if outputs in kept else None,
    )


def guard_rows(
    signals: Mapping[str, Any], step: int, names: Sequence[str], optimizer: Any
) -> list[tuple[str, int, float]]:
    """The metrics only a torch run has, beside its series: the optimizer's momentum
    (``add_momentum`` shows in the store) and each tensor's mean gradient norm over the window
    (the report's map)."""
    rows: list[tuple[str, int, float]] = []
    momentum = momentum_of(optimizer)
    if momentum is not None:
        rows.append((MOMENTUM_SERIES, step, momentum))
    per_tensor = signals.get("grad_norm_per_tensor")
    if isinstance(per_tensor, np.ndarray) and per_tensor.size:
        means = per_tensor.mean(axis=0)
        rows += [(f"grad_norm/{n}", step, float(v)) for n, v in zip(names, means)]
    return rows
