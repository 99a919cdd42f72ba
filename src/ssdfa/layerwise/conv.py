"""nn.Conv2d with a substitute backward matrix: ∂x is the transposed convolution of δ with B.

The weight gradient does not depend on the weight's values, only on its shape, so one call to
``aten.convolution_backward`` with B in the weight's place gives ∂x (through B) and ∂W (exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import LayerFeedback, register_layer


class _Conv2dFeedbackFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups):
        ctx.save_for_backward(x, feedback)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.bias_shape = None if bias is None else list(bias.shape)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_y):
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        mask = [need_x, need_w or need_fb, ctx.bias_shape is not None and need_b]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_y,
            x.to(grad_y.dtype),
            feedback.to(grad_y.dtype),
            ctx.bias_shape,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            groups,
            mask,
        )
        # under autocast grad_y may be fp16 while x and W are fp32: each gradient in its
        # input's dtype, as autocast's own casts give BP
        grad_x = None if grad_x is None else grad_x.to(x.dtype)
        grad_w = None if grad_w is None else grad_w.to(ctx.dtypes[0])
        grad_b = None if grad_b is None else grad_b.to(ctx.dtypes[1])
        grad_fb = grad_w.clone() if need_fb else None  # Kolen-Pollack: B gets W's update
        return (
            grad_x,
            grad_w if need_w else None,
            grad_b if mask[2] else None,
            grad_fb,
            None,
            None,
            None,
            None,
        )


def _numeric_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    pads = []
    for k, d in zip(conv.kernel_size, conv.dilation):  # 'same' with stride 1
        total = d * (k - 1)
        if total % 2:
            raise ValueError(
                f"{conv}: padding='same' with an even kernel pads unevenly; give "
                "the padding as numbers instead"
            )
        pads.append(total // 2)
    return tuple(pads)


@register_layer(nn.Conv2d)
class Conv2dFeedback(LayerFeedback):
    """A Conv2d layer whose backward pass sends δ convolved with B (not W) to its input."""

    def __init__(self, layer, feedback, learnable=False):
        super().__init__(layer, feedback, learnable)
        self._padding = _numeric_padding(layer)

    def forward(self, x):
        conv = self.layer
        if self.exact:
            return conv(x)
        padding = self._padding
        if conv.padding_mode != "zeros":  # same as nn.Conv2d: pad first, then convolve unpadded
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            padding = (0, 0)
        return _Conv2dFeedbackFn.apply(
            x,
            conv.weight,
            conv.bias,
            self.backward_weight(),
            tuple(conv.stride),
            padding,
            tuple(conv.dilation),
            conv.groups,
        )
