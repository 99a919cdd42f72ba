"""nn.Linear with a substitute backward matrix: ∂x = δ·B, ∂W = δᵀ·x, ∂b = Σδ (DKP paper, Eq. 5-6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import LayerFeedback, register_layer


class _LinearFeedbackFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None
        ctx.w_dtype, ctx.b_dtype = weight.dtype, None if bias is None else bias.dtype
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, feedback = ctx.saved_tensors
        grad_x = grad_w = grad_b = grad_fb = None
        # under autocast grad_y may be fp16 while x and W are fp32: compute in grad_y's dtype,
        # hand back each gradient in its input's dtype, as autocast's own casts do for BP
        if ctx.needs_input_grad[0]:
            grad_x = (grad_y @ feedback.to(grad_y.dtype)).to(x.dtype)  # B replaces W
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            g2 = grad_y.reshape(-1, grad_y.shape[-1])  # (batch, out)
            grad_w = (g2.t() @ x.reshape(-1, x.shape[-1]).to(g2.dtype)).to(ctx.w_dtype)  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0).to(ctx.b_dtype)
        if ctx.needs_input_grad[3]:  # Kolen-Pollack: B gets W's own update (a copy)
            grad_fb = grad_w.clone()
        if not ctx.needs_input_grad[1]:
            grad_w = None
        return grad_x, grad_w, grad_b, grad_fb


@register_layer(nn.Linear)
class LinearFeedback(LayerFeedback):
    """A Linear layer whose backward pass sends δ·B (not δ·W) to its input."""

    def forward(self, x):
        if self.exact:
            return self.layer(x)
        return _LinearFeedbackFn.apply(x, self.layer.weight, self.layer.bias, self.backward_weight())
