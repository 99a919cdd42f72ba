"""Cutting a model into stages: blocks at its weight layers, K contiguous groups of blocks.

A *block* ends just before the next weight layer (``ssdfa.layers.WEIGHT_LAYERS``):
``[Flatten, Linear, Tanh] [Linear, Tanh] [Linear]``.  In the ``nn.Sequential`` that
``ssdfa.convert`` returns (``model.net``) the FeedbackPoint it places before every weight layer
but the first ends the block before it, so block l's output is point l's h_l and its B_l is
``model.feedback[l]``: the stages cut the converted net, and hold its own feedback modules.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..convert import convert, feedback_matrices
from ..errors import PipelineError
from ..layers import is_weight_layer
from ..models import create_model, default_model
from ..rules import make_rule
from ..wrapper import FeedbackModel


def split_blocks(net: nn.Sequential) -> list[list[int]]:
    """Indices of ``net``'s modules, one list per weight layer (a block ends before the next)."""
    if not isinstance(net, nn.Sequential):
        raise PipelineError(f"pipeline splits an nn.Sequential, got {type(net).__name__}")
    starts = [i for i, m in enumerate(net) if is_weight_layer(m)]
    if not starts:
        raise PipelineError("the model has no Linear or Conv2d layer to split at")
    cuts = [0] + starts[1:] + [len(net)]
    return [list(range(a, b)) for a, b in zip(cuts, cuts[1:])]


def stage_blocks(net: nn.Sequential, stages: int) -> list[list[list[int]]]:
    """The blocks of each of ``stages`` stages: contiguous, as even as possible, earlier larger."""
    blocks = split_blocks(net)
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise PipelineError(f"--stages must be a positive number of stages, got {stages!r}")
    if stages > len(blocks):
        raise PipelineError(
            f"--stages {stages} is more than the model's {len(blocks)} weight "
            f"layers; give --stages 1..{len(blocks)} or a deeper --model"
        )
    q, r = divmod(len(blocks), stages)
    out, i = [], 0
    for s in range(stages):
        n = q + (1 if s < r else 0)
        out.append(blocks[i : i + n])
        i += n
    return out


def first_block(net: nn.Sequential, rank: int, stages: int) -> int:
    """The global index of stage ``rank``'s first block."""
    return sum(len(g) for g in stage_blocks(net, stages)[:rank])


def boundary_shapes(net: nn.Sequential, input_shape, stages: int) -> list[tuple[int, ...]]:
    """Per-example shape at each of the K-1 stage boundaries (what one stage sends on)."""
    groups = stage_blocks(net, stages)
    shapes, x = [], torch.zeros(2, *input_shape)
    was = net.training
    net.eval()
    with torch.no_grad():
        for g in groups[:-1]:
            for block in g:
                for i in block:
                    x = net[i](x)
            shapes.append(tuple(x.shape[1:]))
    net.train(was)
    return shapes


def boundary_widths(net: nn.Sequential, input_shape, stages: int) -> list[int]:
    """Features per example at each of the K-1 stage boundaries."""
    return [math.prod(s) for s in boundary_shapes(net, input_shape, stages)]


def build_net(cfg, data) -> tuple[str, nn.Module]:
    """(model name, the net) with the weights every rank and the one-process run start from."""
    torch.manual_seed(cfg.seed)
    name = cfg.model or default_model(data.name, data.input_shape)
    return name, create_model(name, data.input_shape, data.num_classes)


def convert_net(net: nn.Module, method: str, input_shape, classes: int, seed: int) -> FeedbackModel:
    """``ssdfa.convert(net, method, seed=seed)``: the rule, the points and every B_l a stage uses
    (sparse ones as :class:`ssdfa.feedback.SparseFeedback`; shallow's hidden layers frozen)."""
    model = convert(net, method, num_classes=classes, seed=seed, input_shape=tuple(input_shape))
    if not isinstance(model, FeedbackModel) or not isinstance(model.net, nn.Sequential):
        raise PipelineError(
            f"method {method!r} does not convert {type(net).__name__} into a "
            "Sequential with feedback points; the pipeline cannot cut it"
        )
    if len(model.heads) > 1 or model.head != "none":
        raise PipelineError(
            "the pipeline takes e at plain logits; this model has several output "
            "heads or ends in a softmax: drop the softmax (cross entropy adds it)"
        )
    return model


def block_feedback(model: FeedbackModel) -> list:
    """One entry per block of ``model.net``: its output's feedback module, None for the output
    block (and for every block of a rule with no B_l: bp, shallow)."""
    n = len(split_blocks(model.net))
    fbs = list(model.feedback)
    if fbs and len(fbs) != n - 1:
        raise PipelineError(
            f"{len(fbs)} feedback matrices for {n - 1} hidden blocks: the "
            "pipeline needs one feedback point at the output of each hidden block"
        )
    return (fbs or [None] * (n - 1)) + [None]


def model_feedback(net: nn.Sequential, input_shape, classes: int, method: str, seed: int):
    """B_l at every block output but the last, dense, as ``ssdfa.convert(net, method, seed)``
    draws them (``[]`` for rules without B_l); ``net`` itself is left as it was."""
    if make_rule(method).stage_receives == "gradient":
        return []
    model = convert_net(copy.deepcopy(net), method, input_shape, classes, seed)
    return [b.detach().clone() for b in feedback_matrices(model).values()]
