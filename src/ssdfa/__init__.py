"""ssdfa: train PyTorch models with direct feedback credit assignment, and measure it.

    model = ssdfa.convert(my_model, method="ssdfa", num_classes=10, seed=0)

then train as usual.  ``METHODS`` lists the rules; ``feedback_matrices`` shows each B_l.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .convert import convert
from .feedback import DenseFeedback, FeedbackSpec, SparseFeedback, make_feedback
from .points import FeedbackPoint
from .rules import RULES, Rule, register_rule
from .validate import UnsupportedModelError
from .wrapper import FeedbackModel

__version__ = "0.1.0"

METHODS: tuple[str, ...] = tuple(sorted(RULES))


def feedback_matrices(model: FeedbackModel) -> "OrderedDict[str, torch.Tensor]":
    """{feedback-point name: dense tensor (num_classes, neurons at that point)}, in order."""
    if not isinstance(model, FeedbackModel):
        raise TypeError("feedback_matrices expects a model returned by ssdfa.convert")
    return model.feedback_matrices()


__all__ = [
    "METHODS", "convert", "feedback_matrices", "FeedbackModel", "FeedbackPoint", "Rule",
    "register_rule", "make_feedback", "FeedbackSpec", "DenseFeedback", "SparseFeedback",
    "UnsupportedModelError",
]
