"""The Guard's defaults for how often it measures and decides, shared by every front-end.

Each was chosen by measurement with ``bench/overhead.py``; docs/guard.md gives every argument's
default with the reason.
"""

__all__ = [
    "DEFAULT_ACTIVATION_EVERY",
    "DEFAULT_CURVATURE_HVPS",
    "DEFAULT_DISTANCE_EVERY",
    "DEFAULT_FLUSH_EVERY",
    "DEFAULT_GRAD_NOISE_EVERY",
    "DEFAULT_GRAD_NORM_EVERY",
    "DEFAULT_OPTIMIZER_STATE_EVERY",
    "DEFAULT_PRECISION_EVERY",
    "DEFAULT_PROBE_BATCHES",
    "DEFAULT_UPDATE_RATIO_EVERY",
]

# Defaults chosen by measurement with bench/overhead.py (the closing note of issue 2 has the
# figures). A flush (host transfer plus one decision) is a fixed Python cost whatever the model,
# so it runs every 50 steps. Sampled signals make their step slower, and a median step time moves
# with the share of steps that carry one: gradient norms (every gradient read once) are taken
# every 8th optimizer step, the parameter distance and the gradient-noise sums every 16th and
# update ratios (a parameter copy) every 32nd: multiples of 8, so one step in eight carries all
# the sampled work. That kept the 1 ms MLP case under a 3 % median overhead. Pass 1 to record
# every step.
DEFAULT_FLUSH_EVERY = 50
DEFAULT_GRAD_NORM_EVERY = 8
DEFAULT_UPDATE_RATIO_EVERY = 32
DEFAULT_DISTANCE_EVERY = 16
DEFAULT_GRAD_NOISE_EVERY = 16
# Forward-hook statistics cost ~1.7 ms on the 1 ms MLP of bench/overhead.py (a few dozen small
# kernels per layer), zero-gradient counts and optimizer-state reads ~0.4 ms: taken every 128th
# and 64th step they stay near 1 % of the mean step. Both change slowly (dead units, saturation,
# Adam's second moment average ~1,000 steps), and every multiple of 8 keeps one step in eight
# carrying all the sampled work.
DEFAULT_ACTIVATION_EVERY = 128
DEFAULT_OPTIMIZER_STATE_EVERY = 64
DEFAULT_PRECISION_EVERY = 64
DEFAULT_CURVATURE_HVPS = 40  # Hessian-vector products per curvature probe (~2 backward passes each)
DEFAULT_PROBE_BATCHES = 4  # batches kept for scoring branch trials (the latest feeds curvature)
