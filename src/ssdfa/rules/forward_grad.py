"""Forward gradient (Baydin et al. 2022, "Gradients without backpropagation", Algorithm 1).

One direction v ~ N(0, I) over all parameters per step, one forward-mode pass for ∂y/∂θ·v, and
g = (∇L·v)·v for every parameter, the output layer included: unbiased (E[v vᵀ] = I) with a
variance that grows with the parameter count, the baseline FDFA improves on.  The mechanics are
in ``ssdfa.forward_mode.ForwardGradientModel``.
"""

from .base import Kind, Rule, register_rule


@register_rule("forward_grad")
class ForwardGradient(Rule):
    summary = "forward gradient (Baydin et al. 2022): g = (∇L·v)v, v ~ N(0, I), one forward-mode pass"
    kind = Kind.FORWARD_GRADIENT  # convert builds a ForwardGradientModel: no points, no B
    stage_receives = "tangent"
