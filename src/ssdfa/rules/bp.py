"""Backpropagation under the same API: plain autograd, no feedback points used (Eq. 4-6)."""

from .base import Kind, Rule, register_rule


@register_rule("bp")
class Backprop(Rule):
    summary = "backpropagation: exact gradients through Wᵀ, for comparison"
    kind = Kind.BACKPROP
    stage_receives = "gradient"
