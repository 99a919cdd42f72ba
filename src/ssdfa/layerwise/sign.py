"""Sign-symmetric feedback: B_l built from the signs of the current weights at every step.

Liao, Leibo & Poggio (2016), "How important is weight symmetry in backpropagation?", and
BioTorch's naming (Sanfiz & Akrout 2021): each layer hands ``δ·B`` to its input, as FA does
(``__init__.py``), with

- ``usf``  (uniform sign-concordant):  B = c · sign(W), c = sqrt(2 / (fan_in + fan_out)), the
  Xavier-normal std of the layer, the scale Xiao et al. (2018) and BioTorch use so that the
  backward signal keeps the size of a freshly initialised layer's;
- ``frsf`` (fixed random magnitude):   B = |R| ⊙ sign(W), R drawn once, R ~ U(±1/sqrt(fan_in))
  (the law FA's B and PyTorch's default weights follow);
- ``brsf`` (batchwise random magnitude): the same with |R| drawn again at every training forward
  pass (every batch), from a per-layer seed and a counter kept as buffers, so the draws are the
  same on every DDP replica and after a resume.

sign(W) is read from the weight at the forward pass, so B follows W through training; no gradient
flows to B, and W's own gradient is exact (δᵀ·x), as in FA.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..host_scalars import host_scalars
from .conv import Conv2dFeedback
from .linear import LinearFeedback

SIGN_RULES = ("usf", "frsf", "brsf")


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def usf_scale(weight: torch.Tensor) -> float:
    """uSF's c: sqrt(2 / (fan_in + fan_out)) (Xavier-normal std of the layer)."""
    fan_in, fan_out = _fans(weight)
    return math.sqrt(2.0 / (fan_in + fan_out))


def magnitude_bound(weight: torch.Tensor) -> float:
    """|R| ~ U(0, 1/sqrt(fan_in)): the absolute value of FA's U(±1/sqrt(fan_in)) draw."""
    return 1.0 / math.sqrt(_fans(weight)[0])


class _SignFeedback:
    """Mixin for a registered LayerFeedback class: B from sign(W) (module docstring)."""

    def _setup(self, kind: str, generator: torch.Generator):
        w = self.layer.weight.detach()
        self.sign = kind
        self.scale = usf_scale(w) if kind == "usf" else magnitude_bound(w)
        if kind == "brsf":
            seed = int(torch.randint(0, 2**31, (1,), generator=generator))
            self.register_buffer("seed", torch.tensor(seed, dtype=torch.long, device=w.device))
            self.register_buffer("draws", torch.zeros((), dtype=torch.long, device=w.device))
        if kind in ("frsf", "brsf"):
            r = torch.rand(w.shape, generator=generator) * self.scale
            self.feedback = r.to(device=w.device, dtype=w.dtype)

    def backward_weight(self) -> torch.Tensor:
        w = self.layer.weight.detach()
        if self.sign == "usf":
            return w.sign() * self.scale
        return self.feedback.to(w.dtype) * w.sign()

    @torch.compiler.disable
    @torch.no_grad()
    def redraw(self):
        """brSF: a fresh |R| for this batch, from (seed, number of draws so far)."""
        w = self.layer.weight
        gen = torch.Generator(device=w.device)
        host = host_scalars(self)  # seed and count without reading the device's tensors
        draws = host.increment(self, "draws")
        gen.manual_seed((host.get(self, "seed") * 1_000_003 + draws) % 2**62)
        self.feedback.copy_(torch.rand(w.shape, generator=gen, device=w.device, dtype=w.dtype) * self.scale)

    def forward(self, x):
        if self.sign == "brsf" and self.training and not self.exact and torch.is_grad_enabled():
            self.redraw()
        return super().forward(x)

    def extra_repr(self):
        what = {
            "usf": f"B = {self.scale:.3g}·sign(W)",
            "frsf": "B = |R|⊙sign(W), R fixed",
            "brsf": "B = |R|⊙sign(W), R redrawn every batch",
        }[self.sign]
        return f"feedback={self.sign}: {what} {tuple(self.layer.weight.shape)}"


class SignLinearFeedback(_SignFeedback, LinearFeedback):
    """nn.Linear whose backward sends δ·B with B from sign(W)."""


class SignConv2dFeedback(_SignFeedback, Conv2dFeedback):
    """nn.Conv2d whose backward sends δ convolved with B from sign(W)."""


_SIGN_CLASSES = {LinearFeedback: SignLinearFeedback, Conv2dFeedback: SignConv2dFeedback}


def sign_wrap(cls, layer: nn.Module, generator: torch.Generator, kind: str) -> nn.Module:
    """``layer`` wrapped by the sign-symmetric form of its registered wrapper ``cls``."""
    if kind not in SIGN_RULES:
        raise ValueError(f"unknown sign-symmetric rule {kind!r}; choose one of {', '.join(SIGN_RULES)}")
    if cls not in _SIGN_CLASSES:
        raise ValueError(
            f"{type(layer).__name__} has no sign-symmetric backward; supported: nn.Linear, nn.Conv2d"
        )
    mod = _SIGN_CLASSES[cls](layer, None)
    mod._setup(kind, generator)
    return mod
