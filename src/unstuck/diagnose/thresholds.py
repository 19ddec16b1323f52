"""Thresholds shared by several rules, each with its source on the same line."""

from __future__ import annotations

# Update/weight ratio ‖Δθ‖/‖θ‖. CS231n (Karpathy) puts a healthy ratio "somewhere around 1e-3";
# TheDeepChecker flags log10(ratio) outside [-4, -1] (REFERENCE.md §3).
HEALTHY_UPDATE_RATIO = 1e-3  # CS231n "Neural Networks 3": updates/weights ≈ 1e-3
LOW_UPDATE_RATIO = 1e-4  # TheDeepChecker: log10 ratio < -4 means steps too small
HIGH_UPDATE_RATIO = 1e-1  # TheDeepChecker / DeepDiagnosis upper bound: steps too large
# DESIGN.md's catalog reads lr_too_high from "update/weight ≫ 1e-2": ten times CS231n's healthy
# ratio. Alone it is no alarm (a net growing out of a small init shows it too); the rules pair it
# with a second sign (lr_too_high: an adaptive optimizer on a loss that is not improving).
ELEVATED_UPDATE_RATIO = 10 * HEALTHY_UPDATE_RATIO

# Optimizers whose step is normalised per coordinate (≈ lr whatever the gradient's scale): their
# update/weight ratio measures the LR against the weights, not the size of the gradient.
ADAPTIVE_OPTIMIZERS = frozenset(
    {"Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop", "Adagrad", "Adadelta"}
)

# Gradient flow across depth (AUTOTRAINER, REFERENCE.md §3).
VANISHING_LAYER_RATIO = 1e-3  # AUTOTRAINER: ‖g_first‖/‖g_last‖ < 1e-3 ...
VANISHING_FIRST_NORM = 1e-4  # ... and ‖g_first‖ < 1e-4
EXPLODING_LAYER_RATIO = 70.0  # AUTOTRAINER: ‖g_first‖/‖g_last‖ > 70

RECENT_POINTS = 8  # sampled points the rules average over: a robust median, not one noisy sample
