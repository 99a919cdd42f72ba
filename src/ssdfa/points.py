"""The feedback-point marker: where a direct rule injects its signal.

Place ``ssdfa.FeedbackPoint()`` after a hidden block of a custom model (usually after its
non-linearity) and ``ssdfa.convert`` will feed e·B_l there.  Outside a converted model it is an
identity, so a model with markers trains and runs exactly as before.
"""

from torch import nn


class FeedbackPoint(nn.Module):
    """Identity marker for a feedback point; the converted model owns what happens here."""

    def forward(self, x):
        return x
