"""A slow, public reference: recompute a rule's gradients from the paper, with plain autograd.

``check_gradients(model, x, y, loss_fn)`` runs one backward through the converted model, then
recomputes every parameter gradient with a computation that uses nothing of the fast path (no
injection Function, no carrier, no layer wrapper's backward):

- direct rules: the network runs with plain forward hooks that detach each point's output for
  the next block and keep every output head's z attached; the loss is ``loss_fn(output, y)`` on
  whatever the model returns (a loss computed inside ``forward`` included).  e_h = ∂L/∂z_h at
  every head (through a returned softmax by its formula), the signal of each head's e_h through
  its rows of the dense ``feedback_matrices`` (δ_l = Σ_h signal(e_h)·B_{l,h}, SSDFA paper Eq. 8-9),
  plus the true gradient of any loss term on a point's own returned output, and each block's own
  vector-Jacobian product;
- layer-wise rules (FA, KP): each weight layer is recomputed as ``f(x; W)`` for its parameters
  plus ``f(x; B) − f(x; B).detach()`` for its input, so ∂x uses B_l in place of W_l (DKP Eq. 5).

Run it on your own models to make sure ssdfa trains them as the paper says (in eval mode, or
without dropout: it runs the model twice).  ``x`` may be a tuple of positional inputs and
``kwargs`` holds keyword inputs (``check_gradients(gpt, (idx, targets), targets, lambda o, y:
o[1])`` for a model that returns its own loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .forward_mode import ForwardGradientModel, forward_gradient_reference
from .heads import replace, top_level
from .layerwise import LayerFeedback
from .probe import first_output
from .rules import CUT, Kind
from .wrapper import FeedbackModel

# What each direct rule feeds back through B_l, straight from its paper (e: output error rows).
SIGNALS: dict[str, Callable | None] = {
    "dfa": lambda e, target: e,  # SSDFA paper Eq. 8-9
    "sdfa": lambda e, target: e,  # same, B sparse (Sec. III)
    "ssdfa": lambda e, target: e,  # Eq. 11: one error per neuron
    "dkp": lambda e, target: e,  # DKP paper Eq. 3 (B_l learns, Eq. 7; not checked here)
    "sign_dfa": lambda e, target: e.sign() / e.shape[0],  # DRTP paper Sec. 2.1 (sDFA), /batch
    "drtp": lambda e, target: _one_hot(target, e) / e.shape[0],  # DRTP paper Algorithm 1, /batch
    "shallow": None,  # DRTP paper Sec. 2.1: hidden blocks get nothing
    "fdfa": lambda e, target: e,  # Bacho & Chu 2024: DFA's e·B_l, B_l as updated by this forward
}


def _one_hot(target, e):
    if target.dim() == 1:
        return F.one_hot(target.long(), e.shape[1]).to(e.dtype)
    return target.to(e.dtype)


def _default_loss(out, y):
    return F.cross_entropy(first_output(out), y)


def _call(model_net, x, kwargs):
    args = x if isinstance(x, tuple) else (x,)
    return model_net(*args, **(kwargs or {}))


def _layerwise_gradients(model, x, y, loss_fn, kwargs):
    """FA/KP by hand: each wrapped layer's output recomputed so that ∂x goes through B_l."""
    handles = []
    for mod in model.net.modules():
        if isinstance(mod, LayerFeedback):

            def swap(m, inputs, out):
                a = inputs[0]
                plain = m.layer(a.detach()) if a.requires_grad else m.layer(a)
                if not a.requires_grad:
                    return plain
                swapped = {"weight": m.backward_weight().detach()}
                if getattr(m.layer, "bias", None) is not None:
                    swapped["bias"] = m.layer.bias.detach()
                through_b = torch.func.functional_call(m.layer, swapped, (a,))
                return plain + through_b - through_b.detach()

            handles.append(mod.register_forward_hook(swap))
    try:
        with model.backprop():  # plain layers (no brSF redraw): the hooks put B in their place
            out = _call(model.net, x, kwargs)
    finally:
        for h in handles:
            h.remove()
    params = {n: p for n, p in model.net.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss_fn(out, y), list(params.values()), allow_unused=True)
    expected = {n: g for n, g in zip(params, grads) if g is not None}
    for name, mod in model.net.named_modules():
        if isinstance(mod, LayerFeedback) and isinstance(mod.feedback, nn.Parameter):
            w = next(n for n, p in model.net.named_parameters() if p is mod.layer.weight)
            if w in expected:  # KP: B gets W's gradient
                expected[f"{name}.feedback"] = expected[w]
    return expected


def reference_gradients(
    model: FeedbackModel, x, y: torch.Tensor, loss_fn: Callable = _default_loss, kwargs: dict | None = None
) -> dict[str, torch.Tensor]:
    """{parameter name in model.net: expected gradient} under the model's rule."""
    if model.rule.kind is Kind.LAYERWISE:
        return _layerwise_gradients(model, x, y, loss_fn, kwargs)
    if isinstance(model, ForwardGradientModel):  # forward_grad: (∇L·v)·v
        return forward_gradient_reference(model, x, y, loss_fn)
    params = {n: p for n, p in model.net.named_parameters() if p.requires_grad}
    if model.rule.kind not in CUT:
        grads = torch.autograd.grad(
            loss_fn(_call(model.net, x, kwargs), y), list(params.values()), allow_unused=True
        )
        return {n: g for n, g in zip(params, grads) if g is not None}
    signal = _signal_of(model.rule)
    outs, dets, zs, out = _cut_forward(model, x, kwargs)
    out, side = _side_leaves(out, dets)
    loss = loss_fn(out, y)
    total = dict(
        zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=True))
    )
    errors = _head_errors(model, loss, zs)
    side_grads = (
        dict(zip(side, torch.autograd.grad(loss, list(side.values()), retain_graph=True, allow_unused=True)))
        if side
        else {}
    )
    widths = [hd.width for hd in model.heads]
    for k, (h, b) in enumerate(zip(outs, model.feedback_matrices().values())):
        grad_h = torch.zeros_like(h) if signal is None else _point_signal(h, errors, b, y, signal, widths)
        if side_grads.get(k) is not None:
            grad_h = grad_h + side_grads[k]
        for n, gp in zip(
            params,
            torch.autograd.grad(h, list(params.values()), grad_h, allow_unused=True, retain_graph=True),
        ):
            if gp is not None:
                total[n] = gp if total[n] is None else total[n] + gp
    return {n: gp for n, gp in total.items() if gp is not None}


def _signal_of(rule):
    """The paper's signal for a rule this module knows (``SIGNALS``); for any other direct rule
    its own ``error_signal``, so a new rule's routing through the engine is still checked (its
    formula then rests on the rule's own tests)."""
    if rule.name in SIGNALS:
        return SIGNALS[rule.name]
    if not rule.inject:
        raise NotImplementedError(f"no reference signal for method {rule.name!r}; known: {sorted(SIGNALS)}")
    return rule.error_signal


def _cut_forward(model, x, kwargs):
    """The plain net run with the graph cut at every point: (point outputs h_l, their detached
    copies by id, each module-produced head's output, the net's output)."""
    outs, cut, zs, handles = [], {}, {}, []
    for point in model.points().values():

        def detach(mod, inp, out):
            outs.append(out)
            cut[id(out)] = out.detach()
            return cut[id(out)]

        handles.append(point.register_forward_hook(detach))
    for head in model.heads:
        if head.marker is not None:

            def keep(mod, inp, out, name=head.name):
                zs[name] = out[0] if isinstance(out, tuple) else out

            handles.append(model.net.get_submodule(head.name).register_forward_hook(keep))
    try:
        out = _call(model.net, x, kwargs)
    finally:
        for h in handles:
            h.remove()
    for head in model.heads:
        if head.marker is None:
            zs[head.name] = dict(top_level(out))[head.key]
    return outs, {id(d): k for k, d in enumerate(cut.values())}, zs, out


def _side_leaves(out, dets):
    """A point's own output returned: a fresh leaf in its place, so a loss term on it gives its
    true gradient; (the output, {point index: leaf})."""
    side = {}
    for key, t in top_level(out):
        if id(t) in dets:
            leaf = t.clone().requires_grad_()
            side[dets[id(t)]] = leaf
            out = replace(out, key, leaf)
    return out, side


def _head_errors(model, loss, zs) -> list:
    """e_h = ∂L/∂(logits) for every head (through a returned last-dim (log_)softmax)."""
    errors = []
    for head in model.heads:
        z = zs[head.name]
        g = torch.autograd.grad(loss, z, retain_graph=True, allow_unused=True)[0]
        g = torch.zeros_like(z) if g is None else g
        if head.marker is None and head.softmax == "log_softmax":  # ∂L/∂z of z -> log softmax(z)
            g = g - z.exp() * g.sum(-1, keepdim=True)
        elif head.marker is None and head.softmax == "softmax":
            g = z * (g - (g * z).sum(-1, keepdim=True))
        errors.append(g)
    return errors


def _point_signal(h, errors, b, y, signal, widths):
    """Σ_h signal(e_h)·B_{l,h} shaped like h: per position for a (batch, seq, classes) head,
    every position the example's for a (batch, classes) head over a (batch, seq, d) point."""
    rows = torch.split(b, widths, dim=0)
    total = 0
    for e, bh in zip(errors, rows):
        if h.dim() == 3 and e.dim() == 3 and h.shape[1] == e.shape[1]:  # token level
            target = y.reshape(-1) if y is not None and y.dim() == 2 else y
            total = total + (signal(e.reshape(-1, e.shape[-1]), target) @ bh).view_as(h)
        elif h.dim() == 3 and bh.shape[1] == h.shape[-1]:  # one error per example, every position
            s = signal(e.reshape(e.shape[0], -1), y) @ bh
            total = total + s[:, None, :].expand_as(h)
        else:
            total = total + (signal(e.reshape(e.shape[0], -1), y) @ bh).view_as(h)
    return total


def check_gradients(
    model: FeedbackModel,
    x,
    y: torch.Tensor,
    loss_fn: Callable = _default_loss,
    *,
    kwargs: dict | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Raise AssertionError naming every parameter whose gradient differs from the reference.

    ``loss_fn(output, y)`` receives what the model returns.  The model's existing ``.grad``
    values are left as they were.
    """
    params = dict(model.net.named_parameters())
    saved = {n: (None if p.grad is None else p.grad.clone()) for n, p in params.items()}
    args = x if isinstance(x, tuple) else (x,)
    try:
        for p in params.values():
            p.grad = None
        out = (
            model(*args, target=y, **(kwargs or {})) if model.rule.direct else model(*args, **(kwargs or {}))
        )
        loss_fn(out, y).backward()
        got = {n: p.grad for n, p in params.items()}
        expected = reference_gradients(model, x, y, loss_fn, kwargs)
    finally:
        for n, p in params.items():
            p.grad = saved[n]
    bad = []
    for name in sorted(set(got) | set(expected)):
        g, r = got.get(name), expected.get(name)
        if g is None and r is None:
            continue
        if g is None or r is None:
            bad.append(f"{name}: {'no gradient' if g is None else 'unexpected gradient'}")
            continue
        try:
            torch.testing.assert_close(g, r, rtol=rtol, atol=atol)
        except AssertionError as exc:
            bad.append(f"{name}: {str(exc).splitlines()[0]} (max |diff| {(g - r).abs().max():.3g})")
    if bad:
        raise AssertionError("gradients differ from the reference:\n  " + "\n  ".join(bad))
