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
from collections import OrderedDict

import torch
from torch import nn

from ..layers import clone_tree
from ..wrapper import FeedbackModel
from . import conv, linear  # noqa: F401  (registration side effect)
from .registry import LAYERS, LayerFeedback, _registered, draw_feedback, is_wrappable, register_layer
from .sign import sign_wrap


def wrap(layer: nn.Module, generator: torch.Generator, learnable: bool, sign: str | None = None) -> nn.Module:
    """The registered wrapper for ``layer`` with a freshly drawn B, or ``layer`` if unregistered.

    ``sign`` ("usf", "frsf", "brsf"): B is built from sign(W) at every step (``sign.py``).
    """
    cls = _registered(layer)
    if cls is None:
        return layer
    if sign is not None:
        return sign_wrap(cls, layer, generator, sign)
    return cls(layer, draw_feedback(layer.weight.detach(), generator), learnable=learnable)


class LayerwiseModel(FeedbackModel):
    """A network trained by a layer-wise rule (FA, KP); each weight layer holds its own B_l."""

    def __init__(self, net, rule, layer_names: list[str], num_classes=None):
        super().__init__(net, rule, [], num_classes=num_classes)
        self.layer_names = list(layer_names)

    def _layers(self):
        return [
            (
                n,
                self.net.get_submodule(n.replace(".", "_"))
                if isinstance(self.net, nn.Sequential)
                else self.net.get_submodule(n),
            )
            for n in self.layer_names
        ]

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
            net = clone_tree(self.net)
            for name, _ in self._layers():
                parent, _, leaf = name.rpartition(".")
                setattr(net.get_submodule(parent), leaf, net.get_submodule(name).layer)
            return net
        return nn.Sequential(
            OrderedDict(
                (k, m.layer if isinstance(m, LayerFeedback) else m) for k, m in self.net.named_children()
            )
        )

    def feedback_parameters(self) -> list[nn.Parameter]:
        return [
            m.feedback for _, m in self._layers() if isinstance(getattr(m, "feedback", None), nn.Parameter)
        ]

    def extra_repr(self):
        return f"rule={self.rule!r}, layers={self.layer_names}"


__all__ = [
    "LAYERS",
    "LayerwiseModel",
    "LayerFeedback",
    "register_layer",
    "wrap",
    "draw_feedback",
    "is_wrappable",
]
