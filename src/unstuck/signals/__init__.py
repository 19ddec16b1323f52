"""Signals: cheap taps on the training step, flushed to the host in one transfer every k steps."""

from unstuck.signals.base import CostTier, Packet, StepContext, Tap
from unstuck.signals.grad_noise import GradNoiseTap
from unstuck.signals.grad_norm import GradNormTap, NormPlan
from unstuck.signals.hub import Frame, SignalHub, optimizer_parameters
from unstuck.signals.loss import LossTap
from unstuck.signals.lr import LRTap, read_lr
from unstuck.signals.param_distance import ParamDistanceTap
from unstuck.signals.samples import SamplesTap
from unstuck.signals.update_ratio import UpdateRatioTap

__all__ = [
    "CostTier",
    "Frame",
    "GradNoiseTap",
    "GradNormTap",
    "LRTap",
    "LossTap",
    "NormPlan",
    "Packet",
    "ParamDistanceTap",
    "SamplesTap",
    "SignalHub",
    "StepContext",
    "Tap",
    "UpdateRatioTap",
    "optimizer_parameters",
    "read_lr",
]
