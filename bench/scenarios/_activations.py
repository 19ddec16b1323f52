"""Models shared by the activation-group scenarios (dead ReLU, saturation, init, input scale)."""

from __future__ import annotations

import torch
from torch import nn


def small_cnn(channels: tuple[int, ...] = (16, 32, 32, 32), n_out: int = 10) -> nn.Sequential:
    """A plain (no norm layers) 3×3 CNN over 8×8 one-channel digits, then a linear head."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 8, 8))]
    width = 1
    for c in channels:
        layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU(inplace=True)]
        width = c
    layers += [nn.Flatten(), nn.Linear(width * 64, n_out)]
    return nn.Sequential(*layers)


def init_normal_(model: nn.Module, std: float, *, zero_bias: bool = True) -> nn.Module:
    """Draw every Linear/Conv weight from normal(0, std): the fixed-std init of many tutorials."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if zero_bias and module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def hidden_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers of a model except the last (the output layer)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[:-1]


@torch.no_grad()
def fill_hidden_bias_(model: nn.Module, value: float) -> nn.Module:
    for layer in hidden_linears(model):
        layer.bias.fill_(value)
    return model
