"""Signals: cheap taps on the training step, flushed to the host in one transfer every k steps."""

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
