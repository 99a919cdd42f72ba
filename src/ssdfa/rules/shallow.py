"""Shallow learning (DRTP paper, Sec. 2.1): hidden layers stay at their random init.

The graph is cut at every point and nothing is injected, so hidden blocks get no gradient at
all (``.grad`` stays ``None``); only the output block learns, by its true gradient.  Convert
marks the hidden parameters ``requires_grad=False``, which lets DistributedDataParallel run
with its default arguments.
"""

from .base import Kind, Rule, register_rule


@register_rule("shallow")
class Shallow(Rule):
    summary = "shallow learning: hidden layers frozen at init, only the output layer learns"
    kind = Kind.OUTPUT_ONLY  # the graph is cut at the points and nothing is fed back
    stage_receives = "nothing"
