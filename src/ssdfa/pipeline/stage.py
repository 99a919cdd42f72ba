"""One stage: its blocks of the converted net, the feedback modules at their outputs, the rule.

The stage holds what ``ssdfa.convert`` built (the user's layers, ``model.feedback[l]`` as
:class:`~ssdfa.feedback.DenseFeedback` or, for sdfa and ssdfa, :class:`~ssdfa.feedback.SparseFeedback`
in (index, value) form) and asks the rule for every signal, as the converted model does in one
process (``ssdfa.wrapper._Point``):

* a hidden block output h_l gets ``rule.point_signals(e, [B_l], ...)`` (e·B_l for dfa, sdfa,
  ssdfa, dkp; sign(e)/batch·B_l for sign_dfa; SSDFA paper Eq. 8-11) when the stage received e,
  or ``rule.local_signal(B_l, y, h_l)`` (y*·B_l/batch, DRTP's forward-time signal) when it
  received the labels;
* the output block gets its true gradient: e itself, or the loss's;
* a learned B_l (dkp) gets ``rule.feedback_grads(e, [h_l], [B_l], ...)`` (∂B_l = eᵀh_l, DKP Eq. 7).

A micro-batch's loss is the full-batch mean loss restricted to its rows: its own mean times
rows/batch.  e carries that factor by itself; a scale-free signal (a sign, the target) divides by
the rows it sees and ignores |e|, so it is multiplied by rows/batch here, as the converted model
multiplies it by GradScaler's loss scale (``FeedbackModel.scaled``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..rules import Rule
from .partition import first_block, stage_blocks


@dataclass
class Stage:
    """Stage ``rank`` of ``stages``: its blocks, the feedback module at each block output (None
    at the net's output block and for rules without B_l) and the rule that trains them."""

    rank: int
    stages: int
    blocks: list[nn.Sequential]
    feedback: list  # per block: DenseFeedback / SparseFeedback at its output, or None
    rule: Rule
    indices: list[list[int]]  # per block: the indices of its modules in the cut net

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.stages - 1

    def is_output(self, j: int) -> bool:
        """Is block ``j`` of this stage the net's output block (logits)?"""
        return self.last and j == len(self.blocks) - 1

    def parameters(self) -> list[nn.Parameter]:
        return [p for b in self.blocks for p in b.parameters()]

    def learned_feedback(self) -> list[nn.Parameter]:
        """The B_l this stage learns (dkp): the parameters of its feedback modules."""
        return [p for fb in self.feedback if fb is not None for p in fb.parameters()]

    def modules(self) -> dict[int, nn.Module]:
        """{index in the cut net: module} for every module of the stage."""
        return {i: m for b, idx in zip(self.blocks, self.indices) for i, m in zip(idx, b)}

    def nonfinite(self) -> list[str]:
        """Names of the stage's weights and learned B_l that hold NaN or infinite values."""
        named = [
            *((n, p) for b in self.blocks for n, p in b.named_parameters()),
            *(
                (f"the B at {list(b._modules)[-1]}", p)  # the block's last module: its point
                for b, fb in zip(self.blocks, self.feedback)
                if fb is not None
                for p in fb.parameters()
            ),
        ]
        return [n for n, p in named if not bool(torch.isfinite(p).all())]


def build_stage(net: nn.Sequential, rank: int, stages: int, feedback: list, rule: Rule) -> Stage:
    """Stage ``rank`` of ``net``; ``feedback[j]`` is the module at the output of global block j
    (None or missing: no B there)."""
    groups = stage_blocks(net, stages)
    start = first_block(net, rank, stages)
    names = list(net._modules)
    blocks = [nn.Sequential(OrderedDict((names[i], net[i]) for i in b)) for b in groups[rank]]
    fbs = [feedback[start + j] if start + j < len(feedback) else None for j in range(len(blocks))]
    return Stage(rank, stages, blocks, fbs, rule, [list(b) for b in groups[rank]])


def forward(stage: Stage, x: torch.Tensor, cut: bool) -> list[torch.Tensor]:
    """Run the stage's blocks; with ``cut`` each block's input is detached (direct feedback)."""
    outs = []
    for block in stage.blocks:
        if cut:
            x = x.detach()
        x = block(x)
        outs.append(x)
    return outs


def hidden_signal(rule: Rule, fb, h: torch.Tensor, batch: int, e=None, target=None):
    """The gradient block output ``h`` gets from the rule: from e when the stage received it,
    else from the labels (the rule's forward-time signal)."""
    if e is not None:
        signal = rule.point_signals(e, [fb], [h.shape], target)[0]
    else:
        signal = rule.local_signal(fb, target, h)
    return signal * (h.shape[0] / batch) if rule.scale_free else signal


def backward(stage: Stage, outs: list[torch.Tensor], batch: int, e=None, target=None):
    """One micro-batch's backward: every block output its gradient, at once (no Wᵀδ between
    blocks); returns the micro-batch's loss when the output block computed it from ``target``."""
    tensors, grads, loss = [], [], None
    for j, (out, fb) in enumerate(zip(outs, stage.feedback)):
        if stage.is_output(j):
            if e is not None:  # e = ∂L/∂logits: the output block's true gradient
                tensors.append(out)
                grads.append(e)
            else:
                loss = nn.functional.cross_entropy(out, target, reduction="sum") / batch
                tensors.append(loss)
                grads.append(torch.ones(()))
        elif fb is not None and out.requires_grad:
            tensors.append(out)
            grads.append(hidden_signal(stage.rule, fb, out, batch, e, target).view_as(out))
    if tensors:
        torch.autograd.backward(tensors, grads)
    return None if loss is None else float(loss.detach())


def feedback_grads(stage: Stage, outs: list[torch.Tensor], e: torch.Tensor) -> None:
    """Learned B_l (dkp): ``.grad`` += the rule's ∂B_l from e and the stage's own h_l.

    e is the micro-batch's share of the full-batch mean-loss gradient, so the micro-batches add
    up to one process's eᵀh_l, in the feedback module's own storage layout.
    """
    for out, fb in zip(outs, stage.feedback):
        params = [] if fb is None else list(fb.parameters())
        if not params:
            continue
        h = out.detach()
        for p, g in zip(params, stage.rule.feedback_grads(e, [h], [fb], None)):
            p.grad = g if p.grad is None else p.grad + g


def finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)
