"""The converted model: runs the user's network and routes each rule's signal into it.

Gradient convention.  For a direct rule the graph is cut at every feedback point (the point's
output is detached before the next block sees it).  The network output y is passed through
``_Inject``, an identity in the forward pass whose backward receives e = ∂L/∂y for whatever
loss the user backpropagates and gives the output block its true gradient e.  Each point's
output passes through a ``_Point`` node made as the point fires; when autograd reaches it (after
every later block) it gives point l the gradient the rule chooses (e·B_l for DFA), reshaped to
the point's shape, so only one such signal exists at a time.  One
``loss.backward()`` then lets autograd apply f' and form ∂L/∂W inside every block, and no block
ever computes a gradient with respect to its input: the Wᵀ·δ chain BP needs is never built.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
from torch import nn

from .points import ACTIVE
from .rules import Rule


class _Signals:
    """What the points of one forward pass share: the rule, their feedback, and e once known."""

    def __init__(self, owner, target):
        self.owner, self.target = owner, target
        self.order: tuple[int, ...] = ()  # feedback index of each point, in firing order
        self.shapes: list[torch.Size] = []  # each point's output shape, set by _Inject
        self.e: torch.Tensor | None = None

    def signal(self, k: int) -> torch.Tensor:
        """The gradient the rule injects at the k-th point that fired (e·B_l for DFA)."""
        fb = self.owner.feedback[self.order[k]]
        return self.owner.rule.point_signals(self.e, [fb], [self.shapes[k]], self.target)[0]


class _Point(torch.autograd.Function):
    """Identity on h_l; in backward, computes point l's signal from the stored error e.

    Created as the point fires, so autograd reaches it only after every later block is done:
    the signals exist one at a time, as BP's δ does, not all at once.
    """

    @staticmethod
    def forward(ctx, h, signals, k):
        ctx.signals, ctx.k = signals, k
        return h.view_as(h)

    @staticmethod
    def backward(ctx, _placeholder):
        return ctx.signals.signal(ctx.k), None, None


class _Inject(torch.autograd.Function):
    """Identity on y; on the way back, e -> (e for y, a free placeholder per point, grads of B).

    It stores e for the points' :class:`_Point` nodes, which compute the actual signals.
    """

    @staticmethod
    def forward(ctx, signals, y, *tensors):
        ctx.signals = signals
        hs = tensors[: len(signals.order)]
        signals.shapes = [h.shape for h in hs]
        ctx.kinds = [(h.dtype, h.device) for h in hs]
        if signals.owner.rule.needs_activations:
            ctx.save_for_backward(*hs)
        return y.clone()

    @staticmethod
    def backward(ctx, grad_y):
        signals: _Signals = ctx.signals
        owner: FeedbackModel = signals.owner
        rule = owner.rule
        e = grad_y.reshape(grad_y.shape[0], -1)  # (batch, M)
        signals.e = e
        marks = [torch.zeros((), dtype=dtype, device=device).expand(shape)  # stride 0: free
                 if ctx.needs_input_grad[2 + k] else None
                 for k, (shape, (dtype, device)) in enumerate(zip(signals.shapes, ctx.kinds))]
        extra = []
        if owner.rule_tensors():
            hs = ctx.saved_tensors if rule.needs_activations else None
            feedback = [owner.feedback[i] for i in signals.order]
            grads = rule.feedback_grads(e, hs, feedback, signals.target)  # in firing order
            # back to the order of rule_tensors() (storage order), which _Inject received
            by_id = {id(p): g for p, g in zip((p for fb in feedback for p in fb.parameters()), grads)}
            extra = [by_id.get(id(p)) for p in owner.rule_tensors()]
        return (None, grad_y, *marks, *extra)


class FeedbackModel(nn.Module):
    """A network trained with a credit-assignment rule; build it with :func:`ssdfa.convert`.

    Forward returns the network's output unchanged.  ``feedback`` holds one module per feedback
    point (:mod:`ssdfa.feedback`), in the order the points fire; it is part of ``state_dict``.
    """

    def __init__(self, net: nn.Module, rule: Rule, points: list[tuple[str, nn.Module]],
                 num_classes: int | None = None):
        super().__init__()
        self.net = net
        self.rule = rule
        self.point_names = [name for name, _ in points]
        self.num_classes = num_classes
        self.feedback = nn.ModuleList()
        # a plain list (not registered twice): deepcopy maps it onto the copied net's points
        self._points = [point for _, point in points]
        self._cut = True

    # -- the forward pass ---------------------------------------------------------------------
    def forward(self, *args, target: torch.Tensor | None = None, **kwargs):
        """Run the network; for a direct rule in grad mode, arm the feedback injection.

        ``target`` (class indices or one-hot) is only read by rules that feed the target back.
        """
        if not self.rule.direct or not torch.is_grad_enabled() or not self._cut:
            return self.net(*args, **kwargs)
        local = self.rule.local and self.training  # update-unlocked rules (DRTP unlocked=True)
        if local and target is None:
            raise ValueError(
                f"method {self.rule.name!r} with unlocked=True trains each block during the "
                "forward pass and needs the target: call model(x, target=y), or evaluate under "
                "torch.no_grad() or model.eval()")
        index = {id(p): i for i, p in enumerate(self._points)}
        tape: list = []
        signals = _Signals(self, target)

        def record(point, h):
            i = index.get(id(point))
            if i is None:  # a marker of some other model
                return h
            if local:  # this block learns now and its graph is freed at once
                self._local_update(i, h, target)
                tape.append((i, None))
                return h.detach()
            if self.rule.inject and h.requires_grad:
                h = _Point.apply(h, signals, len(tape))  # k-th point: its signal comes later
            tape.append((i, h))
            return h.detach()  # cut: the next block never sends a gradient back here

        token = ACTIVE.set(record)
        try:
            y = self.net(*args, **kwargs)
        finally:
            ACTIVE.reset(token)
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"a directly trained model must return one tensor of shape (batch, classes), "
                f"got {type(y).__name__}"
            )
        order = tuple(i for i, _ in tape)
        if len(set(order)) != len(order):
            raise RuntimeError(
                "a feedback point fired twice in one forward pass; each ssdfa.FeedbackPoint must "
                "be used once (create one marker per hidden block)"
            )
        if not self.rule.inject:  # shallow, unlocked DRTP: nothing enters during backward
            return y
        hs = [h for _, h in tape]
        extra = self.rule_tensors()
        if not hs and not extra:
            return y
        signals.order = order
        return _Inject.apply(signals, y, *hs, *extra)

    def _local_update(self, idx: int, h: torch.Tensor, target):
        """Backpropagate the rule's forward-time signal into the block that produced ``h``."""
        if not h.requires_grad:
            return
        h.backward(self.rule.local_signal(self.feedback[idx], target, h))

    def rule_tensors(self) -> list[torch.Tensor]:
        """Learnable feedback tensors handed to the injection (empty unless B learns)."""
        return [p for p in self.feedback.parameters()]

    # -- inspection and control ---------------------------------------------------------------
    def feedback_matrices(self) -> "OrderedDict[str, torch.Tensor]":
        """{point name: dense B_l of shape (classes, neurons at the point)}, in firing order."""
        return OrderedDict(
            (name, fb.dense()) for name, fb in zip(self.point_names, self.feedback)
        )

    @contextlib.contextmanager
    def backprop(self):
        """Within this block the model computes exact BP gradients (for alignment analyses)."""
        old, self._cut = self._cut, False
        try:
            yield self
        finally:
            self._cut = old

    def unwrap(self) -> nn.Module:
        """The plain network (parameters shared, not copied); its markers are identities."""
        return self.net

    def extra_repr(self):
        return f"rule={self.rule!r}, points={self.point_names}"
