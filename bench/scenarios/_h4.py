"""Data and models shared by the loss-landscape and end-state scenarios (helper H4)."""

from __future__ import annotations

import numpy as np

from scenarios._common import Data, _split

__all__ = ["low_rank_teacher"]


def low_rank_teacher(
    seed: int, *, n: int = 2000, d_in: int = 16, d_out: int = 8, strengths=(3.0, 2.0, 1.0)
) -> Data:
    """A linear teacher y = A x of low rank with the given singular values (Saxe et al. 2014):
    whitened Gaussian inputs, no noise; a deep linear student learns one mode at a time."""
    rng = np.random.default_rng(4000 + seed)
    u, _ = np.linalg.qr(rng.standard_normal((d_out, d_out)))
    v, _ = np.linalg.qr(rng.standard_normal((d_in, d_in)))
    k = len(strengths)
    a = u[:, :k] @ np.diag(strengths) @ v[:, :k].T
    x = rng.standard_normal((n, d_in))
    y = x @ a.T
    return _split(x, y, seed, "regression")
