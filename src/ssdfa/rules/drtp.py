"""Direct random target projection (DRTP paper, Sec. 2.3, Algorithm 1).

Every hidden point gets y*·B_l, y* the one-hot target, in place of the error: no feedback
pathway at all.  y* stands for the error sign up to a shift and a rescaling that the random
B_l absorb (Sec. 2.3.1); its sign is kept as the paper writes it.  As for sign-DFA, the signal
is divided by the batch size, as a mean-reduced loss divides e.  The output layer gets its true
gradient (Algorithm 1).

``unlocked=True`` uses what DRTP allows: each hidden block's weight gradient is computed the
moment its forward pass is done, and its graph freed at once, so peak training memory does not
grow with depth.  They are added to ``.grad`` by ``loss.backward()``, with the output layer's,
so the usual loop (and DistributedDataParallel's averaging) applies unchanged.
"""

from __future__ import annotations

import torch

from ..feedback import DenseFeedback
from .base import Kind, Rule, register_rule, sparse_spec


def check_labels(target, num_errors: int):
    """Class indices must lie in [0, M): checked once per forward pass, eagerly (it reads the
    values, which torch.compile could not trace inside the backward pass).  One read of the
    values (min and max together), so a CUDA step waits for the device once, not twice."""
    if (
        isinstance(target, torch.Tensor)
        and target.dim() >= 1
        and not target.is_floating_point()
        and target.numel()
    ):
        lo, hi = torch.stack([target.min(), target.max()]).tolist()
        if lo < 0 or hi >= num_errors:
            raise ValueError(f"target labels must lie in [0, {num_errors}), got {lo}..{hi}")


def checked_target(
    target, num_errors: int, batch: int, device, method: str, check: bool = True
) -> torch.Tensor:
    """``target`` as a tensor on ``device``, checked to be (batch,) class indices or a
    (batch, M) one-hot (or soft) target; ``check``: also that the labels lie in range (one read
    of their values; ``False`` in backward, after the forward pass checked them)."""
    if target is None:
        raise ValueError(
            f"method {method!r} feeds the target back: call the model as model(x, target=y) "
            "during training (y: class indices or one-hot)"
        )
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    target = target.to(device)
    if target.dim() == 1 and not target.is_floating_point():
        if target.shape[0] != batch:
            raise ValueError(f"target holds {target.shape[0]} labels for a batch of {batch}")
        if check:
            check_labels(target, num_errors)
    elif target.shape != (batch, num_errors):
        raise ValueError(
            f"target must be class indices of shape ({batch},) or one-hot of shape "
            f"({batch}, {num_errors}), got {tuple(target.shape)}"
        )
    return target


def one_hot_target(
    target, num_errors: int, batch: int, dtype, device, method: str, check: bool = True
) -> torch.Tensor:
    """(batch, M) one-hot y* from class indices or an already one-hot (or soft) target.
    ``check=False``: the labels were checked in the forward pass, so none are read here
    (a scatter, where ``F.one_hot`` would read them again)."""
    target = checked_target(target, num_errors, batch, device, method, check)
    if target.dim() == 1 and not target.is_floating_point():
        y = torch.zeros(batch, num_errors, dtype=dtype, device=target.device)
        return y.scatter_(1, target.long().unsqueeze(1), 1)
    return target.to(dtype)


@register_rule("drtp")
class DRTP(Rule):
    summary = (
        "direct random target projection: one-hot y*/batch through fixed B_l; "
        "unlocked=True updates each block during the forward pass"
    )
    kind = Kind.DIRECT
    options = ("sparsity", "connections", "rank", "unlocked")
    scale_free = True
    stage_receives = "target"

    def __init__(self, **opts):
        super().__init__(**opts)
        unlocked = opts.get("unlocked", False)
        if not isinstance(unlocked, bool):
            raise ValueError(f"unlocked must be True or False, got {unlocked!r}")
        self.kind = Kind.LOCAL if unlocked else Kind.DIRECT

    def feedback_spec(self, num_errors):
        return sparse_spec(num_errors, self.opts)

    def error_signal(self, e, target):
        y = one_hot_target(target, e.shape[1], e.shape[0], e.dtype, e.device, self.name)
        return y / e.shape[0]

    needs_target = True

    def point_signals(self, e, feedback, shapes, target):
        return [
            self._projected(fb, target, torch.Size(shape), e.dtype, e.device, check=False)
            for fb, shape in zip(feedback, shapes, strict=True)
        ]

    def local_signal(self, feedback, target, h):
        return self._projected(feedback, target, h.shape, h.dtype, h.device)

    def _projected(self, fb, target, shape, dtype, device, check=True):
        """y*·B_l / batch; for labels and dense B a row pick, as the paper notes (Sec. 2.3.1).
        ``check=False`` in backward: the converted model checked the labels in forward."""
        batch = shape[0]
        if (
            isinstance(fb, DenseFeedback)
            and isinstance(target, torch.Tensor)
            and target.dim() == 1
            and not target.is_floating_point()
        ):
            target = checked_target(target, fb.num_errors, batch, device, self.name, check)
            return (fb.matrix[target.to(fb.matrix.device).long()].to(dtype) / batch).view(shape)
        y = one_hot_target(target, fb.num_errors, batch, dtype, device, self.name, check)
        return fb.project(y / batch).view(shape)


def check_labels_traced(target, num_classes):
    """Labels in range, checked in the forward pass: the backward pass that uses them cannot
    read values.  Eagerly the message names the range found; under ``torch.compile`` an
    asynchronous assert inside the graph (reading the values would break the graph in two)."""
    if not torch.compiler.is_compiling():
        check_labels(target, num_classes)
    elif isinstance(target, torch.Tensor) and target.dim() >= 1 and not target.is_floating_point():
        torch._assert_async(
            ((target >= 0) & (target < num_classes)).all(),
            f"target labels must lie in [0, {num_classes}): a label is out of range",
        )
