"""Direct Kolen-Pollack (DKP paper, Sec. 2.3): DFA whose B_l learn.

Hidden points get e·B_l as in DFA (Eq. 3).  B_l is an ``nn.Parameter`` with gradient
∂B_l = eᵀ·h_l (Eq. 7; the step ΔB_l = -η_B·eᵀh_l - λ·B_l of Eq. 8 is the optimizer's, λ its
weight decay), where h_l is the post-activation output at point l, i.e. the input a_{ℓ-1} of the
next weight layer, and e = ∂L/∂(output) is δ_k.  For the last hidden point this is exactly the
output layer's weight gradient, so B_l is pulled toward W_out (shape (M, N) in both).
``ssdfa.feedback_parameters(model)`` gives the B_l alone, for their own optimizer or lr.
"""

from .base import Kind, Rule, register_rule, sparse_spec


@register_rule("dkp")
class DKP(Rule):
    summary = (
        "direct Kolen-Pollack: DFA with B_l learned by ∂B_l = eᵀh_l (Eq. 7-8); sparsity/connections/rank"
    )
    kind = Kind.DIRECT
    options = ("sparsity", "connections", "rank")
    needs_activations = True
    learned_feedback = True

    def feedback_spec(self, num_errors):
        return sparse_spec(num_errors, self.opts, learnable=True)

    def feedback_grads(self, e, hs, feedback, target):
        return [
            fb.grad_from(e, h.reshape(h.shape[0], -1).to(e.dtype)).to(p.dtype)
            for fb, h in zip(feedback, hs, strict=True)
            for p in fb.parameters()
        ]
