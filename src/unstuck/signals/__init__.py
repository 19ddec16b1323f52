"""Signals: cheap taps on the training step, flushed to the host in one transfer every k steps.

The names below are imported on first use (PEP 562): the taps need torch, while diagnosis reads
only the torch-free ``unstuck.signals.host``, so importing that must not import every tap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unstuck.signals.activations import ActivationTap
    from unstuck.signals.base import CostTier, Packet, StepContext, Tap
    from unstuck.signals.clipping import ClipTap
    from unstuck.signals.components import LossComponentsTap
    from unstuck.signals.curvature import CurvatureProbe
    from unstuck.signals.distributed import RankChecksumTap
    from unstuck.signals.grad_noise import GradNoiseTap
    from unstuck.signals.grad_norm import GradNormTap, NormPlan
    from unstuck.signals.hub import Frame, SignalHub, optimizer_parameters
    from unstuck.signals.loss import LossTap
    from unstuck.signals.lr import LRTap, read_lr
    from unstuck.signals.optimizer_state import OptimizerStateTap
    from unstuck.signals.outputs import OutputTap
    from unstuck.signals.param_distance import ParamDistanceTap
    from unstuck.signals.precision import PrecisionTap
    from unstuck.signals.samples import SamplesTap
    from unstuck.signals.update_ratio import UpdateRatioTap
    from unstuck.signals.weight_norm import WeightNormTap

__all__ = [
    "ActivationTap",
    "ClipTap",
    "CostTier",
    "CurvatureProbe",
    "Frame",
    "GradNoiseTap",
    "GradNormTap",
    "LRTap",
    "LossComponentsTap",
    "LossTap",
    "NormPlan",
    "OptimizerStateTap",
    "OutputTap",
    "Packet",
    "ParamDistanceTap",
    "PrecisionTap",
    "RankChecksumTap",
    "SamplesTap",
    "SignalHub",
    "StepContext",
    "Tap",
    "UpdateRatioTap",
    "WeightNormTap",
    "optimizer_parameters",
    "read_lr",
]

# name -> the module that defines it
_LAZY: dict[str, str] = {
    "ActivationTap": "unstuck.signals.activations",
    "ClipTap": "unstuck.signals.clipping",
    "CostTier": "unstuck.signals.base",
    "CurvatureProbe": "unstuck.signals.curvature",
    "Frame": "unstuck.signals.hub",
    "GradNoiseTap": "unstuck.signals.grad_noise",
    "GradNormTap": "unstuck.signals.grad_norm",
    "LRTap": "unstuck.signals.lr",
    "LossComponentsTap": "unstuck.signals.components",
    "LossTap": "unstuck.signals.loss",
    "NormPlan": "unstuck.signals.grad_norm",
    "OptimizerStateTap": "unstuck.signals.optimizer_state",
    "OutputTap": "unstuck.signals.outputs",
    "Packet": "unstuck.signals.base",
    "ParamDistanceTap": "unstuck.signals.param_distance",
    "PrecisionTap": "unstuck.signals.precision",
    "RankChecksumTap": "unstuck.signals.distributed",
    "SamplesTap": "unstuck.signals.samples",
    "SignalHub": "unstuck.signals.hub",
    "StepContext": "unstuck.signals.base",
    "Tap": "unstuck.signals.base",
    "UpdateRatioTap": "unstuck.signals.update_ratio",
    "WeightNormTap": "unstuck.signals.weight_norm",
    "optimizer_parameters": "unstuck.signals.hub",
    "read_lr": "unstuck.signals.lr",
}


def __getattr__(name: str) -> Any:
    """Import a tap's module on first access instead of at ``import unstuck.signals``."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    """List the lazy names too."""
    return sorted(set(globals()) | set(_LAZY))
