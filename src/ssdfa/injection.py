"""The autograd Functions that carry a rule's signal into the network (``ssdfa.wrapper``).

Two ways, the same numbers (DFA paper Eq. 3: δ_l = (e·B_l) ⊙ f'(a_l), f' applied by the block's
own backward):

- **at once** (default, one head): :class:`InjectAll` is an identity on the head's output z that
  also takes every point's output h_l.  Its one backward turns ∂L/∂z into e, forms every
  point's signal with one stacked product (:class:`ssdfa.feedback.FeedbackGroup`) and returns
  each straight to its h_l: one Python backward per step and no per-point tensors, which is what
  a launch-bound step (small batches, GPUs) pays for.  All signals exist at once.
- **per block** (several heads, or ``signals="per_block"``): at point l, :class:`Point` taps h_l
  and returns a zero *carrier* shaped like the output; :class:`Inject` hands e to every carrier
  and each ``Point`` backward forms its own signal when autograd reaches it, after every later
  block, so one signal is alive at a time, as BP holds one δ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_error(softmax: str, grad_z: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """e = ∂L/∂(logits) from ∂L/∂z for a head returned behind a last-dim (log_)softmax."""
    if softmax == "log_softmax":  # z = log p: ∂L/∂(logits) = g - p·Σg
        return grad_z - z.exp() * grad_z.sum(-1, keepdim=True)
    if softmax == "softmax":  # z = p: ∂L/∂(logits) = p·(g - Σ g·p)
        return z * (grad_z - (grad_z * z).sum(-1, keepdim=True))
    return grad_z


def error_rows(e, layout: str, target, point_shape):
    """(e as (rows, M), the target per row, rows of the point's signal): a row per example, or
    per position for token-level points (Launay et al. 2020)."""
    e2 = e.reshape(-1, e.shape[-1]) if layout == "token" else e.reshape(e.shape[0], -1)
    if layout == "token" and target is not None:
        target = target.reshape(e2.shape[0], *target.shape[2:])
    rows = point_shape[0] if layout == "broadcast" else e2.shape[0]
    return e2, target, rows


def to_point(signal, layout: str, shape):
    """A (rows, N) signal in its point's shape; under a (batch, M) head every position of a
    (batch, seq, d) point gets its example's signal."""
    return signal.unsqueeze(1).expand(shape) if layout == "broadcast" else signal.view(shape)


def point_rows(h, layout: str, rows: int):
    """h_l as (rows, N), the activations a learned B's gradient eᵀh reads."""
    return h.sum(1) if layout == "broadcast" else h.reshape(rows, -1)


class InjectAll(torch.autograd.Function):
    """Identity on the head's output z that takes every point's output h_l; in backward, z's
    true gradient and, for each h_l, its rule's signal, all from one stacked product."""

    @staticmethod
    def forward(ctx, owner, softmax, z, target, points, *tensors):
        n = len(points)
        ctx.owner, ctx.softmax, ctx.target, ctx.points = owner, softmax, target, points
        ctx.shapes = [h.shape for h in tensors[:n]]
        keep = [z] if softmax != "none" else []
        if owner.rule.needs_activations:
            keep += tensors[:n]
        ctx.save_for_backward(*keep)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad_z):
        owner, rule, n = ctx.owner, ctx.owner.rule, len(ctx.points)
        saved = ctx.saved_tensors
        z = saved[0] if ctx.softmax != "none" else None
        e = logit_error(ctx.softmax, grad_z, z)
        layout = owner.layout[ctx.points[0]]  # one layout per model (``FeedbackModel._build``)
        e2, target, rows = error_rows(e, layout, ctx.target, ctx.shapes[0])
        group = owner.feedback_group(ctx.points)
        flat = [torch.Size((rows, fb.num_neurons)) for fb in group]
        signals = rule.point_signals(e2, group, flat, target)
        if rule.scale_free:  # sign(e), y*: carry the loss scale this backward applied
            signals = [owner.scaled(s) for s in signals]
        grads_h = [to_point(s, layout, shape) for s, shape in zip(signals, ctx.shapes)]
        grads_b = [None] * (len(ctx.needs_input_grad) - 5 - n)
        if any(ctx.needs_input_grad[5 + n :]):
            hs = saved[len(saved) - n :]
            grads_b = rule.feedback_grads(e2, [point_rows(h, layout, rows) for h in hs], group, target)
        return (None, None, grad_z, None, None, *grads_h, *grads_b)


class Point(torch.autograd.Function):
    """Taps h_l: returns a zero carrier (batch[, seq], ΣM_h); in backward, the carrier's gradient
    is the heads' errors side by side, and h_l gets Σ_h signal(e_h)·B_{l,h} (and B its gradient)."""

    @staticmethod
    def forward(ctx, h, owner, i, carrier_shape, target, *params):
        ctx.owner, ctx.i, ctx.target, ctx.shape = owner, i, target, h.shape
        if owner.rule.needs_activations:
            ctx.save_for_backward(h)
        return h.new_zeros(carrier_shape)

    @staticmethod
    def backward(ctx, e):
        owner = ctx.owner
        rule, layout = owner.rule, owner.layout[ctx.i]
        e2, target, rows = error_rows(e, layout, ctx.target, ctx.shape)
        fbs = owner.point_feedback(ctx.i)
        slices = owner.error_slices(e2)
        grad_h = None
        if ctx.needs_input_grad[0]:
            flat = torch.Size((rows, fbs[0].num_neurons))
            grad_h = sum(rule.point_signals(eh, [fb], [flat], target)[0] for eh, fb in zip(slices, fbs))
            if rule.scale_free:  # sign(e), y*: carry the loss scale this backward applied
                grad_h = owner.scaled(grad_h)
            grad_h = to_point(grad_h, layout, ctx.shape)
        grads = [None] * (len(ctx.needs_input_grad) - 5)
        if any(ctx.needs_input_grad[5:]):
            h2 = point_rows(ctx.saved_tensors[0], layout, rows)
            grads = [g for eh, fb in zip(slices, fbs) for g in rule.feedback_grads(eh, [h2], [fb], target)]
        return (grad_h, None, None, None, None, *grads)


class Inject(torch.autograd.Function):
    """Identity on a head's output z; in backward, ∂L/∂z -> (z's true gradient, e_h for every
    carrier at its head's columns).  A returned head behind a softmax takes e at its input."""

    @staticmethod
    def forward(ctx, softmax, span, z, *carriers):
        ctx.softmax, ctx.span, ctx.shapes = softmax, span, [c.shape for c in carriers]
        if softmax != "none":
            ctx.save_for_backward(z)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad_z):
        z = ctx.saved_tensors[0] if ctx.softmax != "none" else None
        e = logit_error(ctx.softmax, grad_z, z)
        start, stop, total = ctx.span
        out = []
        for shape in ctx.shapes:
            eh = e.reshape(*shape[:-1], stop - start)
            if (start, stop) != (0, total):  # several heads: this one's columns, zeros elsewhere
                eh = F.pad(eh, (start, total - stop))
            out.append(eh)
        return (None, None, grad_z, *out)


class Deliver(torch.autograd.Function):
    """Identity on the head's output; in backward, hands the gradients an update-unlocked rule
    computed during the forward pass to their parameters, times the loss scale this backward
    applied (one head only: the target rules refuse several).  They are computed and their graph
    freed at once; only their accumulation waits for the backward pass, so
    DistributedDataParallel sees every parameter receive its gradient in backward, as it expects,
    and averages them."""

    @staticmethod
    def forward(ctx, grads, owner, y, *params):
        ctx.grads, ctx.owner = grads, owner
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad_y):
        grads, ctx.grads = ctx.grads, None
        if ctx.owner.rule.scale_free:
            grads = [ctx.owner.scaled(g) for g in grads]
        return (None, None, grad_y, *grads)


class Unreached(torch.autograd.Function):
    """Identity on a returned tensor that no parameter's gradient can reach (it was computed from
    a point's cut output): a loss on it fails in backward instead of being dropped."""

    @staticmethod
    def forward(ctx, name, t, anchor):
        ctx.name = name
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            f"a loss uses the model's {ctx.name}, which was computed from a feedback point's output "
            "after the graph was cut there, so its gradient would reach no parameter and be "
            "dropped: return the point's (block's) output itself, whose gradient ssdfa adds to the "
            "rule's signal, or compute the auxiliary term from the logits"
        )
