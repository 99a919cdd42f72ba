"""Rules that learn from forward-mode derivatives: ``forward_grad`` and ``fdfa``.

Both run the network once with dual tensors (``torch.autograd.forward_ad``, the machinery behind
``torch.func.jvp``): every tensor carries a tangent, the directional derivative of its value
along a random direction, computed in the same pass and at about the cost of a second forward.

- :class:`ForwardGradientModel` (Baydin et al. 2022, "Gradients without backpropagation",
  Algorithm 1): one direction v ~ N(0, I) over *all* parameters per step; the pass gives
  y and ∂y/∂θ·v, and every parameter's gradient is g = (∇L·v)·v.  The loss is computed outside
  the model, as with every ssdfa rule, so ∇L·v = Σ (∂L/∂y)·(∂y/∂θ·v): the backward pass only
  goes through the loss to reach y (no layer of the network is differentiated in reverse).
  E[g] = ∇L, since E[v vᵀ] = I; its variance grows with the parameter count.  v is drawn from
  a generator seeded by the conversion's seed and a step counter (buffers), so DDP replicas draw
  the same v and their averaged g is the global batch's.
- :class:`FDFAModel` (Bacho & Chu 2024, "Low-variance forward gradients using direct feedback
  alignment and momentum"): DFA (e·B_l at every feedback point) whose B_l estimate the output
  Jacobian ∂y/∂h_l.  Each training forward adds a perturbation u_l ~ N(0, I) (torch.randn_like,
  global RNG, in firing order) to the tangent of every point's output h_l; the output's tangent
  is then t = Σ_k J_k u_k (J_k = ∂y/∂h_k, per example), and since the u's are independent with
  identity covariance, E[t u_lᵀ] = J_l.  B_l follows the batch mean of t·u_lᵀ with momentum β:
  B_l ← β·B_l + (1-β)·mean_b t_b u_{l,b}ᵀ (the paper's feedback update; its code takes this
  step with Adam on the gradient B_l - mean t uᵀ).  B_l starts from DFA's random draw, is a
  buffer (in ``state_dict``), and is updated before the backward pass that uses it.  Under DDP
  the estimates are averaged over the ranks, so every replica keeps the same B_l.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.distributed as dist
from torch import nn

from .heads import replace
from .host_scalars import host_scalars
from .wrapper import FeedbackModel


# -- forward gradient (Baydin et al. 2022) -------------------------------------------------------
class _ForwardGradient(torch.autograd.Function):
    """Identity on y; in backward, ∇L·v = Σ (∂L/∂y)·(∂y/∂θ·v) and each parameter gets (∇L·v)·v_p."""

    @staticmethod
    def forward(ctx, y, tangent, directions, *params):
        ctx.tangent, ctx.directions = tangent, directions
        return y.clone()

    @staticmethod
    def backward(ctx, grad_y):
        tangent, directions = ctx.tangent, ctx.directions
        ctx.tangent = ctx.directions = None
        d = (grad_y.float() * tangent.float()).sum()  # the directional derivative ∇L·v
        return (None, None, None, *[(d * v.float()).to(v.dtype) for v in directions])


class ForwardGradientModel(FeedbackModel):
    """A network trained by forward gradients: g = (∇L·v)·v from one forward-mode pass."""

    def __init__(self, net: nn.Module, rule, num_classes=None, seed=None):
        super().__init__(net, rule, [], num_classes)
        device = self._device
        first = int(seed) if seed is not None else int(torch.randint(0, 2**31, (1,)))
        self.register_buffer("direction_seed", torch.tensor(first, dtype=torch.long, device=device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=device))

    def directions(self, step: int | None = None) -> list[torch.Tensor]:
        """v for ``step`` (default: the last step taken), one tensor per trainable parameter of
        ``net`` in ``named_parameters`` order: v ~ N(0, I) from (seed, step)."""
        step = host_scalars(self).get(self, "steps") - 1 if step is None else int(step)
        if step < 0:
            raise ValueError("no forward-gradient step has been taken yet")
        params = [p for p in self.net.parameters() if p.requires_grad]
        device = params[0].device if params else torch.device("cpu")
        gen = torch.Generator(device=device)
        gen.manual_seed((host_scalars(self).get(self, "direction_seed") * 1_000_003 + step) % 2**62)
        return [torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype) for p in params]

    def forward(self, *args, target: torch.Tensor | None = None, **kwargs):
        if not torch.is_grad_enabled() or not self._cut:
            return self.net(*args, **kwargs)
        return self._forward_gradient(args, kwargs)

    @torch.compiler.disable  # dual tensors: run eagerly inside a compiled caller
    def _forward_gradient(self, args, kwargs):
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("forward_grad found no trainable parameter in the model")
        vs = self.directions(host_scalars(self).increment(self, "steps"))
        with torch.no_grad(), fwAD.dual_level():  # no reverse graph through the network
            duals = {n: fwAD.make_dual(p.detach(), v) for (n, p), v in zip(named, vs)}
            out = torch.func.functional_call(self.net, duals, args, kwargs, strict=False)
            y, put = _split_output(out)
            y_primal, tangent = fwAD.unpack_dual(y)
            if tangent is None:  # the output does not depend on any parameter
                tangent = torch.zeros_like(y_primal)
            y_primal, tangent = y_primal.clone(), tangent.clone()
        y = _ForwardGradient.apply(y_primal, tangent, vs, *(p for _, p in named))
        return put(y)

    def extra_repr(self):
        return f"rule={self.rule!r}, one N(0, I) direction over every parameter per step"


# -- forward direct feedback alignment (Bacho & Chu 2024) ---------------------------------------
class FDFAModel(FeedbackModel):
    """DFA whose B_l follow forward-mode estimates of ∂y/∂h_l with momentum (module docstring)."""

    _perturb: list | None = None

    def forward(self, *args, target: torch.Tensor | None = None, **kwargs):
        if not self.built:
            self._build(args, kwargs)
        if not (self.training and torch.is_grad_enabled() and self._cut):
            return super().forward(*args, target=target, **kwargs)
        if self.head != "none":
            raise ValueError(
                f"method 'fdfa' estimates the Jacobian of the output, but this network ends in "
                f"{self.head}; end it at the logits and use cross_entropy on them"
            )
        return self._forward_estimating(args, kwargs, target)

    @torch.compiler.disable  # dual tensors: run eagerly inside a compiled caller
    def _forward_estimating(self, args, kwargs, target):
        tangents: list = []

        def take_tangent(module, inputs, out):  # the output: keep its tangent, pass its primal on
            y, put = _split_output(out)
            primal, tangent = fwAD.unpack_dual(y)
            tangents.append(tangent)
            return put(primal)

        if len(self.heads) != 1:
            raise ValueError(
                f"method 'fdfa' estimates the Jacobian of one output, but the model "
                f"has {len(self.heads)} heads ({', '.join(h.name for h in self.heads)})"
            )
        handle = self.net.register_forward_hook(take_tangent)
        self._perturb, self._head_tangents = [], tangents
        try:
            with fwAD.dual_level():
                out = super().forward(*args, target=target, **kwargs)
                perturb = self._perturb
        finally:
            handle.remove()
            self._perturb, self._head_tangents = None, None
        if tangents and tangents[0] is not None:  # the head's, taken where it is produced
            self._update_feedback(tangents[0], perturb)
        return out

    def _inject_head(self, k, z):
        """The head's output arrives dual: keep its tangent t = Σ_l (∂y/∂h_l)·u_l, pass the primal
        on to the injection (a custom Function takes no dual tensors)."""
        if self._perturb is not None and torch.is_tensor(z):
            z, tangent = fwAD.unpack_dual(z)
            self._head_tangents.append(tangent)
        return super()._inject_head(k, z)

    def _record(self, point, h):
        if self._perturb is None or not torch.is_tensor(h):
            return super()._record(point, h)
        if self.point_index(point) is None or self._tape is None:  # some other model's point
            return h
        primal, tangent = fwAD.unpack_dual(h)
        i = self.point_index(point)
        out = super()._record(point, primal)  # the carrier for e·B_l, and primal cut off
        u = torch.randn_like(primal)
        self._perturb.append((i, u))
        return fwAD.make_dual(out, u if tangent is None else tangent + u)

    @torch.no_grad()
    def _update_feedback(self, tangent, perturb):
        beta = float(self.rule.opts.get("momentum", self.rule.default_momentum))
        estimates = []
        for i, u in perturb:
            t = (
                tangent.reshape(-1, tangent.shape[-1])
                if self.token[i]
                else tangent.reshape(tangent.shape[0], -1)
            )
            # a (batch, seq, d) point under a (batch, M) head shares one (M, d) B_l over the
            # positions: E[t·u_pᵀ] = ∂y/∂h_p, so the mean over positions p estimates their mean
            u2 = u.mean(1) if self.layout[i] == "broadcast" else u.reshape(t.shape[0], -1)
            estimates.append((t.float().t() @ u2.float()) / t.shape[0])  # mean of t·uᵀ: (M, N)
        _average_over_ranks(estimates)
        for (i, _), est in zip(perturb, estimates):
            b = self.feedback[i].matrix
            b.mul_(beta).add_(est.to(b.dtype), alpha=1.0 - beta)


def _split_output(y):
    """(the prediction tensor, a function putting another in its place): a tensor, a tuple
    starting with one, or an object holding ``logits``."""
    if isinstance(y, torch.Tensor):
        key = None
    elif isinstance(y, dict) and isinstance(y.get("logits"), torch.Tensor):
        key = "logits"
    elif isinstance(y, tuple) and y and isinstance(y[0], torch.Tensor):
        key = 0
    else:
        raise TypeError(
            f"the model must return its output tensor, a tuple starting with it, or "
            f"an object with .logits; got {type(y).__name__}"
        )
    return (y if key is None else y[key]), (lambda t: replace(y, key, t))


def _average_over_ranks(tensors):
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t)
            t.div_(dist.get_world_size())


def forward_gradient_reference(model: ForwardGradientModel, x, y, loss_fn) -> dict:
    """The last step's g = (∇L·v)·v recomputed with BP's ∇L (plain autograd on ``model.net``)
    and the step's v (:meth:`ForwardGradientModel.directions`): Baydin et al. 2022, Eq. 3."""
    named = [(n, p) for n, p in model.net.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model.net(x), y), [p for _, p in named], allow_unused=True)
    vs = model.directions()
    d = sum((g.double() * v.double()).sum() for g, v in zip(grads, vs) if g is not None)
    return {n: (d * v.double()).to(v.dtype) for (n, _), v in zip(named, vs)}
