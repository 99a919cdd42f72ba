"""Layer-wise feedback (FA, KP): a matrix B_l replaces W_l in each layer's own backward pass.

Unlike the direct rules, nothing is cut: the error travels back layer by layer through ordinary
autograd, except that each weight layer hands back ``δ·B_l`` instead of ``δ·W_l`` for its input
(DKP paper, Eq. 5).  Its weight and bias gradients are the usual ones.  B_l is stored with the
weight's own shape, so for Kolen-Pollack "B receives W's update" means ``grad_B == grad_W``.

How each layer type does this lives in one small file per layer family (``linear.py``,
``conv.py``), registered with ``@register_layer(nn.Linear)``: adding a layer type is adding a file.
The converted network holds a :class:`LayerFeedback` module in place of every registered layer;
it shares the user's weight and bias and owns B (a buffer, or a parameter when B learns).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import torch
from torch import nn

from ..wrapper import FeedbackModel

LAYERS: dict[type[nn.Module], type["LayerFeedback"]] = {}


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
            raise ValueError(f"feedback shape {tuple(feedback.shape)} differs from the weight's "
                             f"{tuple(layer.weight.shape)}")
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
                    f"which a layer-wise rule would bypass; use a plain {base.__name__}")
            return LAYERS[base]
    return None


def wrap(layer: nn.Module, generator: torch.Generator, learnable: bool,
         sign: str | None = None) -> nn.Module:
    """The registered wrapper for ``layer`` with a freshly drawn B, or ``layer`` if unregistered.

    ``sign`` ("usf", "frsf", "brsf"): B is built from sign(W) at every step (``sign.py``).
    """
    cls = _registered(layer)
    if cls is None:
        return layer
    if sign is not None:
        from .sign import sign_wrap

        return sign_wrap(cls, layer, generator, sign)
    return cls(layer, draw_feedback(layer.weight.detach(), generator), learnable=learnable)


def is_wrappable(layer: nn.Module) -> bool:
    return _registered(layer) is not None


class LayerwiseModel(FeedbackModel):
    """A network trained by a layer-wise rule (FA, KP); each weight layer holds its own B_l."""

    def __init__(self, net, rule, layer_names: list[str], num_classes=None):
        super().__init__(net, rule, [], num_classes=num_classes)
        self.layer_names = list(layer_names)

    def _layers(self):
        return [(n, self.net.get_submodule(n.replace(".", "_")) if isinstance(self.net, nn.Sequential)
                 else self.net.get_submodule(n)) for n in self.layer_names]

    def feedback_matrices(self):
        """{layer name: B_l with the weight's shape}, used in place of W_l in the backward pass
        (for the sign rules, the one the last training forward built)."""
        return OrderedDict((n, m.backward_weight().detach().clone()) for n, m in self._layers())

    @contextlib.contextmanager
    def backprop(self):
        """Within this block every layer backpropagates through its own W (exact BP)."""
        wrappers = [m for _, m in self._layers()]
        old = [m.exact for m in wrappers]
        for m in wrappers:
            m.exact = True
        try:
            yield self
        finally:
            for m, o in zip(wrappers, old):
                m.exact = o

    def unwrap(self) -> nn.Module:
        """The plain network: each wrapper replaced by the user's layer (parameters shared)."""
        if not isinstance(self.net, nn.Sequential):
            from ..convert import clone_tree

            net = clone_tree(self.net)
            for name, _ in self._layers():
                parent, _, leaf = name.rpartition(".")
                setattr(net.get_submodule(parent), leaf, net.get_submodule(name).layer)
            return net
        return nn.Sequential(OrderedDict(
            (k, m.layer if isinstance(m, LayerFeedback) else m) for k, m in self.net.named_children()))

    def feedback_parameters(self) -> list[nn.Parameter]:
        return [m.feedback for _, m in self._layers() if isinstance(getattr(m, "feedback", None), nn.Parameter)]

    def extra_repr(self):
        return f"rule={self.rule!r}, layers={self.layer_names}"


from . import conv, linear  # noqa: E402,F401  (registration side effect)

__all__ = ["LAYERS", "LayerwiseModel", "LayerFeedback", "register_layer", "wrap", "draw_feedback", "is_wrappable"]
