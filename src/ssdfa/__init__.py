"""ssdfa: train PyTorch models with direct feedback credit assignment, and measure it.

    model = ssdfa.convert(my_model, method="ssdfa", num_classes=10, seed=0)

then train as usual.  ``METHODS`` lists the rules; ``feedback_matrices`` shows each B_l.
"""

from __future__ import annotations

from . import reference, training  # noqa: F401  (ssdfa.reference.check_gradients, ssdfa.training.run)
from ._version import __version__
from .convert import convert, feedback_matrices, feedback_parameters
from .feedback import DenseFeedback, FeedbackSpec, SparseFeedback, make_feedback
from .points import FeedbackPoint
from .rules import METHODS, RULES, Rule, register_rule
from .validate import UnsupportedModelError
from .wrapper import FeedbackModel

__all__ = [
    "feedback_parameters",
    "__version__",
    "RULES",
    "METHODS",
    "convert",
    "feedback_matrices",
    "FeedbackModel",
    "FeedbackPoint",
    "Rule",
    "register_rule",
    "make_feedback",
    "FeedbackSpec",
    "DenseFeedback",
    "SparseFeedback",
    "UnsupportedModelError",
]
