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


def feedback_parameters(model: FeedbackModel) -> list[torch.nn.Parameter]:
    """The learned feedback matrices alone (DKP's B_l, KP's B_l), for their own optimizer.

    They are also in ``model.parameters()``; to give them another learning rate or weight
    decay, build param groups: ``fb = ssdfa.feedback_parameters(model)`` and the rest as
    ``[p for p in model.parameters() if all(p is not q for q in fb)]``.  Empty for fixed B.
    """
    if not isinstance(model, FeedbackModel):
        raise TypeError("feedback_parameters expects a model returned by ssdfa.convert")
    if hasattr(model, "feedback_parameters"):
        return model.feedback_parameters()
    return list(model.feedback.parameters())


__all__ = [
    "feedback_parameters",
    "METHODS", "convert", "feedback_matrices", "FeedbackModel", "FeedbackPoint", "Rule",
    "register_rule", "make_feedback", "FeedbackSpec", "DenseFeedback", "SparseFeedback",
    "UnsupportedModelError",
]

# submodules the README uses as attributes (ssdfa.reference.check_gradients, ssdfa.training.run);
# imported last, as they use the names above
from . import reference as reference  # noqa: E402
from . import training as training  # noqa: E402
