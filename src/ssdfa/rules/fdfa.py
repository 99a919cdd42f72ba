"""Forward direct feedback alignment (Bacho & Chu 2024, Neural Networks; code Florian-BACHO/FDFA).

Hidden points get e·B_l as in DFA (SSDFA paper Eq. 8-9), but B_l is no fixed random matrix: each
training forward perturbs every point's output with u_l ~ N(0, I) in forward mode, reads the
output's directional derivative t = Σ_k (∂y/∂h_k)·u_k, and moves B_l toward the batch mean of
t·u_lᵀ, whose expectation is the output Jacobian ∂y/∂h_l, with momentum β (option ``momentum``,
default 0.99): B_l ← β·B_l + (1-β)·mean t·u_lᵀ.  As B_l approaches ∂y/∂h_l, e·B_l approaches
BP's gradient at h_l without any backward chain.  Mechanics: ``ssdfa.forward_mode.FDFAModel``.
"""

from ..feedback import FeedbackConfigError, FeedbackSpec
from .base import Kind, Rule, register_rule


@register_rule("fdfa")
class FDFA(Rule):
    summary = (
        "forward DFA (Bacho & Chu 2024): B_l ← β·B_l + (1-β)·mean (∂y/∂h_l·u)uᵀ by forward mode; momentum"
    )
    options = ("momentum",)
    kind = Kind.FORWARD_FEEDBACK  # convert builds an FDFAModel (a FeedbackModel with dual tensors)
    stage_receives = "tangent"  # t needs the forward-mode tangents of every later block
    default_momentum = 0.99

    def __init__(self, **opts):
        super().__init__(**opts)
        beta = opts.get("momentum", self.default_momentum)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise FeedbackConfigError(f"momentum must be a number in [0, 1), got {beta!r}")

    def feedback_spec(self, num_errors):
        return FeedbackSpec()
