"""The converted model: runs the user's network and routes each rule's signal into it.

Gradient convention.  For a direct rule the graph is cut at every feedback point: the next block
sees the point's output detached.  At point l, ``_Point`` taps h_l and returns a small *carrier*
tensor shaped like the network output; the output y passes through ``_Inject``, an identity in
the forward pass, that also takes every carrier.  In backward, ``_Inject`` receives
∂L/∂y, gives y its true gradient (so the output block learns as in BP), turns it into the output
error e = ∂L/∂z at the logits z (below), and hands e to every carrier.  Each ``_Point`` then
gives h_l the gradient its rule chooses (e·B_l for DFA).  Autograd reaches a point only after
every later block, so one signal exists at a time, as BP's δ does; inside each block autograd
applies f' and forms ∂L/∂W, and no block computes a gradient for its input: the Wᵀ·δ chain BP
needs is never built.  Everything travels as autograd tensors, so ``torch.compile`` traces it.

The error is taken at the logits: a network ending in ``log_softmax`` or ``softmax`` over its
last dimension feeds back e = ∂L/∂z for the z entering it, so ``nll_loss`` on log-probabilities
gives the hidden gradients of ``cross_entropy`` on logits.  For any other output, e = ∂L/∂y.
With an output (batch, seq, classes) and a point (batch, seq, d), each position gets its own
error: δ_t = e_t·B_l with B_l of shape (classes, d) (Launay et al., 2020, token-level DFA).

Shapes are found by probing the network with two batch sizes (:meth:`FeedbackModel._build`), at
convert time when an input can be made, else at the first forward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import torch
from torch import nn

from .feedback import child_generator, init_std, make_feedback, seeded_generator
from .layers import is_weight_layer
from .points import ACTIVE, FeedbackPoint
from .rules import Rule
from .validate import Problem, UnsupportedModelError

class ProbeError(ValueError):
    """A probe forward with a made-up or given input failed."""


_HEADS = {"LogSoftmaxBackward0": "log_softmax", "SoftmaxBackward0": "softmax"}


class _Point(torch.autograd.Function):
    """Taps h_l: returns a zero carrier shaped like the output; in backward, the carrier's
    gradient is the output error e, and h_l gets the rule's signal (and B_l its gradient)."""

    @staticmethod
    def forward(ctx, h, owner, i, carrier_shape, target, *params):
        ctx.owner, ctx.i, ctx.target, ctx.shape = owner, i, target, h.shape
        if owner.rule.needs_activations:
            ctx.save_for_backward(h)
        return h.new_zeros(carrier_shape)

    @staticmethod
    def backward(ctx, e):
        owner: FeedbackModel = ctx.owner
        rule, fb, target = owner.rule, owner.feedback[ctx.i], ctx.target
        token = owner.token[ctx.i]
        e2 = e.reshape(-1, e.shape[-1]) if token else e.reshape(e.shape[0], -1)  # (rows, M)
        if token and target is not None:
            target = target.reshape(e2.shape[0], *target.shape[2:])
        grad_h = None
        if ctx.needs_input_grad[0]:
            flat = torch.Size((e2.shape[0], fb.num_neurons))
            grad_h = rule.point_signals(e2, [fb], [flat], target)[0].view(ctx.shape)
            if rule.scale_free:  # sign(e), y*: carry GradScaler's loss scale (e has it)
                grad_h = owner.scaled(grad_h)
        grads = [None] * len(owner.feedback[ctx.i]._parameters)
        if any(ctx.needs_input_grad[5:]):
            h = ctx.saved_tensors[0]
            grads = rule.feedback_grads(e2, [h.reshape(e2.shape[0], -1)], [fb], target)
        return (grad_h, None, None, None, None, *grads)


class _Inject(torch.autograd.Function):
    """Identity on y; on the way back, ∂L/∂y -> (y's true gradient, e at the logits per carrier)."""

    @staticmethod
    def forward(ctx, head, y, *carriers):
        ctx.head, ctx.shapes = head, [c.shape for c in carriers]
        if head != "none":
            ctx.save_for_backward(y)
        return y.clone()

    @staticmethod
    def backward(ctx, grad_y):
        e = grad_y
        if ctx.head == "log_softmax":  # y = log p: ∂L/∂z = g - p·Σg
            (y,) = ctx.saved_tensors
            e = grad_y - y.exp() * grad_y.sum(-1, keepdim=True)
        elif ctx.head == "softmax":  # y = p: ∂L/∂z = p·(g - Σ g·p)
            (p,) = ctx.saved_tensors
            e = p * (grad_y - (grad_y * p).sum(-1, keepdim=True))
        return (None, grad_y, *[e.reshape(s) for s in ctx.shapes])


class _Deliver(torch.autograd.Function):
    """Identity on y; in backward, hands the gradients an update-unlocked rule computed during
    the forward pass to their parameters.  They are computed and their graph freed at once; only
    their accumulation waits for the backward pass, so DistributedDataParallel sees every
    parameter receive its gradient in backward, as it expects, and averages them."""

    @staticmethod
    def forward(ctx, grads, y, *params):
        ctx.grads = grads
        return y.clone()

    @staticmethod
    def backward(ctx, grad_y):
        grads, ctx.grads = ctx.grads, None
        return (None, grad_y, *grads)


class FeedbackModel(nn.Module):
    """A network trained with a credit-assignment rule; build it with :func:`ssdfa.convert`.

    Forward returns the network's output unchanged.  ``feedback`` holds one module per feedback
    point (:mod:`ssdfa.feedback`), in the order the points fire; it is part of ``state_dict``.
    """

    def __init__(self, net: nn.Module, rule: Rule, points: list[tuple[str, nn.Module]],
                 num_classes: int | None = None, *, seed: int | None = None,
                 feedback_scale: float = 1.0, feedback_init: str = "ours",
                 auto_points: bool = False,
                 problems: list | None = None, grad_scaler=None):
        super().__init__()
        self.net = net
        self.rule = rule
        self.point_names = [name for name, _ in points]
        self.num_classes = num_classes
        self.feedback = nn.ModuleList()
        self.grad_scaler = grad_scaler
        # plain lists (not registered twice): deepcopy maps them onto the copied net's points
        self._points = [point for _, point in points]
        self.token: list[bool] = []  # per point: one error per position (Launay et al.)
        self._shapes: list[tuple] = []  # per point: its shape without the batch (and seq) dims
        self.head = "none"  # "log_softmax"/"softmax": e is taken at their input z
        self.built = not rule.direct
        self._seed, self._scale = seed, feedback_scale
        self._init = feedback_init
        self._auto, self._problems = auto_points, list(problems or [])
        self._cut = True
        self._tape: list | None = None
        self._target = None
        self._frozen: list = []  # shallow: hidden parameters marked requires_grad=False
        self._early: dict = {}  # parameter -> gradient computed in the forward pass (unlocked)

    # -- the forward pass ---------------------------------------------------------------------
    def forward(self, *args, target: torch.Tensor | None = None, **kwargs):
        """Run the network; for a direct rule in grad mode, arm the feedback injection.

        ``target`` (class indices or one-hot) is only read by rules that feed the target back.
        """
        if not self.built:
            self._build(args, kwargs)
        if not self.rule.direct or not torch.is_grad_enabled() or not self._cut:
            return self.net(*args, **kwargs)
        local = self.rule.local and self.training  # update-unlocked rules (DRTP unlocked=True)
        if local and target is None:
            raise ValueError(
                f"method {self.rule.name!r} with unlocked=True trains each block during the "
                "forward pass and needs the target: call model(x, target=y), or evaluate under "
                "torch.no_grad() or model.eval()")
        if self.rule.scale_free and self.grad_scaler is None and _fp16_autocast(self._device.type):
            raise RuntimeError(
                f"method {self.rule.name!r} feeds back a signal without the size of e (a sign or "
                "the target), so it cannot carry GradScaler's loss scale by itself under fp16 "
                "autocast: pass your scaler, ssdfa.convert(..., grad_scaler=scaler) or set "
                "model.grad_scaler = scaler (False if you use none), or use bf16 autocast")
        if self.rule.needs_target and target is not None:
            _check_labels(target, self.num_classes)
        self._tape, self._target, self._local, self._early = [], target, local, {}
        if local:  # every point's early gradients are taken with respect to these
            self._trainable = [p for p in self.net.parameters() if p.requires_grad]
        ACTIVE.append(self)
        try:
            y = self.net(*args, **kwargs)
        finally:
            ACTIVE.remove(self)
            tape, self._tape, self._target = self._tape, None, None
        y, put = _split_output(y)
        fired = [i for i, _ in tape]
        if len(set(fired)) != len(fired):
            raise RuntimeError(
                "a feedback point fired twice in one forward pass; each ssdfa.FeedbackPoint must "
                "be used once (create one marker per hidden block)")
        early, self._early = self._early, {}
        if early:
            return put(_Deliver.apply(list(early.values()), y, *early))
        carriers = [c for _, c in tape if c is not None]
        if not carriers:
            return put(y)
        for c in carriers:
            lead = c.shape[:-1] if c.dim() == 3 and y.dim() == 3 else c.shape[:1]
            if tuple(y.shape[:len(lead)]) != tuple(lead):
                raise ValueError(
                    f"the output has shape {tuple(y.shape)} but a feedback point saw a batch of "
                    f"{tuple(lead)}; every point must hold the batch in its first dimension")
        return put(_Inject.apply(self.head, y, *carriers))

    def _record(self, point: FeedbackPoint, h: torch.Tensor) -> torch.Tensor:
        """What a point hands the model during its forward pass; the next block gets h detached."""
        i = self.point_index(point)
        if i is None or self._tape is None:  # a marker of some other model
            return h
        self._check_shape(i, h)
        if self._local:  # this block's gradients are computed now and its graph freed at once
            if h.requires_grad:
                signal = self.rule.local_signal(self.feedback[i], self._target, h)
                signal = self.scaled(signal) if self.rule.scale_free else signal
                params = self._trainable
                for p, g in zip(params, torch.autograd.grad(h, params, signal, allow_unused=True)):
                    if g is not None:
                        self._early[p] = g if p not in self._early else self._early[p] + g
            self._tape.append((i, None))
            return h.detach()
        carrier = None
        if self.rule.inject and h.requires_grad:
            shape = (*h.shape[:2], self.num_classes) if self.token[i] else (h.shape[0], self.num_classes)
            carrier = _Point.apply(h, self, i, shape, self._target, *self.feedback[i]._parameters.values())
        self._tape.append((i, carrier))
        return h.detach()  # cut: the next block never sends a gradient back here

    def point_index(self, point) -> int | None:
        for i, p in enumerate(self._points):
            if p is point:
                return i
        return None

    def _check_shape(self, i, h):
        skip = 2 if self.token[i] else 1
        if tuple(h.shape[skip:]) != self._shapes[i]:
            want = ("(batch, seq, " if skip == 2 else "(batch, ") + ", ".join(map(str, self._shapes[i])) + ")"
            raise ValueError(
                f"feedback point {self.point_names[i]!r} got activations of shape {tuple(h.shape)}, "
                f"but its feedback matrix was drawn for {want} when the model was converted: "
                "feed inputs of the size it was converted with, or convert again for this size")

    def scaled(self, signal: torch.Tensor) -> torch.Tensor:
        """``signal`` times GradScaler's current loss scale (none: unchanged), for signals that
        ignore |e|; multiplied in fp32, as 2^16 itself overflows fp16."""
        scaler = self.grad_scaler
        if not scaler or not scaler.is_enabled():
            return signal
        scale = scaler._get_scale_async()  # a tensor on the device: no sync
        if scale is None:  # before the scaler's first scale()
            return (signal.float() * float(scaler._init_scale)).to(signal.dtype)
        return (signal.float() * scale.to(signal.device)).to(signal.dtype)

    # -- building: shapes, head, feedback matrices --------------------------------------------
    @torch.compiler.disable
    def _build(self, args, kwargs):
        """Probe the network with two batch sizes; place residual points; draw each B_l."""
        from .placement import hook_points, residual_blocks

        if self.built:
            return
        if not args and not kwargs:
            raise ValueError("call the model with its input")
        if self._auto:
            names = residual_blocks(self.net, *_batch_variant((args, kwargs), 2))
            if not names:
                self._problems.append(Problem(
                    "", type(self.net).__name__, "no residual block found either (a module whose "
                    "output adds two paths from its input)", "Place the points yourself"))
                raise UnsupportedModelError(self._problems, self.rule.name)
            points = hook_points(self.net, names)
            self.point_names = [n for n, _ in points]
            self._points = [p for _, p in points]
            self._auto = False
        small = _probe(self.net, self._points, *_batch_variant((args, kwargs), 2))
        large = _probe(self.net, self._points, *_batch_variant((args, kwargs), 3))
        y2, y3 = small["y"], large["y"]
        if y2.shape[0] != 2 or y3.shape[0] != 3 or y2.shape[1:] != y3.shape[1:]:
            raise ValueError(
                f"the model's output ({tuple(y3.shape)} for a batch of 3) does not hold the batch "
                "in its first dimension; ssdfa needs batch-first inputs and outputs (e.g. "
                "batch_first=True for nn.Transformer* layers)")
        missing = [n for n, p in zip(self.point_names, self._points) if id(p) not in large["fired"]]
        if missing:
            raise UnsupportedModelError([
                Problem(name, "FeedbackPoint", "never reached in the forward pass",
                        "Remove it or make sure forward() calls it") for name in missing
            ], self.rule.name)
        problems = []
        for name, p in zip(self.point_names, self._points):
            a, b = small["fired"][id(p)][1], large["fired"][id(p)][1]
            if not (a[0] == 2 and b[0] == 3 and a[1:] == b[1:]):
                moved = [d for d in range(min(len(a), len(b))) if a[d] != b[d]]
                problems.append(Problem(
                    name, "point", f"its output {tuple(b)} for a batch of 3 does not hold the batch "
                    f"in dimension 0 (it moved dimension {moved})",
                    "Make the block batch-first (e.g. batch_first=True), or choose other points="))
        if problems:
            raise UnsupportedModelError(problems, self.rule.name)
        order = sorted(range(len(self._points)), key=lambda k: large["fired"][id(self._points[k])][0])
        self._points = [self._points[k] for k in order]
        self.point_names = [self.point_names[k] for k in order]
        y = y3
        fn = y.grad_fn
        dim = int(getattr(fn, "_saved_dim", 0))
        dim = dim - 2**64 if dim >= 2**63 else dim  # -1 comes back as an unsigned int64
        if type(fn).__name__ in _HEADS and dim in (-1, y.dim() - 1):
            self.head = _HEADS[type(fn).__name__]
        shapes = [large["fired"][id(p)][1] for p in self._points]
        self.token = [y.dim() == 3 and len(s) == 3 and s[1] == y.shape[1] for s in shapes]
        self._shapes = [tuple(s[2:]) if t else tuple(s[1:]) for s, t in zip(shapes, self.token)]
        width = int(y.shape[-1]) if any(self.token) else int(y[0].numel())
        if any(self.token) and not all(self.token):
            flat = [n for n, t in zip(self.point_names, self.token) if not t]
            raise UnsupportedModelError([Problem(n, "point", "has no sequence dimension while the "
                                                 "output is (batch, seq, classes)",
                                                 "Choose points of shape (batch, seq, d)")
                                         for n in flat], self.rule.name)
        if self.num_classes is not None and self.num_classes != width:
            raise ValueError(
                f"num_classes={self.num_classes} but the model outputs {width} values per "
                f"{'position' if any(self.token) else 'example'} (output shape "
                f"{tuple(y.shape)}); the feedback matrices need the true output width")
        self.num_classes = width
        if self.rule.inject or self.rule.local:  # shallow feeds nothing back: no B_l
            base = seeded_generator(self._seed)
            device = self._device
            for i, p in enumerate(self._points):
                producer = large["fired"][id(p)][2]
                neurons = math.prod(self._shapes[i])
                gen = child_generator(base)
                spec = self.rule.feedback_spec(width)
                std = init_std(self._init, producer, neurons, width, spec.connections)
                self.feedback.append(make_feedback(width, neurons, spec, generator=gen,
                                                   std=std * self._scale).to(device))
        self.built = True
        if not (self.rule.inject or self.rule.local):
            self._freeze_hidden(_batch_variant((args, kwargs), 2))

    def _freeze_hidden(self, inputs):
        """Shallow learning: hidden parameters get no gradient, so mark them frozen
        (``requires_grad=False``); DistributedDataParallel then expects none for them."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        was = self.net.training
        self.net.eval()
        try:
            with torch.enable_grad():
                y = self(*inputs[0], **inputs[1])
            grads = torch.autograd.grad(y.float().sum(), params, allow_unused=True) \
                if y.requires_grad else [None] * len(params)
        finally:
            self.net.train(was)
        self._frozen = [p for p, g in zip(params, grads) if g is None]
        for p in self._frozen:
            p.requires_grad_(False)

    @property
    def _device(self) -> str:
        return next((p.device for p in self.net.parameters()), torch.device("cpu"))

    # -- inspection and control ---------------------------------------------------------------
    def feedback_matrices(self) -> "OrderedDict[str, torch.Tensor]":
        """{point name: dense B_l of shape (classes, neurons at the point)}, in firing order;
        (classes, d) for a token-level point."""
        return OrderedDict(
            (name, fb.dense()) for name, fb in zip(self.point_names, self.feedback))

    def points(self) -> "OrderedDict[str, FeedbackPoint]":
        """{point name: its marker}, in firing order (a hooked block's output passes its marker)."""
        return OrderedDict(zip(self.point_names, self._points))

    @contextlib.contextmanager
    def backprop(self):
        """Within this block the model computes exact BP gradients (for alignment analyses)."""
        old, self._cut = self._cut, False
        for p in self._frozen:  # shallow's hidden parameters take BP's gradient here too
            p.requires_grad_(True)
        try:
            yield self
        finally:
            self._cut = old
            for p in self._frozen:
                p.requires_grad_(False)

    def unwrap(self) -> nn.Module:
        """The plain network (parameters shared, not copied); its points are identities, and its
        ``state_dict`` loads into a fresh copy of your model."""
        return self.net

    def extra_repr(self):
        return f"rule={self.rule!r}, points={self.point_names}"


@torch.compiler.disable
def _check_labels(target, num_classes):
    """Labels in range, read eagerly: the backward pass that uses them cannot read values."""
    from .rules.drtp import check_labels

    check_labels(target, num_classes)


def _fp16_autocast(kind: str) -> bool:
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16


def _batch_variant(inputs, n: int):
    """(args, kwargs) with every tensor that holds the batch in dim 0 cut or repeated to n rows."""
    args, kwargs = inputs
    first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
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


def _probe(net, points, args, kwargs):
    """One grad-enabled eval forward: for each point (by id) its firing rank, its output shape
    and the weight layer that fired last before it (it sets the feedback scale)."""
    fired: dict[int, tuple] = {}
    last_weight: list[nn.Module | None] = [None]
    handles = []
    for point in points:
        def hook(mod, inp, out):
            if id(mod) not in fired:
                fired[id(mod)] = (len(fired), tuple(out.shape), last_weight[0])
        handles.append(point.register_forward_hook(hook))
    for mod in net.modules():
        if is_weight_layer(mod):
            handles.append(mod.register_forward_hook(
                lambda m, i, o: last_weight.__setitem__(0, m)))
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
            "ssdfa.convert") from exc
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return {"fired": fired, "y": _split_output(y)[0]}


def _split_output(y):
    """(the output tensor the error is taken at, a function putting a new one in its place): a
    tensor, a tuple starting with one, or a Hugging Face-style output holding ``logits``."""
    if isinstance(y, torch.Tensor):
        return y, lambda t: t
    if isinstance(y, dict) and isinstance(y.get("logits"), torch.Tensor):
        if y.get("loss") is not None:
            raise ValueError(
                "the model computed its loss itself (it returned `loss`, e.g. labels= was passed), "
                "from logits the feedback never sees; call it without labels and compute the "
                "loss from outputs.logits")

        def put(t):
            y["logits"] = t
            return y
        return y["logits"], put
    if isinstance(y, tuple) and y and isinstance(y[0], torch.Tensor):
        return y[0], lambda t: (t, *y[1:])
    raise TypeError(f"the model must return its output tensor (batch, classes), a tuple starting "
                    f"with it, or an object with .logits; got {type(y).__name__}")
