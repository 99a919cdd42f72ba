"""What travels between stages, counted: activations forward, and what each stage receives.

:class:`Comm` wraps send/recv/broadcast of ``torch.distributed`` and counts every byte a stage
sends (numel × element size; a broadcast once per receiving stage) and every second it waits to
receive; :func:`expected_bytes` is the formula the counts are checked against, read from what
the rule says a stage receives (``Rule.stage_receives``).  With one stage nothing is sent and no
process group is needed.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from ..errors import PipelineError
from ..rules import make_rule

RECEIVES = ("gradient", "error", "target", "nothing")  # what a pipeline stage can receive


def expected_bytes(method: str, widths: list[int], batch: int, classes: int) -> int:
    """Bytes sent per step by ``method`` with stage-boundary ``widths`` (float32, int64 labels).

    Forward activations A = Σ_k batch × w_k × 4.  A rule whose stage receives its output's
    gradient (bp) sends the same back: 2A; e: A + (K-1) × batch × classes × 4 (dkp the same: its
    B_l learn from that e and the stage's own activations); the labels: A + (K-1) × batch × 8;
    nothing (shallow): A.
    """
    try:
        receives = make_rule(method).stage_receives
    except KeyError:
        receives = None
    if receives not in RECEIVES:
        raise PipelineError(
            f"the pipeline does not run method {method!r} (its stages would "
            f"receive {receives or 'an unknown signal'})"
        )
    act = sum(batch * w * 4 for w in widths)
    k1 = len(widths)  # stages that receive what the last one sends
    back = {"gradient": act, "error": k1 * batch * classes * 4, "target": k1 * batch * 8, "nothing": 0}
    return act + back[receives]


class Comm:
    """send/recv/broadcast that count bytes sent and seconds spent waiting to receive."""

    def __init__(self, stages: int):
        self.stages = stages
        self.sent = 0
        self.wait = 0.0

    def send(self, t: torch.Tensor, dst: int) -> None:
        t = t.detach().contiguous()
        self.sent += t.numel() * t.element_size()
        dist.send(t, dst)

    def recv(self, shape, dtype, src: int) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype)
        t0 = time.perf_counter()
        dist.recv(t, src)
        self.wait += time.perf_counter() - t0
        return t

    def broadcast(self, t: torch.Tensor | None, shape, dtype, src: int) -> torch.Tensor:
        """``src``'s ``t`` on every stage (``t`` is ignored elsewhere)."""
        if self.stages == 1:
            return t
        if dist.get_rank() == src:
            t = t.detach().contiguous()
            self.sent += t.numel() * t.element_size() * (self.stages - 1)
            dist.broadcast(t, src)
            return t
        t = torch.empty(shape, dtype=dtype)
        t0 = time.perf_counter()
        dist.broadcast(t, src)
        self.wait += time.perf_counter() - t0
        return t
