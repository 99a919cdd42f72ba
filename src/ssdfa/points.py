"""The feedback-point marker: where a direct rule injects its signal.

Place ``ssdfa.FeedbackPoint()`` after a hidden block of a custom model (usually after its
non-linearity) and ``ssdfa.convert`` will feed e·B_l there.  Outside a converted model's forward
pass it is an identity, so a model with markers trains and runs exactly as before.

A converted model's forward sets ``ACTIVE`` (a context variable, reset when the forward ends) to
its recorder; a marker hands its input to whichever recorder is active.  Nothing is attached to
the marker itself, so copies of a converted model (deepcopy, pickling) each work on their own.
"""

from contextvars import ContextVar

from torch import nn

ACTIVE: ContextVar = ContextVar("ssdfa_active_recorder", default=None)


class FeedbackPoint(nn.Module):
    """Identity marker for a feedback point; the converted model decides what happens here."""

    def forward(self, x):
        record = ACTIVE.get()
        return x if record is None else record(self, x)
