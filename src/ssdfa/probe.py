"""Shape probing: forward passes with made-up batches that find where and how feedback goes.

Two batch sizes tell the batch dimension of every point and output; a probe one sequence position
shorter tells token-level points; hooks record each point's firing order, shape and the weight
layer before it, and which module produced each output (for :mod:`ssdfa.heads`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ProbeError, Problem, UnsupportedModelError
from .heads import find_heads, top_level
from .layers import is_weight_layer
from .points import FeedbackPoint
from .rules import FEEDS_BACK


@dataclass
class Layout:
    """What one probe found: the points in firing order (names, markers), per point its shape
    without the batch (and sequence) dims, its layout ("flat", "token": an error per position,
    "broadcast": a (batch, seq, d) point under a (batch, M) head), the weight layer that fired last
    before it (it sets B's scale), and the output heads."""

    names: list
    points: list
    shapes: list
    layout: list
    producers: list
    heads: list


def find_layout(net, names, points, rule, inputs) -> Layout:
    """Probe ``net`` with batches of 2 and 3 (and one position shorter for sequences): order the
    points, size them, find the heads (:func:`ssdfa.heads.find_heads`) and each point's layout."""
    args, kwargs = inputs
    small = probe(net, points, *batch_variant(inputs, 2))
    large = probe(net, points, *batch_variant(inputs, 3))
    check_batch_dims(small, large, names, points, rule.name)
    order = sorted(range(len(points)), key=lambda k: large["fired"][id(points[k])][0])
    points, names = [points[k] for k in order], [names[k] for k in order]
    shapes = [large["fired"][id(p)][1] for p in points]
    seq = sequence_points(net, points, shapes, large, args, kwargs)
    last = max((large["fired"][id(p)][0] for p in points), default=-1)
    heads = find_heads(
        large["out"],
        3,
        large["outputs"],
        large["order"],
        last,
        {f[3] for f in large["fired"].values()},
        any(seq),
        large["calls"],
    )
    if rule.kind in FEEDS_BACK:  # shallow feeds nothing back: any output will do
        check_heads(heads, large, rule)
    if any(seq) and not all(seq):
        raise UnsupportedModelError(
            [
                Problem(
                    n,
                    "point",
                    "has no sequence dimension while the others are (batch, seq, d)",
                    "Choose points of shape (batch, seq, d)",
                )
                for n, q in zip(names, seq)
                if not q
            ],
            rule.name,
        )
    layout = ["flat" if not q else ("token" if not heads or heads[0].sequence else "broadcast") for q in seq]
    return Layout(
        names,
        points,
        [tuple(s[2:]) if q else tuple(s[1:]) for s, q in zip(shapes, seq)],
        layout,
        [large["fired"][id(p)][2] for p in points],
        heads,
    )


def check_batch_dims(small, large, names, points, method):
    """The output and every point hold the batch in dim 0 (probes of 2 and 3); every point ran."""
    y2, y3 = first_output(small["out"]), first_output(large["out"])
    if (
        y2 is None
        or y3 is None
        or y2.dim() == 0
        or y2.shape[0] != 2
        or y3.shape[0] != 3
        or y2.shape[1:] != y3.shape[1:]
    ):
        shape = None if y3 is None else tuple(y3.shape)
        raise ValueError(
            f"the model's output ({shape} for a batch of 3) does not hold the batch "
            "in its first dimension; ssdfa needs batch-first inputs and outputs (e.g. "
            "batch_first=True for nn.Transformer* layers)"
        )
    missing = [n for n, p in zip(names, points) if id(p) not in large["fired"]]
    if missing:
        raise UnsupportedModelError(
            [
                Problem(
                    name,
                    "FeedbackPoint",
                    "never reached in the forward pass",
                    "Remove it or make sure forward() calls it",
                )
                for name in missing
            ],
            method,
        )
    problems = []
    for name, p in zip(names, points):
        a, b = small["fired"][id(p)][1], large["fired"][id(p)][1]
        if not (a[0] == 2 and b[0] == 3 and a[1:] == b[1:]):
            moved = [d for d in range(min(len(a), len(b))) if a[d] != b[d]]
            problems.append(
                Problem(
                    name,
                    "point",
                    f"its output {tuple(b)} for a batch of 3 does not hold the batch "
                    f"in dimension 0 (it moved dimension {moved})",
                    "Make the block batch-first (e.g. batch_first=True), or choose other points=",
                )
            )
    if problems:
        raise UnsupportedModelError(problems, method)


def sequence_points(net, points, shapes, large, args, kwargs) -> list[bool]:
    """Per point: is its dim 1 a sequence?  Yes when a (batch, seq, M) output has the same
    length there, or when a probe one position shorter shortens it (any output: a (batch,
    classes) head then gives every position the example's error, Launay et al. 2020)."""
    ys = [t for _, t in top_level(large["out"]) if t.dim() == 3]
    seq = [len(s) == 3 and any(s[1] == y.shape[1] for y in ys) for s in shapes]
    if all(seq) or not any(len(s) == 3 for s in shapes):
        return seq
    shorter = seq_variant(batch_variant((args, kwargs), 3))
    if shorter is None:
        return seq
    try:
        shorter_probe = probe(net, points, *shorter)
    except ProbeError:
        return seq
    for k, (s, p) in enumerate(zip(shapes, points)):
        t = shorter_probe["fired"].get(id(p), (None, None))[1]
        if t is not None and len(s) == 3 and len(t) == 3 and t[1] == s[1] - 1 and t[2] == s[2]:
            seq[k] = True
    return seq


def check_heads(heads, large, rule):
    """A head to take e at, a loss inside forward that reaches it, one target for target rules,
    one layout."""
    if not heads:
        raise ValueError(
            "found no output to take the error at: the model must return its prediction (a "
            "tensor with the batch in dim 0, e.g. the logits, alone, in a tuple, or as "
            "`.logits`), produced after the last feedback point"
        )
    scalar_loss = any(t.dim() == 0 and t.requires_grad for _, t in top_level(large["out"]))
    returned = [h.name for h in heads if h.marker is None]
    if scalar_loss and returned:
        raise ValueError(
            f"the model returns a loss computed inside forward, but its {', '.join(returned)} "
            "was produced by no module ssdfa could find (a function such as x @ W.T), so that "
            "loss would never reach the feedback: produce the logits with a module (e.g. "
            "nn.Linear, weights may be tied) or compute the loss outside forward"
        )
    if len(heads) > 1 and rule.needs_target:
        raise ValueError(
            f"method {rule.name!r} feeds one target back, but the model has several "
            f"output heads ({', '.join(h.name for h in heads)}); use one head, or a rule that "
            "feeds each head's error back (dfa, sdfa, ssdfa, dkp, sign_dfa)"
        )
    if any(h.sequence for h in heads) and not all(h.sequence for h in heads):
        raise ValueError(
            "some output heads are (batch, seq, classes) and others (batch, classes): "
            f"{', '.join(h.name for h in heads)}; ssdfa feeds back one layout per model"
        )


def first_input(args, kwargs) -> torch.Tensor | None:
    """The first tensor among a call's inputs (it holds the batch in dim 0)."""
    return next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)


def batch_variant(inputs, n: int):
    """(args, kwargs) with every tensor that holds the batch in dim 0 cut or repeated to n rows."""
    args, kwargs = inputs
    first = first_input(args, kwargs)
    if first is None or first.dim() == 0:
        raise ValueError("the model's first input must be a tensor with a batch dimension")
    batch = first.shape[0]
    idx = torch.arange(n, device=first.device) % batch

    def cut(t):
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == batch:
            return t.detach().index_select(0, idx)
        if isinstance(t, (list, tuple)):
            return type(t)(cut(v) for v in t)
        return t

    return cut(tuple(args)), {k: cut(v) for k, v in kwargs.items()}


def seq_variant(inputs):
    """(args, kwargs) one sequence position shorter: every tensor of 2+ dims whose dim 1 has the
    first input's length is cut there (token ids, masks, (batch, seq, d) inputs); None if none."""
    args, kwargs = inputs
    first = first_input(args, kwargs)
    if first is None or first.dim() < 2 or first.shape[1] < 2:
        return None
    n = first.shape[1]

    def cut(t):
        if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[1] == n:
            return t[:, : n - 1]
        return t

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def probe(net, points, args, kwargs):
    """One grad-enabled eval forward: for each point (by id) its firing rank, its output shape,
    the weight layer that fired last before it (it sets the feedback scale) and its output's
    grad_fn; for each module output's grad_fn the innermost module that produced it; each
    module's last firing rank; and the output."""
    fired: dict[int, tuple] = {}
    outputs: dict = {}
    order: dict[str, int] = {}
    calls: dict[str, int] = {}
    clock = [0]
    last_weight: list[nn.Module | None] = [None]
    handles = []
    for point in points:

        def hook(mod, inp, out):
            if id(mod) not in fired:
                fired[id(mod)] = (clock[0], tuple(out.shape), last_weight[0], out.grad_fn)
                clock[0] += 1

        handles.append(point.register_forward_hook(hook))
    for name, mod in net.named_modules():
        if is_weight_layer(mod):
            handles.append(mod.register_forward_hook(lambda m, i, o: last_weight.__setitem__(0, m)))
        if name and not isinstance(mod, FeedbackPoint):

            def seen(m, i, o, name=name):
                t = o[0] if isinstance(o, tuple) and o else o
                if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                    outputs.setdefault(t.grad_fn, name)
                order[name] = clock[0]
                calls[name] = calls.get(name, 0) + 1
                clock[0] += 1

            handles.append(mod.register_forward_hook(seen))
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            y = net(*args, **kwargs)
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        raise ProbeError(
            f"a test forward pass with inputs of shape {shapes} failed: {exc}. Pass "
            "input_shape=(...) without the batch dimension, or example_input=a real batch, to "
            "ssdfa.convert"
        ) from exc
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return {
        "fired": fired,
        "out": y,
        "outputs": outputs,
        "order": order,
        "calls": calls,
        "y": first_output(y),
    }


def tensors(y) -> list[torch.Tensor]:
    """Every tensor in a model output: a tensor, or tuples, lists and dicts (``ModelOutput``)."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in tensors(v)]
    if isinstance(y, dict):
        return [t for v in y.values() for t in tensors(v)]
    return []


def first_output(y):
    """The first tensor of an output: a tensor, a tuple's first, or ``.logits``."""
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, dict) and isinstance(y.get("logits"), torch.Tensor):
        return y["logits"]
    if isinstance(y, (tuple, list)) and y and isinstance(y[0], torch.Tensor):
        return y[0]
    if isinstance(y, dict):
        return next((v for v in y.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return None


def unreached_parameters(model, net, inputs) -> list:
    """The parameters of ``net`` that no output of ``model`` depends on (shallow learning's
    hidden layers, past the cut points): one grad-enabled eval pass whatever mode the first call
    ran in (``no_grad``, ``inference_mode``: an evaluation before training, Lightning's sanity
    check), over every tensor of the output (a tuple, dict or ``ModelOutput`` too), so freezing
    them never removes a gradient training would give."""
    params = [p for p in net.parameters() if p.requires_grad]
    was = net.training
    net.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            outs = [
                t
                for t in tensors(model(*inputs[0], **inputs[1]))
                if t.requires_grad and (t.is_floating_point() or t.is_complex())
            ]
            grads = (
                torch.autograd.grad(sum(t.float().sum() for t in outs), params, allow_unused=True)
                if outs
                else [None] * len(params)
            )
    finally:
        net.train(was)
    return [p for p, g in zip(params, grads) if g is None]


def output_width(num_classes: int | None, found: Layout) -> int:
    """ΣM_h, checked against ``num_classes`` when given (each head's width may equal it)."""
    width = sum(h.width for h in found.heads)
    if (
        num_classes is not None
        and num_classes != width
        and not all(h.width == num_classes for h in found.heads)
    ):
        per = "position" if found.layout and found.layout[0] != "flat" else "example"
        raise ValueError(
            f"num_classes={num_classes} but the model outputs {width} values per {per} "
            f"({', '.join(f'{h.name}: {h.width}' for h in found.heads)}); "
            "the feedback matrices need the true output width"
        )
    return width


def check_point_shape(name: str, layout: str, shape: tuple, h: torch.Tensor) -> None:
    """A point's activations have the shape its B was drawn for (past the batch/seq dims)."""
    skip = 1 if layout == "flat" else 2
    if tuple(h.shape[skip:]) != shape:
        want = ("(batch, seq, " if skip == 2 else "(batch, ") + ", ".join(map(str, shape)) + ")"
        raise ValueError(
            f"feedback point {name!r} got activations of shape {tuple(h.shape)}, "
            f"but its feedback matrix was drawn for {want} when the model was converted: "
            "feed inputs of the size it was converted with, or convert again for this size"
        )
