"""The layer registry of the layer-wise rules: which wrapper trains which layer type.

``@register_layer(nn.Linear)`` on a :class:`LayerFeedback` subclass makes FA/KP (and the sign
rules) train that layer type; ``linear.py`` and ``conv.py`` register the built-in ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LAYERS: dict[type[nn.Module], type[LayerFeedback]] = {}


def register_layer(layer_type: type[nn.Module]):
    """Class decorator: ``cls`` trains ``layer_type`` layers with a substitute backward matrix."""

    def deco(cls):
        if layer_type in LAYERS:
            raise ValueError(f"{layer_type.__name__} registered twice")
        LAYERS[layer_type] = cls
        return cls

    return deco


class LayerFeedback(nn.Module):
    """Runs ``layer`` forward as usual; in backward, uses ``feedback`` (weight-shaped) for ∂x.

    ``layer`` is the user's module (parameters shared, not copied); ``feedback`` is B_l.
    Subclasses implement ``forward`` with an autograd Function.
    """

    sign: str | None = None  # set by the sign-symmetric wrappers (``sign.py``)

    def __init__(self, layer: nn.Module, feedback: torch.Tensor | None, learnable: bool = False):
        super().__init__()
        if feedback is not None and feedback.shape != layer.weight.shape:
            raise ValueError(
                f"feedback shape {tuple(feedback.shape)} differs from the weight's "
                f"{tuple(layer.weight.shape)}"
            )
        self.layer = layer
        self.exact = False  # True inside FeedbackModel.backprop(): plain layer, exact BP
        if learnable:
            self.feedback = nn.Parameter(feedback)
        else:
            self.register_buffer("feedback", feedback)

    def backward_weight(self) -> torch.Tensor:
        """The matrix this layer's backward uses in W's place: B itself for FA and KP (a
        parameter for KP, so it receives its gradient); sign rules build it from W (``sign.py``)."""
        return self.feedback

    def extra_repr(self):
        kind = "learned" if isinstance(self.feedback, nn.Parameter) else "fixed"
        return f"feedback={kind} {tuple(self.feedback.shape)}"


def draw_feedback(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """B_l ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the law of PyTorch's default weight init."""
    fan_in = weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    b = (torch.rand(weight.shape, generator=generator) * 2 - 1) * bound
    return b.to(device=weight.device, dtype=weight.dtype)


def _registered(layer: nn.Module):
    """The wrapper class for ``layer``'s type or a base type whose forward it keeps, else None."""
    for base in type(layer).__mro__:
        if base in LAYERS:
            if type(layer).forward is not base.forward:
                raise ValueError(
                    f"{type(layer).__name__} subclasses {base.__name__} but has its own forward, "
                    f"which a layer-wise rule would bypass; use a plain {base.__name__}"
                )
            return LAYERS[base]
    return None


def is_wrappable(layer: nn.Module) -> bool:
    return _registered(layer) is not None
