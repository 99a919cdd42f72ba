"""Alignment: how far the updates a rule gives are from the ones backprop would give.

Every angle here is in degrees, ``arccos`` of the cosine similarity of two *flattened* tensors
(clamped to [-1, 1]): identical directions give 0°, opposite 180°, orthogonal 90°.  Signals
measured on a batch are flattened over the whole batch (one vector per batch, not a mean of
per-example angles), so an example's weight in the angle is its share of the signal's energy.

- :func:`alignment_angles` — the DRTP paper's "angle between the modulatory signals" (Figs. 2-3),
  per feedback point (δ arriving at the point) and per parameter (∂L/∂W), on one batch, against
  exact BP on the same weights, without disturbing training.
- :func:`feedback_weight_angles` — the SSDFA paper's Eq. 14, ∠(B_l, W_n·…·W_{l+1}) for FC nets.
- :func:`output_prediction_angles` — the DKP paper's Fig. 2, ∠(h_l·B_lᵀ, output pre-activation).
- :func:`fa_weight_angles` — FA/KP's ∠(B, W) for feedback matrices shaped like their weights.
- :func:`norm_ratios` — BioTorch's ‖B‖/‖W‖ beside each of the last two (not an angle).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .layers import is_weight_layer
from .points import FeedbackPoint

__all__ = [
    "angle",
    "alignment_angles",
    "feedback_weight_angles",
    "output_prediction_angles",
    "fa_weight_angles",
    "static_angles",
    "norm_ratios",
]


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two tensors of equal size, each taken as one flat vector.

    Returns NaN when either is all zeros (no direction to compare).
    """
    a = a.detach().reshape(-1).double()
    b = b.detach().reshape(-1).double()
    if a.numel() != b.numel():
        raise ValueError(f"angle needs tensors of equal size, got {a.numel()} and {b.numel()}")
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    # arccos of the clamped cosine, computed as 2·atan2(|â − b̂|, |â + b̂|): the same angle,
    # but accurate near 0° and 180° where arccos loses half the digits
    ua, ub = a / na, b / nb
    return math.degrees(2.0 * math.atan2(float((ua - ub).norm()), float((ua + ub).norm())))


# -- update angles against BP ----------------------------------------------------------------------
def _weight_modules(net: nn.Module) -> OrderedDict[str, nn.Module]:
    """Modules that apply a weight layer: Linear/Conv2d, or a wrapper holding one as ``.layer``
    (how layer-wise rules such as FA replace a layer), outermost only, in definition order."""
    found: OrderedDict[str, nn.Module] = OrderedDict()
    inner = set()
    for name, m in net.named_modules():
        if id(m) in inner:
            continue
        wrapped = getattr(m, "layer", None)
        if isinstance(wrapped, nn.Module) and is_weight_layer(wrapped):
            found[name] = m
            inner.add(id(wrapped))
        elif is_weight_layer(m):
            found[name] = m
    return found


def _taps(model) -> OrderedDict[str, nn.Module]:
    """Where δ is measured: the feedback points of ``model.net`` in the model's order, or, for a
    model without points (layer-wise rules), the input of every weight layer but the first."""
    mods = dict(model.net.named_modules())
    # each point's own marker: a hooked block's output passes through it, so the marker's input
    # is h_l for markers and hooked blocks alike (the block module's input would not be)
    found = OrderedDict(model.points()) if hasattr(model, "points") else OrderedDict()
    for n, m in mods.items():  # points a rule placed without listing them
        if isinstance(m, FeedbackPoint) and n not in found:
            found[n] = m
    if not found:
        found = OrderedDict(list(_weight_modules(model.net).items())[1:])
    return found


@contextlib.contextmanager
def _capture(taps, store_grads: dict, store_acts: dict, net: nn.Module | None = None):
    """Record each tap's input h and the gradient that later arrives at it (tensor hooks).

    The input of a feedback point is the block output h_l itself: a direct rule injects its
    signal into exactly this tensor, and BP's gradient flows through it, so one pre-hook serves
    both (and does not depend on how the engine cuts the graph after the point).  With ``net``,
    the gradient at the output of every hidden weight layer (the pre-activation z) is kept too,
    under the key ``dz:<layer>``.
    """

    def make(name):
        def pre_hook(module, inputs):
            h = inputs[0]
            store_acts[name] = h.detach()
            if h.requires_grad:

                def grab(g):
                    store_grads[name] = g.detach().clone()

                h.register_hook(grab)
            return None

        return pre_hook

    def make_out(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:

                def grab(g):
                    store_grads[name] = g.detach().clone()

                output.register_hook(grab)
            return None

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in taps.items()]
    hidden = list(_weight_modules(net).items())[:-1] if net is not None else []
    handles += [m.register_forward_hook(make_out(f"dz:{n}")) for n, m in hidden]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _one_pass(model, x, y, loss_fn, params):
    deltas, acts = {}, {}
    for p in params:
        p.grad = None
    with _capture(_taps(model), deltas, acts, model.net):
        out = model(x, target=y)
        loss = loss_fn(out, y)
        loss.backward()
    grads = {
        n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.net.named_parameters()
    }
    return deltas, grads, acts, out.detach()


def alignment_angles(
    model, x: torch.Tensor, y: torch.Tensor, loss_fn=F.cross_entropy, *, extra: bool = True
) -> dict[str, float]:
    """Angles (degrees) between the rule's signals and exact BP's on the same batch and weights.

    Keys: ``delta/<point>`` (gradient arriving at each feedback point, i.e. at h_l after the
    block's non-linearity and pooling; for layer-wise rules without points, at the input of each
    weight layer but the first), ``dz/<layer>`` (gradient at each hidden weight layer's output,
    the pre-activation z_l: the DRTP paper's modulatory signal δz_k of Figs. 2-3, f′ applied),
    ``dW/<parameter>`` (∂L/∂W of each parameter of ``model.net``); with ``extra`` also
    :func:`static_angles` and ``dkp/<point>`` (:func:`output_prediction_angles` on this batch).
    The model is run twice with the same random state (dropout masks match); every ``.grad``,
    buffer (BatchNorm statistics) and the global RNG state are restored afterwards, so training
    goes on exactly as if this had not been called.
    """
    if not hasattr(model, "backprop") or not hasattr(model, "net"):
        raise TypeError("alignment_angles expects a model returned by ssdfa.convert")
    params = list(model.parameters())
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    devices = [x.device.index or 0] if x.is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices):
            cpu_state = torch.get_rng_state()
            cuda_state = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
            d_rule, g_rule, acts, out = _one_pass(model, x, y, loss_fn, params)
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, x.device)
            for b, v in zip(model.buffers(), saved_buffers):
                b.copy_(v)
            with model.backprop():
                d_bp, g_bp, _, _ = _one_pass(model, x, y, loss_fn, params)
    finally:
        with torch.no_grad():
            for p, g in zip(params, saved_grads):
                p.grad = g
            for b, v in zip(model.buffers(), saved_buffers):
                b.copy_(v)
    result: dict[str, float] = {}
    for name in _taps(model):
        if name in d_rule and name in d_bp:
            result[f"delta/{name}"] = angle(d_rule[name], d_bp[name])
    for name in _weight_modules(model.net):  # in layer order
        key = f"dz:{name}"
        if key in d_rule and key in d_bp:
            result[f"dz/{name}"] = angle(d_rule[key], d_bp[key])
    for name, g in g_rule.items():
        if g is not None and g_bp.get(name) is not None:
            result[f"dW/{name}"] = angle(g, g_bp[name])
    if extra:
        result.update(static_angles(model))
        result.update(output_prediction_angles(model, acts, out))
    return result


# -- angles of the feedback matrices themselves ---------------------------------------------------
def _sequence(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules of ``net`` in execution order, for Sequential and fx-traced nets."""
    graph = getattr(net, "graph", None)
    if graph is not None:  # torch.fx GraphModule: the graph's order is the execution order
        mods = dict(net.named_modules())
        return [
            (str(n.target), mods[str(n.target)])
            for n in graph.nodes
            if n.op == "call_module" and str(n.target) in mods
        ]
    if isinstance(net, nn.Sequential):
        return [(n, m) for n, m in net.named_modules() if not list(m.children())]
    return []


def _feedback_dense(model) -> OrderedDict[str, torch.Tensor]:
    fbs = getattr(model, "feedback", None)
    if fbs is None or len(fbs) == 0:
        return OrderedDict()
    try:
        return model.feedback_matrices()
    except (NotImplementedError, AttributeError):
        return OrderedDict()


def _eq14_pairs(model) -> OrderedDict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{point: (B_l, W_n·…·W_{l+1})} for each point of an FC chain (see feedback_weight_angles)."""
    dense = _feedback_dense(model)
    seq = _sequence(model.net)
    names = [n for n, _ in seq]
    out = OrderedDict()
    for point, b in dense.items():
        if point not in names:
            continue
        after = [m for _, m in seq[names.index(point) + 1 :] if is_weight_layer(m)]
        if not after or not all(isinstance(m, nn.Linear) for m in after):
            continue
        prod = after[0].weight.detach()
        for m in after[1:]:
            prod = m.weight.detach() @ prod  # W_{k}·…·W_{l+1}: (out_k, neurons)
        if prod.shape != b.shape:
            continue
        out[point] = (b.to(prod), prod)
    return out


def feedback_weight_angles(model) -> dict[str, float]:
    """SSDFA paper Eq. 14: ∠(vec B_l, vec(W_n·…·W_{l+1})) per feedback point of an FC network.

    B_l is (classes, neurons at point l) and the product of the Linear weights after the point
    has the same shape.  Points followed by a Conv2d are skipped (the product is not a matrix
    product there).  Keys ``eq14/<point>``.
    """
    return {f"eq14/{point}": angle(b, prod) for point, (b, prod) in _eq14_pairs(model).items()}


def output_prediction_angles(model, acts: dict, output: torch.Tensor) -> dict[str, float]:
    """DKP paper Fig. 2: ∠(h_l·B_lᵀ, network output pre-activation) per point, over a batch.

    ``acts`` maps point names to their outputs h_l (batch, ...); ``output`` is (batch, classes).
    With our (classes, neurons) convention B_l, h_l·B_lᵀ is ``h @ B.T``.  Keys ``dkp/<point>``.
    """
    dense = _feedback_dense(model)
    out = {}
    for point, b in dense.items():
        h = acts.get(point)
        if h is None:
            continue
        h = h.reshape(h.shape[0], -1)
        if h.shape[1] != b.shape[1]:
            continue
        pred = h.to(b.dtype) @ b.to(h.device).t()  # (batch, classes)
        out[f"dkp/{point}"] = angle(pred, output.reshape(output.shape[0], -1))
    return out


def _fa_pairs(model) -> OrderedDict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{weight name: (B, W)} for each weight with a feedback tensor of its shape (fa_weight_angles)."""
    out = OrderedDict()
    wname = {id(p): n for n, p in model.net.named_parameters()}
    unmatched = []
    for _, m in _weight_modules(model.net).items():
        layer = m if is_weight_layer(m) else m.layer
        w = layer.weight.detach()
        name = wname.get(id(layer.weight), "weight")
        if hasattr(m, "backward_weight"):  # a layer-wise wrapper: the B its backward uses
            out[name] = (m.backward_weight().detach(), w)
            continue
        own = []
        for holder in dict.fromkeys([m, layer]):  # wrapper first, then the layer itself
            own += [
                t
                for tn, t in list(holder.named_buffers(recurse=False))
                + list(holder.named_parameters(recurse=False))
                if tn not in ("weight", "bias") and t is not None and t.numel() == w.numel()
            ]
        if own:
            b = own[0].detach()
            if b.shape != w.shape and b.dim() == 2 and b.t().shape == w.shape:
                b = b.t()
            out[name] = (b, w)
        else:
            unmatched.append((name, w))
    rule = getattr(model, "rule", None)
    if unmatched and rule is not None and not rule.direct:
        pool = list(_feedback_dense(model).values())
        for name, w in unmatched:
            for i, b in enumerate(pool):
                if b.shape == w.shape or (b.dim() == 2 and b.t().shape == w.shape):
                    out[name] = (b if b.shape == w.shape else b.t(), w)
                    pool.pop(i)
                    break
    return out


def fa_weight_angles(model) -> dict[str, float]:
    """FA/KP and the sign rules: ∠(B, W) (or ∠(Bᵀ, W)) for each weight with a feedback tensor
    of its shape.

    A layer-wise wrapper's ``backward_weight()`` (the B its backward uses: for the sign rules
    c·sign(W) or |R|⊙sign(W) of the last step) comes first; otherwise a tensor other than
    weight/bias stored on the weight's own module or on a wrapper holding the layer as
    ``.layer``, then, only for rules that are not direct (a direct B_l can have a weight's shape
    by coincidence), ``model.feedback`` matrices whose dense form has the weight's shape or its
    transpose, matched in order among weights of that shape.  Keys ``fa/<weight name>``; 0°
    means B = W (exact BP).
    """
    return {f"fa/{name}": angle(b, w) for name, (b, w) in _fa_pairs(model).items()}


def _norm(t: torch.Tensor) -> float:
    return float(t.detach().double().norm())


def norm_ratios(model) -> dict[str, float]:
    """‖B‖/‖W‖ (Frobenius) beside each static angle, as BioTorch reports it (Sanfiz & Akrout
    2021): ``fa/<weight>`` for layer-wise rules (B against the weight it replaces), ``eq14/<point>``
    for direct ones (B_l against W_n·…·W_{l+1}, the matrix Eq. 14 compares it with).  The same
    keys as :func:`static_angles`, so ``norm/fa/2.weight`` sits beside ``angle/fa/2.weight``;
    NaN where W is all zeros.
    """
    rule = getattr(model, "rule", None)
    if rule is not None and rule.direct:
        pairs = {f"eq14/{k}": v for k, v in _eq14_pairs(model).items()}
    else:
        pairs = {f"fa/{k}": v for k, v in _fa_pairs(model).items()}
    out = {}
    for key, (b, w) in pairs.items():
        nw = _norm(w)
        out[key] = _norm(b) / nw if nw > 0 else math.nan
    return out


def static_angles(model) -> dict[str, float]:
    """The angles that need no data: Eq. 14 (direct feedback) and FA/KP ∠(B, W)."""
    rule = getattr(model, "rule", None)
    if rule is not None and rule.direct:
        return feedback_weight_angles(model)
    return fa_weight_angles(model)
