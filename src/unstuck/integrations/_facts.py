"""What the rules know about a torch run before its first step: parameter names and shapes, the
optimizer, post-norm transformer layers, parameters that no optimizer group steps and parameters
frozen with ``requires_grad=False``.

The same facts go to the run store, so ``unstuck analyze RUN_DIR`` diagnoses from what the live
rules read.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from unstuck.signals.architecture import beta2_of, momentum_of, post_norm_layers
from unstuck.signals.base import local_shard

__all__ = [
    "config_lrs",
    "frozen_params",
    "live_facts",
    "params_outside_optimizer",
    "run_facts",
]

logger = logging.getLogger("unstuck")


def run_facts(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    params: Sequence[torch.Tensor],
    probe_model: torch.nn.Module,
    lead: bool,
) -> dict[str, Any]:
    """The facts, for the evidence and the store. ``probe_model``: the module itself (not a
    DDP wrapper); ``lead``: whether this rank may warn."""
    return {
        "param_names": list(names),
        "param_ndims": [p.ndim for p in params],
        "post_norm_transformer_layers": post_norm_layers(probe_model),
        "optimizer_type": type(optimizer).__name__,
        "optimizer_beta2": beta2_of(optimizer),
        "params_not_in_optimizer": params_outside_optimizer(model, params, lead),
        **frozen_params(model),
    }


# A tensor drawn from a zero-mean uniform distribution, torch's default for Linear, Conv and
# recurrent weights (kaiming_uniform_, a=sqrt(5)) and xavier_uniform_'s for attention: its largest
# |value| is sqrt(3) = 1.732 times its RMS. Ours: 1.6-1.85 holds every draw of 256 or more
# values (the sample RMS varies by a few %); a Gaussian draw of 256 gives ~2.9, and 200 Adam
# steps on a 64x64 least-squares layer already give ~4, so trained weights fall outside.
UNIFORM_MAX_OVER_RMS = (1.6, 1.85)
UNIFORM_MIN_VALUES = 256
UNIFORM_MAX_MEAN_OVER_RMS = 0.1


def at_uniform_init(p: torch.Tensor) -> bool:
    """Whether a weight tensor still looks like a fresh uniform random draw (never trained)."""
    if p.ndim < 2 or not p.is_floating_point():
        return False
    with torch.no_grad():
        w = local_shard(p.detach()).float()  # this rank's shard under FSDP2: no collective
        if w.numel() < UNIFORM_MIN_VALUES:
            return False
        rms = float(w.pow(2).mean().sqrt())  # a host read, once, when the Guard is built
        if not rms > 0:
            return False
        low, high = UNIFORM_MAX_OVER_RMS
        top = float(w.abs().max()) / rms
        return low <= top <= high and abs(float(w.mean())) / rms < UNIFORM_MAX_MEAN_OVER_RMS


def frozen_params(model: torch.nn.Module) -> dict[str, Any]:
    """The model's tensors with ``requires_grad=False`` (``params_frozen``, with their share of
    the model's elements, ``params_frozen_share``), and those of them still at a uniform random
    initialisation (``params_frozen_untrained``, ``params_frozen_untrained_share``). Freezing is
    usually deliberate (a pretrained backbone); freezing random weights is not."""
    named = list(model.named_parameters())
    total = sum(p.numel() for _, p in named) or 1
    frozen = [(name, p) for name, p in named if not p.requires_grad]
    untrained = [(name, p) for name, p in frozen if at_uniform_init(p)]
    return {
        "params_frozen": [name for name, _ in frozen],
        "params_frozen_share": sum(p.numel() for _, p in frozen) / total,
        "params_frozen_untrained": [name for name, _ in untrained],
        "params_frozen_untrained_share": sum(p.numel() for _, p in untrained) / total,
    }


def params_outside_optimizer(
    model: torch.nn.Module, params: Sequence[torch.Tensor], lead: bool
) -> list[str]:
    """Names of trainable tensors no optimizer group steps. All of them: the optimizer belongs
    to another model (a warning through the logger); some: a ``UserWarning`` at the caller."""
    in_optimizer = {id(p) for p in params}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    missing = [name for name, p in trainable if id(p) not in in_optimizer]
    if trainable and len(missing) == len(trainable):
        # Not a few forgotten tensors: the optimizer belongs to another model (or a copy).
        if lead:
            logger.warning(
                "unstuck: the optimizer given to the Guard steps none of the model's "
                "parameters; pass the model being trained and the optimizer built from its "
                "parameters(), e.g. Guard(model, torch.optim.Adam(model.parameters()))"
            )
    elif missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        warnings.warn(
            f"unstuck: {len(missing)} parameter tensors require grad but are in no optimizer "
            f"group and will never be updated: {shown}",
            stacklevel=4,  # here ← run_facts ← Guard.__init__ ← the user's Guard(...) line
        )
    return missing


def live_facts(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Facts read at each diagnosis: ``add_momentum`` (ours) or the user may change them."""
    return {"optimizer_momentum": momentum_of(optimizer), "optimizer_beta2": beta2_of(optimizer)}


def config_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's LR as the user's config sets it (a scheduler's ``initial_lr``, else
    the group's ``lr``), without unstuck's multiplier. A host read: at a flush or close only."""
    lrs = []
    for group in optimizer.param_groups:
        try:
            lrs.append(float(group.get("initial_lr", group["lr"])))
        except (TypeError, ValueError, RuntimeError):
            return []
    return lrs
