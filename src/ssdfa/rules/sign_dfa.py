"""Error-sign DFA, "sDFA" in the DRTP paper (Sec. 2.1); named ``sign_dfa`` apart from sparse DFA.

Every hidden point gets sign(e)·B_l.  The sign has no magnitude, so it is divided by the batch
size, as a mean-reduced loss divides e: the same learning rates then suit DFA and sign-DFA.
"""

from .base import Kind, Rule, register_rule, sparse_spec


@register_rule("sign_dfa")
class SignDFA(Rule):
    summary = "error-sign DFA (DRTP paper's sDFA): sign(e)/batch through B_l; sparsity/connections/rank"
    kind = Kind.DIRECT
    options = ("sparsity", "connections", "rank")
    scale_free = True

    def feedback_spec(self, num_errors):
        return sparse_spec(num_errors, self.opts)

    def error_signal(self, e, target):
        return e.sign() / e.shape[0]
