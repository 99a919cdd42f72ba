"""Drawing every B_{l,h} of a converted model, and sizing them from a state_dict before the
first call (a lazily sized model resumed, Lightning's ``load_from_checkpoint``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .feedback import (
    DenseFeedback,
    SparseFeedback,
    child_generator,
    init_std,
    make_feedback,
    seeded_generator,
)


def draw_feedback(rule, heads, shapes, producers, *, seed, init, scale, device) -> nn.ModuleList:
    """B_{l,h} for every head h and point l, each from its own generator, head-major (head 0's
    draws are those of a one-head model), index h·P + l; its std by ``init``
    (:func:`ssdfa.feedback.init_std`) times ``scale``."""
    base = seeded_generator(seed)
    out = nn.ModuleList()
    for head in heads:
        for shape, producer in zip(shapes, producers):
            neurons = math.prod(shape)
            gen = child_generator(base)
            spec = rule.feedback_spec(head.width)
            std = init_std(init, producer, neurons, head.width, spec.connections)
            out.append(make_feedback(head.width, neurons, spec, generator=gen, std=std * scale).to(device))
    return out


def adopt_loaded(drawn: nn.ModuleList, loaded: nn.ModuleList, names) -> nn.ModuleList:
    """The B_l loaded before the first call, in place of the ones just drawn, once each is known
    to fit its point (kind, errors, neurons, connections)."""

    def form(fb):
        return (type(fb).__name__, fb.num_errors, fb.num_neurons, getattr(fb, "connections", None))

    want, got = [form(fb) for fb in drawn], [form(fb) for fb in loaded]
    if want != got:
        raise ValueError(
            f"the feedback matrices loaded before the first call do not fit this model and "
            f"method: its points {names} need (kind, errors, neurons, connections) "
            f"{want}, the state_dict holds {got}; load a checkpoint of the same model, "
            "method and options"
        )
    return loaded


def feedback_from_state(state, prefix, num_errors, device, learnable) -> list[nn.Module]:
    """Empty feedback modules shaped as the ones saved under ``prefix`` (``feedback.<i>.``):
    ``matrix`` (M, N) is dense; ``index`` and ``value`` (N, S) are sparse, with M the model's
    class count, or else 1 + the largest index (every error reaches some neuron, as
    :func:`ssdfa.feedback.make_feedback` draws them); the loaded values are then copied in."""
    parts: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, _, name = key[len(prefix) :].partition(".")
            if index.isdigit():
                parts.setdefault(int(index), {})[name] = value
    if sorted(parts) != list(range(len(parts))):
        return []  # not a list of feedback modules: let load_state_dict name the keys
    made = []
    for i in range(len(parts)):
        t = parts[i]
        if set(t) == {"matrix"}:
            fb = DenseFeedback(torch.empty(t["matrix"].shape, dtype=t["matrix"].dtype), learnable)
        elif set(t) == {"index", "value"}:
            m = num_errors if num_errors is not None else int(t["index"].max()) + 1
            fb = SparseFeedback(
                torch.empty(t["index"].shape, dtype=torch.long),
                torch.empty(t["value"].shape, dtype=t["value"].dtype),
                m,
                learnable,
            )
        else:
            return []
        made.append(fb.to(device))
    return made
