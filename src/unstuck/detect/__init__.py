"""Detect: turn a loss stream into a state (improving, slow, plateau, oscillating, diverging,
hidden_progress) with a statistical trend test, for live runs and offline logs alike."""

from unstuck.detect.detector import (
    DEFAULT_EPSILON,
    DEFAULT_Z,
    PlateauDetector,
    detect_plateaus,
)
from unstuck.detect.history import BinnedSeries
from unstuck.detect.trend import Trend, theil_sen

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_Z",
    "BinnedSeries",
    "PlateauDetector",
    "Trend",
    "detect_plateaus",
    "theil_sen",
]
