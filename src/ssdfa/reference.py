"""A slow, public reference: recompute a direct rule's gradients block by block from the paper.

``check_gradients(model, x, y)`` runs one backward through the converted model, then recomputes
every parameter gradient with an explicit computation that uses nothing of the fast path (no
injection Function, no carrier): the output error e at the logits, the signal e·B_l from the
dense matrices of ``feedback_matrices`` (SSDFA paper, Eq. 8-9), and each block's own
vector-Jacobian product.  An nn.Sequential is walked block by block; any other model (residual,
transformer, traced) is run once with plain forward hooks that detach each point's output.  Run
it on your own models to make sure ssdfa trains them as the paper says (in eval mode, or without
dropout: it runs the model twice).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .points import FeedbackPoint
from .wrapper import FeedbackModel

# What each direct rule feeds back through B_l, straight from its paper (e: output error).
SIGNALS: dict[str, Callable] = {
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


def _layerwise_gradients(model, x, y, loss_fn):
    """FA/KP by hand: walk the Sequential backwards; a weight layer's ∂x uses B_l (DKP Eq. 5)."""
    from .layerwise import LayerFeedback

    if not isinstance(model.net, nn.Sequential):
        raise NotImplementedError("the layer-wise reference walks nn.Sequential models")
    mods = list(model.net)
    ins, outs = [], []
    a = x
    for mod in mods:  # forward, each module on a detached input, weight layers run plainly
        a = a.detach().requires_grad_(a.is_floating_point())
        ins.append(a)
        a = mod.layer(a) if isinstance(mod, LayerFeedback) else mod(a)
        outs.append(a)
    g = torch.autograd.grad(loss_fn(outs[-1], y), outs[-1])[0]
    name_of = {id(p): n for n, p in model.net.named_parameters()}
    expected: dict[str, torch.Tensor] = {}
    for mod, a, h in zip(reversed(mods), reversed(ins), reversed(outs)):
        if not h.requires_grad:
            break
        params = [p for p in (mod.layer if isinstance(mod, LayerFeedback) else mod).parameters()]
        grads = torch.autograd.grad(h, params, g, retain_graph=True, allow_unused=True) \
            if params else []
        for p, gp in zip(params, grads):
            if gp is not None:
                expected[name_of[id(p)]] = gp
        if isinstance(mod, LayerFeedback):
            if isinstance(mod.feedback, nn.Parameter):  # KP: B gets W's gradient
                expected[name_of[id(mod.feedback)]] = expected[name_of[id(mod.layer.weight)]]
            h = torch.func.functional_call(mod.layer, {"weight": mod.backward_weight().detach()}, (a,))
        if not a.requires_grad:
            break
        g = torch.autograd.grad(h, a, g)[0]
    return expected


def _blocks(net: nn.Module) -> list[list[nn.Module]]:
    blocks: list[list[nn.Module]] = [[]]
    for mod in net:
        if isinstance(mod, FeedbackPoint):
            blocks.append([])
        else:
            blocks[-1].append(mod)
    return blocks


def reference_gradients(model: FeedbackModel, x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable = F.cross_entropy) -> dict[str, torch.Tensor]:
    """{parameter name in model.net: expected gradient} under the model's rule."""
    rule = model.rule.name
    params = dict(model.net.named_parameters())
    if model.rule.layerwise:
        return _layerwise_gradients(model, x, y, loss_fn)
    if getattr(model.rule, "forward_mode", None) == "weights":  # forward_grad: (∇L·v)·v
        from .forward_mode import forward_gradient_reference

        return forward_gradient_reference(model, x, y, loss_fn)
    if not model.rule.direct:
        out = model.net(x)
        grads = torch.autograd.grad(loss_fn(out, y), list(params.values()), allow_unused=True)
        return {n: g for n, g in zip(params, grads) if g is not None}
    if rule not in SIGNALS:
        raise NotImplementedError(f"no reference signal for method {rule!r}; known: {sorted(SIGNALS)}")
    if not isinstance(model.net, nn.Sequential):
        return _hooked_gradients(model, x, y, loss_fn)
    matrices = list(model.feedback_matrices().values())
    # forward, block by block, each block on a detached input
    acts, outs = [x], []
    for block in _blocks(model.net):
        a = acts[-1].detach()
        for mod in block:
            a = mod(a)
        outs.append(a)
        acts.append(a)
    out = outs[-1]
    e = torch.autograd.grad(loss_fn(out, y), out, retain_graph=True)[0].reshape(out.shape[0], -1)
    signal = None if SIGNALS[rule] is None else SIGNALS[rule](e, y)
    name_of = {id(p): n for n, p in params.items()}
    expected: dict[str, torch.Tensor] = {}
    for layer, h in enumerate(outs):
        if layer < len(outs) - 1 and SIGNALS[rule] is None:
            continue
        grad_h = e.view_as(h) if layer == len(outs) - 1 else (signal @ matrices[layer]).view_as(h)
        block_params = [p for mod in _blocks(model.net)[layer] for p in mod.parameters()]
        if not block_params:
            continue
        grads = torch.autograd.grad(h, block_params, grad_outputs=grad_h, retain_graph=True,
                                    allow_unused=True)
        for p, g in zip(block_params, grads):
            if g is not None:
                expected[name_of[id(p)]] = g
    return expected


def _hooked_gradients(model, x, y, loss_fn):
    """Any model: plain forward hooks detach each point's h_l for the next block; e is taken at
    the logits (through a log_softmax/softmax head by its formula), per position for a
    (batch, seq, classes) output and (batch, seq, d) points; each h_l gets signal·B_l."""
    outs, handles = [], []
    for point in model.points().values():
        def cut(mod, inp, out):
            outs.append(out)
            return out.detach()
        handles.append(point.register_forward_hook(cut))
    try:
        out = model.net(x)
    finally:
        for h in handles:
            h.remove()
    logits = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, tuple)
                                                        else out["logits"])
    loss = loss_fn(out, y)
    params = dict(model.net.named_parameters())
    live = {n: p for n, p in params.items() if p.requires_grad}
    total = dict(zip(live, torch.autograd.grad(loss, list(live.values()), allow_unused=True,
                                               retain_graph=True)))
    g = torch.autograd.grad(loss, logits, retain_graph=True)[0]
    if model.head == "log_softmax":  # ∂L/∂z of z -> log softmax(z)
        g = g - logits.exp() * g.sum(-1, keepdim=True)
    elif model.head == "softmax":
        g = logits * (g - (g * logits).sum(-1, keepdim=True))
    if SIGNALS[model.rule.name] is not None:
        for h, b in zip(outs, model.feedback_matrices().values()):
            token = h.dim() == 3 and logits.dim() == 3
            e = g.reshape(-1, g.shape[-1]) if token else g.reshape(h.shape[0], -1)
            target = y.reshape(-1) if token and y.dim() == 2 else y
            grad_h = (SIGNALS[model.rule.name](e, target) @ b).view_as(h)
            for n, gp in zip(live, torch.autograd.grad(h, list(live.values()), grad_h,
                                                       allow_unused=True, retain_graph=True)):
                if gp is not None:
                    total[n] = gp if total[n] is None else total[n] + gp
    return {n: gp for n, gp in total.items() if gp is not None}


def check_gradients(model: FeedbackModel, x: torch.Tensor, y: torch.Tensor,
                    loss_fn: Callable = F.cross_entropy, *, rtol: float = 1e-5,
                    atol: float = 1e-6) -> None:
    """Raise AssertionError naming every parameter whose gradient differs from the reference.

    The model's existing ``.grad`` values are left as they were.
    """
    params = dict(model.net.named_parameters())
    saved = {n: (None if p.grad is None else p.grad.clone()) for n, p in params.items()}
    try:
        for p in params.values():
            p.grad = None
        loss_fn(model(x, target=y), y).backward()
        got = {n: p.grad for n, p in params.items()}
        expected = reference_gradients(model, x, y, loss_fn)
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
