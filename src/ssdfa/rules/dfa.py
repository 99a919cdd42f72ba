"""Direct feedback alignment and its sparse forms (SSDFA paper, Eq. 7-11).

Every hidden feedback point l gets e·B_l; autograd then applies f'(a_l) inside the block and
forms ∂W_l = δ_lᵀ·a_{l-1}.  The three names differ only in how B_l is drawn.
"""

from ..feedback import FeedbackSpec
from .base import Kind, Rule, register_rule, sparse_spec


@register_rule("dfa")
class DFA(Rule):
    summary = "direct feedback alignment: dense random B_l per hidden layer"
    kind = Kind.DIRECT

    def feedback_spec(self, num_errors):
        return FeedbackSpec()


@register_rule("sdfa")
class SDFA(Rule):
    summary = "sparse DFA: B_l with `sparsity` (or `connections`) and `rank`; default sparsity 0.9"
    kind = Kind.DIRECT
    options = ("sparsity", "connections", "rank")

    def feedback_spec(self, num_errors):
        return sparse_spec(num_errors, self.opts, default_sparsity=0.9)


@register_rule("ssdfa")
class SSDFA(Rule):
    summary = "single-connection SDFA: one error per hidden neuron, full rank (Eq. 11)"
    kind = Kind.DIRECT

    def feedback_spec(self, num_errors):
        return FeedbackSpec(connections=1)
