"""Feedback points: where a direct rule injects its signal.

A point is either an ``ssdfa.FeedbackPoint()`` marker a user placed after a hidden block, or a
wrap of a block module's forward (a residual block's output, ``points=``; :class:`OutputPoint`)
that passes the module's output through a marker of its own.  Outside a converted model's
forward pass both are identities, so the model trains and runs as before.

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


class ForwardWrap:
    """``module.forward`` replaced by a callable that runs the forward it replaced, with a
    point (or head) applied around it: what a forward hook did, without nn.Module's hook
    dispatch, which cost 3-5 % of a launch-bound transformer step (bench/README.md, issue 21).

    It keeps the module, not its bound method: a pickled bound method would be looked up again
    by name on load and find this wrapper.  A forward set on the instance before (accelerate's
    hooks, another wrap) is kept and called."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.inner = module.__dict__.get("forward")  # an instance-level forward already there
        module.forward = self

    @property
    def __wrapped__(self):  # what inspect.signature and tools that unwrap see
        return self.inner if self.inner is not None else type(self.module).forward.__get__(self.module)

    def run(self, *args, **kwargs):
        if self.inner is not None:
            return self.inner(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)


class _PointWrap(ForwardWrap):
    """A forward wrap that passes one tensor through a point's marker."""

    def __init__(self, module: nn.Module, point: FeedbackPoint):
        self.point = point
        super().__init__(module)


class OutputPoint(_PointWrap):
    """A module's output (the first tensor of a tuple) made a feedback point."""

    def __call__(self, *args, **kwargs):
        output = self.run(*args, **kwargs)
        if isinstance(output, tuple) and output and hasattr(output[0], "shape"):
            return (self.point(output[0]), *output[1:])
        return self.point(output)


class InputPoint(_PointWrap):
    """A module's (first) input made a feedback point."""

    def __call__(self, *args, **kwargs):
        if args and hasattr(args[0], "shape"):
            args = (self.point(args[0]), *args[1:])
        return self.run(*args, **kwargs)
