"""The reference a K-stage run must equal: the same training in one process, and the comparison.

``ssdfa.convert(net, method, seed)`` and SGD on the same seeded batches: one forward and one
``loss.backward()`` per step, the library's converted model doing all the rule's work.  dkp's
B_l sit in their own SGD group (``feedback_lr``, ``feedback_weight_decay``), as in the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..convert import feedback_matrices
from ..data import load_dataset
from .config import PipelineConfig, batches, make_optimizer
from .partition import build_net, convert_net


@dataclass
class OneProcessRun:
    net: nn.Module
    feedback: list[torch.Tensor]  # dense B_l, in order ([] without any)
    losses: list[float]  # mean loss of every step


def train_one_process(cfg: PipelineConfig) -> OneProcessRun:
    """Train ``cfg.method`` in one process, as the pipeline's stages do together."""
    data = load_dataset(cfg.dataset)
    _, net = build_net(cfg, data)
    model = convert_net(net, cfg.method, data.input_shape, data.num_classes, cfg.seed)
    fb = list(model.feedback.parameters())  # learned B_l (dkp); fixed ones are buffers
    fb_ids = {id(p) for p in fb}
    opt = make_optimizer(cfg, [p for p in model.parameters() if id(p) not in fb_ids], fb)
    losses = []
    for idx in batches(len(data.train), cfg.batch_size, cfg.steps, cfg.seed):
        x, y = data.train.batch(idx)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x, target=y), y)  # target: read by drtp only
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return OneProcessRun(net, list(feedback_matrices(model).values()), losses)


def single_process(cfg: PipelineConfig):
    """(trained net, its B_l as dense matrices, in order): :func:`train_one_process` without
    the losses."""
    run = train_one_process(cfg)
    return run.net, run.feedback


def max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between two nets' weights (and buffers)."""
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def max_feedback_difference(fa: list[torch.Tensor], fb: list[torch.Tensor]) -> float:
    """Largest absolute difference between two lists of B_l (0.0 when both are empty)."""
    if len(fa) != len(fb):
        raise ValueError(f"{len(fa)} feedback matrices against {len(fb)}")
    return max((float((a.detach() - b.detach()).abs().max()) for a, b in zip(fa, fb)), default=0.0)


def max_loss_difference(la: list[float], lb: list[float]) -> float:
    """Largest absolute difference between two runs' per-step losses."""
    if len(la) != len(lb):
        raise ValueError(f"{len(la)} step losses against {len(lb)}")
    return max((abs(a - b) for a, b in zip(la, lb)), default=0.0)


def compare(run, one: OneProcessRun, tolerance: float) -> dict:
    """What the pipeline's report says about the match with one process: W and B_l
    (``max_weight_difference``, the larger of the two), B_l alone (None without any), and
    ``matches_single_process``: W, B_l and every step's loss within ``tolerance``."""
    fb_diff = max_feedback_difference(run.feedback, one.feedback) if run.feedback else None
    diff = max(max_weight_difference(run.net, one.net), fb_diff or 0.0)
    loss_diff = max_loss_difference(run.losses, one.losses)
    return {
        "max_weight_difference": diff,
        "max_feedback_difference": fb_diff,
        "tolerance": tolerance,
        "matches_single_process": max(diff, loss_diff) <= tolerance,
    }
