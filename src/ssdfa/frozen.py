"""Transfer learning (SSDFA paper, Table V): a frozen feature extractor before the trained part.

``convert(..., train_only="fc")`` keeps every layer before the first Linear fixed: they run
without autograd (no graph is built, no gradient reaches them) and in eval mode (BatchNorm
statistics and dropout fixed), so the trained part sees fixed features; feedback points are
placed over the trained part only, its first Linear acting as the first layer.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import is_weight_layer
from .validate import Problem, UnsupportedModelError

TRAIN_ONLY = ("fc",)


class FrozenFeatures(nn.Sequential):
    """Layers kept as they are: run under ``torch.no_grad()`` and always in eval mode."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]"):
        super().__init__(layers)
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x):
        with torch.no_grad():
            return super().forward(x)


def split_leaves(leaves, train_only, model, method):
    """(frozen leaves, trained leaves) of a flattened Sequential for ``train_only``."""
    if train_only is None:
        return [], leaves
    if train_only not in TRAIN_ONLY:
        raise ValueError(f"train_only={train_only!r} is not known; choose one of: "
                         f"{', '.join(TRAIN_ONLY)} (or None to train every layer)")
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError([Problem(
            "", type(model).__name__, "train_only needs the model as an nn.Sequential",
            "Build it as nn.Sequential(features, nn.Flatten(), classifier) from your model's parts",
        )], method)
    first_fc = next((i for i, (_, m) in enumerate(leaves) if isinstance(m, nn.Linear)), None)
    if first_fc is None:
        raise UnsupportedModelError([Problem(
            "", "Sequential", "train_only='fc' but the model has no Linear layer",
            "Add a fully connected classifier")], method)
    late = [(p, m) for p, m in leaves[first_fc:] if is_weight_layer(m) and not isinstance(m, nn.Linear)]
    if late:
        raise UnsupportedModelError([Problem(
            p, type(m).__name__, "a convolution after the first Linear cannot be frozen as a "
            "feature extractor", "Put every convolution before the fully connected layers")
            for p, m in late], method)
    return leaves[:first_fc], leaves[first_fc:]


def frozen_module(frozen_leaves) -> FrozenFeatures | None:
    if not frozen_leaves:
        return None
    return FrozenFeatures(OrderedDict((p.replace(".", "_"), m) for p, m in frozen_leaves))
