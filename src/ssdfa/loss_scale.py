"""The loss scale actually applied in a backward pass, for rules whose signal ignores |e|.

sign(e) and the target y* carry no magnitude, so under fp16 autocast they must be multiplied by
the ``GradScaler`` scale that the loss was multiplied by, and only when it was: a plain fp32
backward, ``check_gradients`` or the alignment angles run unscaled.  ``watch(scaler, model)``
makes ``scaler.scale(loss)`` mark its result; when a backward starts from a marked loss, the
mark's backward (the first node the engine runs) records the scale on every watching model for
the rest of that backward pass, and the engine's end-of-pass callback resets it to 1.
"""

from __future__ import annotations

import weakref

import torch


class _Mark(torch.autograd.Function):
    """Identity on the scaled loss; in backward, publish ``scale`` for this backward pass."""

    @staticmethod
    def forward(ctx, scaled, scale, owners):
        ctx.scale, ctx.owners = scale, owners
        return scaled.view_as(scaled)

    @staticmethod
    def backward(ctx, grad):
        owners = list(ctx.owners)
        for owner in owners:
            owner.applied_scale.copy_(ctx.scale.to(owner.applied_scale.device))

        def reset():
            for owner in owners:
                owner.applied_scale.fill_(1.0)

        torch.autograd.Variable._execution_engine.queue_callback(reset)
        return grad, None, None


def _marked(out, scale, owners):
    if isinstance(out, torch.Tensor):
        return _Mark.apply(out, scale, owners) if out.requires_grad else out
    if isinstance(out, (list, tuple)):
        return type(out)(_marked(o, scale, owners) for o in out)
    return out


def watch(scaler, model) -> None:
    """Let ``scaler.scale(...)`` tell ``model`` the scale of the backward passes it starts."""
    if not scaler or not hasattr(scaler, "scale"):
        return
    owners = scaler.__dict__.get("_ssdfa_owners")
    if owners is None:
        owners = weakref.WeakSet()
        plain = scaler.scale  # the bound method of the scaler's class

        def scale(outputs):
            out = plain(outputs)
            current = scaler._get_scale_async() if scaler.is_enabled() else None
            return out if current is None else _marked(out, current.detach(), owners)

        scaler.__dict__["_ssdfa_owners"] = owners
        scaler.__dict__["scale"] = scale
    owners.add(model)


def fp16_autocast(kind: str) -> bool:
    """Is fp16 autocast on for this device type (where GradScaler's loss scale is needed)?"""
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16
