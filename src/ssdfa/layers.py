"""Which modules ssdfa knows how to train through, by role.

A *weight layer* (Linear, Conv2d) starts a block; everything in ``PASS_THROUGH`` (activations,
pooling, dropout, normalisation, reshapes) belongs to the block of the weight layer before it.
Autograd handles both inside a block: the rules only decide what gradient reaches a block's
output (the feedback point), so adding a layer type here is all a new layer needs.
"""

from __future__ import annotations

import copy

from torch import nn

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

PASS_THROUGH: tuple[type[nn.Module], ...] = (
    # activations (f in Eq. 1-3; autograd applies f')
    nn.Tanh,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    nn.Hardtanh,
    nn.Identity,
    # pooling
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    # regularisation and normalisation
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    # shape
    nn.Flatten,
    nn.Unflatten,
    # output heads (only sensible after the last weight layer)
    nn.LogSoftmax,
    nn.Softmax,
)


def is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, WEIGHT_LAYERS)


def is_pass_through(module: nn.Module) -> bool:
    return isinstance(module, PASS_THROUGH)


def supported_names() -> str:
    return ", ".join(t.__name__ for t in WEIGHT_LAYERS + PASS_THROUGH)


def clone_tree(module: nn.Module) -> nn.Module:
    """New module objects with the same parameters, buffers and hooks (copied containers), so a
    layer can be swapped in the copy without touching the user's model."""
    new = copy.copy(module)
    new.__dict__ = dict(module.__dict__)
    for key, value in module.__dict__.items():
        if isinstance(value, dict) and key.startswith("_"):
            new.__dict__[key] = type(value)(value)
    new._modules = type(module._modules)(
        (k, None if m is None else clone_tree(m)) for k, m in module._modules.items()
    )
    return new
