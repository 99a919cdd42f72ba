"""The step order: GPipe micro-batches forward, then what the rule's stages receive decides the rest.

Which schedule a rule gets is its own attribute, ``Rule.stage_receives``:

* ``"gradient"`` (bp): the last stage computes the loss; the gradient w.r.t. each stage's input
  travels back stage by stage, each stage runs its own backward (the backward pipeline);
* ``"error"`` (dfa, sdfa, ssdfa, dkp, sign_dfa): once every forward of the step has run, the last
  stage computes e = ∂L/∂logits of each micro-batch and broadcasts them to every stage as one
  message; each stage gives its block outputs the rule's signals (:mod:`.stage`) and runs its
  backward at once; nothing travels back stage to stage.  A learned B_l (dkp) learns from the
  same e and the stage's own h_l, so it costs no message;
* ``"target"`` (drtp): the last stage broadcasts the labels once per step, before any forward;
  each stage runs its backward as soon as its own forward of a micro-batch has run (unlocked);
* ``"nothing"`` (shallow): hidden stages only run forward (their layers are frozen); the last
  stage's output block learns from the loss as soon as each forward is done.

SGD steps once per step, after the last micro-batch, so that the step equals one process's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..rules import RULES
from .communication import Comm
from .stage import Stage, backward, feedback_grads, forward


def micro_sizes(batch: int, micro: int) -> list[int]:
    """Rows of each micro-batch (``torch.chunk``'s split: fewer than ``micro`` when it must)."""
    return [len(c) for c in torch.arange(batch).chunk(micro)]


def _forwards(stage: Stage, comm: Comm, x, sizes, in_shape, cut: bool, each=None):
    """Every micro-batch forward in order, each stage sending its last output on; with ``each``,
    ``each(m, outs)`` runs as soon as micro-batch m's forward has (nothing is kept)."""
    xs = x.split(sizes) if stage.first else [None] * len(sizes)
    kept = []
    for m, n in enumerate(sizes):
        h = xs[m] if stage.first else comm.recv((n, *in_shape), torch.float32, stage.rank - 1)
        if not stage.first and not cut:
            h.requires_grad_(True)
        outs = forward(stage, h, cut)
        if not stage.last:
            comm.send(outs[-1], stage.rank + 1)
        if each is not None:
            each(m, outs)
        else:
            kept.append((h, outs))
    return kept


def _loss(logits, target, batch: int):
    """A micro-batch's summed cross entropy over the whole batch size: the micro-batches add up
    to the full-batch mean loss, and their gradients to its gradient."""
    return nn.functional.cross_entropy(logits, target, reduction="sum") / batch


def backprop(stage: Stage, comm: Comm, x, y, sizes, in_shape, classes) -> float | None:
    """bp: all forwards, then the gradients back stage by stage, micro-batch by micro-batch."""
    kept = _forwards(stage, comm, x, sizes, in_shape, cut=False)
    batch, total = sum(sizes), None
    ys = y.split(sizes) if stage.last else [None] * len(sizes)
    for m in reversed(range(len(sizes))):
        h, outs = kept[m]
        if stage.last:
            loss = _loss(outs[-1], ys[m], batch)
            loss.backward()
            total = float(loss.detach()) + (total or 0.0)
        else:
            outs[-1].backward(comm.recv(outs[-1].shape, torch.float32, stage.rank + 1))
        if not stage.first:
            comm.send(h.grad, stage.rank - 1)
    return total


def broadcast_error(stage: Stage, comm: Comm, x, y, sizes, in_shape, classes) -> float | None:
    """Direct feedback of e: all forwards, one broadcast of the step's e, every backward local.

    Every forward has finished before the first e exists, so the last stage sends the m
    micro-batches' e as one message: one latency-bound broadcast per step, not m.
    """
    kept = _forwards(stage, comm, x, sizes, in_shape, cut=True)
    batch, e, total = sum(sizes), None, None
    if stage.last:
        es, total = [], 0.0
        for (_, outs), target in zip(kept, y.split(sizes)):
            logits = outs[-1].detach().requires_grad_(True)
            loss = _loss(logits, target, batch)
            es.append(torch.autograd.grad(loss, logits)[0])
            total += float(loss.detach())
        e = torch.cat(es)
    e_all = comm.broadcast(e, (batch, classes), torch.float32, stage.stages - 1)
    for (_, outs), em in zip(kept, e_all.split(sizes)):
        backward(stage, outs, batch, e=em)
        feedback_grads(stage, outs, em)
    return total


def unlocked(stage: Stage, comm: Comm, x, y, sizes, in_shape, classes) -> float | None:
    """Labels or nothing: each micro-batch's backward right after its forward (update-unlocked).

    The labels reach every stage once per step, before any forward, when the rule's hidden
    signal reads them (drtp); shallow's hidden stages receive nothing."""
    batch = sum(sizes)
    if stage.rule.stage_receives == "target":
        y = comm.broadcast(y if stage.last else None, (batch,), torch.long, stage.stages - 1)
    ys = y.split(sizes) if y is not None else [None] * len(sizes)
    losses = []

    def each(m, outs):
        losses.append(backward(stage, outs, batch, target=ys[m]))

    _forwards(stage, comm, x, sizes, in_shape, cut=True, each=each)
    return sum(losses) if stage.last else None


SCHEDULES = {"gradient": backprop, "error": broadcast_error, "target": unlocked, "nothing": unlocked}

# the rules a pipeline runs, in registration order: those whose stages receive what it can send
PIPELINE_METHODS: tuple[str, ...] = tuple(
    name for name, cls in RULES.items() if cls.stage_receives in SCHEDULES
)


def train_step(
    stage: Stage, comm: Comm, x, y, batch: int, micro: int, in_shape, classes: int, opt
) -> float | None:
    """One training step of ``stage`` (x on the first stage, y on the last, else None): the
    schedule of what its rule receives, then one SGD step.  Returns the step's mean loss on the
    last stage, None elsewhere."""
    opt.zero_grad(set_to_none=True)
    loss = SCHEDULES[stage.rule.stage_receives](
        stage, comm, x, y, micro_sizes(batch, micro), in_shape, classes
    )
    opt.step()
    return loss
