"""Output heads: where the output error e is taken.

e is taken where the prediction is *produced*, not where ``forward`` returns it, so a loss
computed inside ``forward`` (nanoGPT's ``logits, loss = model(x, y)``, a Hugging Face model given
``labels=``) reaches the feedback as any loss outside does.  One probe finds the heads: every
top-level output tensor (a tensor, a tuple's items, a dict's or ``ModelOutput``'s values) that holds
the batch in dim 0, depends on the parameters and was produced after the last feedback point is
walked back through reshapes, scalings and a softmax/log_softmax over its last dimension to the
module whose output it is.  That module's forward is wrapped to pass its output through the
injection, so e = ∂L/∂z at its output z: the logits before a ``log_softmax``, as the papers take
it.  An output no module produced (``x @ wte.weight.T``) is injected where it is returned
("returned" head); a loss computed inside ``forward`` from such an output is refused.

Each head h gets its own feedback matrices: δ_l = Σ_h e_h·B_{l,h} (a head no loss uses sends e_h =
0).  Outputs that are a feedback point's own output go back to that point unchanged (a side path:
its gradient is added to the rule's signal), and any other returned tensor a loss cannot reach is
marked so that a loss on it fails at the backward pass instead of being dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .points import ACTIVE, ForwardWrap

# autograd nodes with one differentiable input that keep "this is the prediction" (a reshape, a
# scaling, a copy); softmax/log_softmax are walked through only over the last dimension
_TRANSPARENT = {
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "TBackward0",
    "PermuteBackward0",
    "TransposeBackward0",
    "TransposeBackward1",
    "CloneBackward0",
    "ToCopyBackward0",
    "UnsqueezeBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "SqueezeBackward2",
    "SqueezeBackward3",
    "MulBackward0",
    "DivBackward0",
    "AliasBackward0",
}
SOFTMAX = {"LogSoftmaxBackward0": "log_softmax", "SoftmaxBackward0": "softmax"}


class HeadMarker:
    """Identifies one head's forward wrap; the converted model owning it decides what it does."""


class HeadWrap(ForwardWrap):
    """A head module's forward, wrapped: its output (or a tuple's first tensor) passes the
    injection of the converted model that is running (identity outside one)."""

    def __init__(self, module: nn.Module, marker: HeadMarker):
        self.marker = marker
        super().__init__(module)

    def __call__(self, *args, **kwargs):
        output = self.run(*args, **kwargs)
        for owner in reversed(ACTIVE):
            k = owner.head_index(self.marker)
            if k is not None:
                if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                    return (owner._inject_head(k, output[0]), *output[1:])
                return owner._inject_head(k, output)
        return output


@dataclass
class Head:
    """One output head: ``name`` (module name, or where it is returned), its error width M_h, whether
    it holds a sequence dimension (batch, seq, M_h), and how it is found at run time."""

    name: str
    width: int
    sequence: bool
    marker: HeadMarker | None = None  # a hooked module
    key: object = None  # a returned head: its place in the output structure
    softmax: str = "none"  # the prediction is returned behind a softmax/log_softmax: e is taken
    # at its input (a hooked head: at the module's output, before it; a returned head: by formula)


def softmax_kind(fn, ndim) -> str:
    """'log_softmax'/'softmax' if ``fn`` is one over the last dimension, else 'none'."""
    kind = SOFTMAX.get(type(fn).__name__)
    if kind is None:
        return "none"
    dim = int(getattr(fn, "_saved_dim", 0))
    dim = dim - 2**64 if dim >= 2**63 else dim  # -1 comes back as an unsigned int64
    return kind if dim in (-1, ndim - 1) else "none"


def top_level(out) -> list[tuple[object, torch.Tensor]]:
    """(key, tensor) for each tensor at the top of an output structure; key None: the output."""
    if isinstance(out, torch.Tensor):
        return [(None, out)]
    if isinstance(out, dict):
        return [(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [(k, v) for k, v in enumerate(out) if isinstance(v, torch.Tensor)]
    return []


def replace(out, key, value):
    """``out`` with the tensor at ``key`` replaced (tuples rebuilt, dicts updated in place)."""
    if key is None:
        return value
    if isinstance(out, dict):
        out[key] = value
        return out
    items = list(out)
    items[key] = value
    return type(out)(items) if not hasattr(out, "_fields") else type(out)(*items)


def place(key) -> str:
    """How an output's place is named in messages: ``output`` or ``output[key]``."""
    return "output" if key is None else f"output[{key!r}]"


def producer(t: torch.Tensor, outputs: dict, point_outputs=frozenset()):
    """(module name, softmax crossed) of the module whose output ``t`` is, walking back through
    transparent nodes; (None, softmax kind) when no module produced it; ("", ...) when it is a
    feedback point's output, rescaled or reshaped."""
    fn, crossed = t.grad_fn, "none"
    while fn is not None:
        if fn in point_outputs:
            return "", crossed
        name = outputs.get(fn)
        if name is not None and SOFTMAX.get(type(fn).__name__) is None:
            return name, crossed
        kind = SOFTMAX.get(type(fn).__name__)
        if kind is not None:
            if softmax_kind(fn, t.dim()) == "none" or crossed != "none":
                return None, crossed
            crossed = kind
        elif type(fn).__name__ not in _TRANSPARENT:
            return None, crossed
        kids = [k for k, _ in fn.next_functions if k is not None]
        if len(kids) != 1:
            return None, crossed
        fn = kids[0]
    return None, crossed


def _returned_head(key, t: torch.Tensor, seq_points: bool) -> Head:
    """A head injected where ``forward`` returns it (no module to hook)."""
    return Head(
        place(key),
        _width(t, seq_points),
        t.dim() == 3 and seq_points,
        key=key,
        softmax=softmax_kind(t.grad_fn, t.dim()),
    )


def _width(t: torch.Tensor, seq_points: bool) -> int:
    """M_h: the last dimension for token-level points, else the values per example."""
    return int(t.shape[-1]) if seq_points else int(t[0].numel())


def find_heads(
    out,
    batch: int,
    outputs: dict,
    order: dict,
    last_point: int,
    point_outputs: set,
    seq_points: bool,
    calls: dict | None = None,
) -> list[Head]:
    """The heads of a network from one probe returning ``out``: ``outputs`` maps an output's
    grad_fn to the innermost module that produced it, ``order`` a module name to its last firing
    rank, ``last_point`` the rank of the last point to fire, ``point_outputs`` the grad_fns of the
    points' outputs, ``calls`` how often each module ran."""
    candidates = [
        (k, t)
        for k, t in top_level(out)
        if t.is_floating_point() and t.dim() >= 1 and t.shape[0] == batch and t.requires_grad
    ]
    heads: list[Head] = []
    seen = set()
    for key, t in candidates:
        name, crossed = producer(t, outputs, point_outputs)
        if name == "":  # a point's own output (or a rescaling of it): not a head
            continue
        if name is not None and order.get(name, -1) < last_point:
            continue  # produced before a point fired: an inner output, trained through its block
        if name is not None and name in seen:
            continue
        if name is not None and (calls or {}).get(name, 1) > 1:
            name = None  # a module run twice cannot be hooked once: inject where it is returned
        if name is None:
            heads.append(_returned_head(key, t, seq_points))
        else:
            seen.add(name)
            heads.append(
                Head(
                    name,
                    _width(t, seq_points),
                    t.dim() == 3 and seq_points,
                    marker=HeadMarker(),
                    softmax=crossed,
                )
            )
    if not heads and candidates:  # the output is a point's own (a point on the last layer)
        heads.append(_returned_head(*candidates[0], seq_points))
    return heads


def hook_heads(net: nn.Module, heads: list[Head]):
    for head in heads:
        if head.marker is not None:
            HeadWrap(net.get_submodule(head.name), head.marker)


def check_reached(heads, fired, tape, names) -> None:
    """After a forward pass: some head ran, and no point fired after the head that takes e
    (its signal would never arrive).  ``fired[k]``: how many carriers existed when head k ran."""
    unfired = [h.name for h, f in zip(heads, fired) if f is None]
    if len(unfired) == len(heads):
        raise RuntimeError(
            f"no output head ({', '.join(unfired)}) ran in this forward pass, so no error "
            "can reach the feedback points; call the model as it was converted"
        )
    ran = [n for n in fired if n is not None]
    late = [names[i] for i, c, _ in tape if c is not None][min(ran) :] if ran else []
    if late:
        raise RuntimeError(
            f"feedback point(s) {', '.join(late)} ran after the output head, so their "
            "signal would never arrive; points must come before the layer producing the "
            "logits"
        )


def check_head_output(head, z, pairs, layout, names, at_once: bool) -> None:
    """The head's output holds the batch (and sequence) its points saw, and the width its
    feedback matrices were drawn for.  ``pairs``: (point index, its carrier, or h_l at once)."""
    for i, c in pairs:
        lead = (c.shape[:2] if layout[i] == "token" else c.shape[:1]) if at_once else c.shape[:-1]
        want = tuple(z.shape[:2]) if layout[i] == "token" else tuple(z.shape[:1])
        if tuple(lead) != want or (layout[i] == "token" and z.dim() != 3):
            raise ValueError(
                f"the output head {head.name!r} gave shape {tuple(z.shape)} but feedback point "
                f"{names[i]!r} saw a batch of {tuple(lead)}; every point must hold "
                "the batch (and, for token-level feedback, the sequence) in its first "
                "dimensions, as when the model was converted"
            )
    width = int(z.shape[-1]) if layout and layout[0] != "flat" else int(z[0].numel())
    if width != head.width:
        raise ValueError(
            f"the output head {head.name!r} gave {width} values per "
            f"{'position' if layout[0] != 'flat' else 'example'}, but its feedback "
            f"matrices were drawn for {head.width}; convert again for this output size"
        )
