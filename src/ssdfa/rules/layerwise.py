"""Feedback alignment and Kolen-Pollack: layer-by-layer rules (DKP paper, Eq. 5-6).

Each Linear/Conv2d hands ``δ·B_l`` to its input instead of ``δ·W_l`` (``ssdfa.layerwise``);
the rest of the chain is autograd.  FA keeps B_l fixed.  KP makes B_l a parameter whose
gradient is W_l's own (B_l is stored in W_l's shape), so with the optimizer's weight decay λ
on both, B_l - W_l shrinks by (1 - ηλ) per step and B_l converges to W_l (Eq. 6).
"""

from .base import Kind, Rule, register_rule


@register_rule("fa")
class FA(Rule):
    summary = "feedback alignment: fixed random B_l in place of W_l in each layer's backward"
    kind = Kind.LAYERWISE
    stage_receives = "layer_feedback"
    learnable = False


@register_rule("kp")
class KP(Rule):
    summary = "Kolen-Pollack: as fa, B_l receives W_l's update (use weight decay on both)"
    kind = Kind.LAYERWISE
    stage_receives = "layer_feedback"
    learnable = True
