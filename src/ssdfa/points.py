"""Feedback points: where a direct rule injects its signal.

A point is either an ``ssdfa.FeedbackPoint()`` marker a user placed after a hidden block, or a
forward hook ssdfa puts on a block's module (a residual block's output, ``points=``) that passes
the module's output through a marker of its own.  Outside a converted model's forward pass both
are identities, so the model trains and runs as before.

A converted model's forward pushes itself on ``ACTIVE`` (a plain list, popped when the forward
ends) and a marker hands its tensor to the model on top.  Nothing is stored on the marker, so
copies of a converted model each work on their own; a list rather than a context variable lets
``torch.compile`` trace through the points without a graph break.
"""

from __future__ import annotations

from torch import nn

ACTIVE: list = []


class FeedbackPoint(nn.Module):
    """Identity marker for a feedback point; the converted model decides what happens here."""

    def forward(self, x):
        for owner in reversed(ACTIVE):  # the innermost converted model that owns this point
            if getattr(owner, "_local", False):  # update-unlocked: decided outside any graph
                out = owner._local_step(self, x)
                if out is not None:
                    return out
            elif owner.point_index(self) is not None:
                return owner._record(self, x)
        return x


class PointHook:
    """Forward hook making a module's output a feedback point (the first tensor of a tuple)."""

    def __init__(self, point: FeedbackPoint):
        self.point = point

    def __call__(self, module, inputs, output):
        if isinstance(output, tuple) and output and hasattr(output[0], "shape"):
            return (self.point(output[0]), *output[1:])
        return self.point(output)


class PointPreHook:
    """Forward pre-hook making a module's (first) input a feedback point."""

    def __init__(self, point: FeedbackPoint):
        self.point = point

    def __call__(self, module, args):
        if args and hasattr(args[0], "shape"):
            return (self.point(args[0]), *args[1:])
        return None
