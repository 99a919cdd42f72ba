"""The converted model: runs the user's network and routes each rule's signal into it.

For a direct rule the graph is cut at every feedback point: the next block sees the point's
output detached, so no block computes a gradient for its input and the Wᵀ·δ chain BP needs is
never built.  The output error e = ∂L/∂z is taken at each head's logits z (behind a last-dim
(log_)softmax, at its input, so ``nll_loss`` on log-probabilities trains as ``cross_entropy``)
and reaches the points through :mod:`ssdfa.injection`: all signals at once from one stacked
product, or one block at a time.  The output block learns as in BP; inside each block autograd
applies f' and forms ∂L/∂W.  A (batch, seq, d) point under a (batch, seq, classes) output gets an
error per position, δ_t = e_t·B_l (Launay et al., 2020).  Shapes, heads and layouts are found by
:mod:`ssdfa.probe` at convert time when an input can be made, else at the first forward pass;
B_l are drawn by :mod:`ssdfa.drawing`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
from torch import nn

from .drawing import adopt_loaded, draw_feedback, feedback_from_state
from .errors import ProbeError  # noqa: F401  (re-exported)
from .feedback import FeedbackGroup
from .heads import check_head_output, check_reached, hook_heads, place, replace, top_level
from .injection import Deliver, Inject, InjectAll, Point, Unreached
from .loss_scale import fp16_autocast, watch
from .placement import residual_points
from .points import ACTIVE, FeedbackPoint
from .probe import (
    batch_variant,
    check_point_shape,
    find_layout,
    first_input,
    output_width,
    unreached_parameters,
)
from .rules import CUT, FEEDS_BACK, Kind, Rule
from .rules.drtp import check_labels_traced
from .signature import SHOWN, new_unsigned, signed_class

SIGNALS = ("at_once", "per_block")


class FeedbackModel(nn.Module):
    """A network trained with a credit-assignment rule; build it with :func:`ssdfa.convert`.

    Forward returns the network's output unchanged.  ``feedback`` holds one module per feedback
    point and output head (:mod:`ssdfa.feedback`; index h·P + l for head h, point l), in the order
    the points fire; it is part of ``state_dict``.  ``heads`` lists where e is taken
    (:mod:`ssdfa.heads`).
    """

    def __init__(
        self,
        net: nn.Module,
        rule: Rule,
        points: list[tuple[str, nn.Module]],
        num_classes: int | None = None,
        *,
        seed: int | None = None,
        feedback_scale: float = 1.0,
        feedback_init: str = "ours",
        auto_points: bool = False,
        problems: list | None = None,
        grad_scaler=None,
        signals: str = "at_once",
    ):
        super().__init__()
        if signals not in SIGNALS:
            raise ValueError(f"signals={signals!r}; choose one of: {', '.join(SIGNALS)}")
        self.signals = signals  # "at_once" or "per_block" (ssdfa.injection)
        self.net = net
        self.rule = rule
        self.point_names = [name for name, _ in points]
        self.num_classes = num_classes
        self.feedback = nn.ModuleList()
        self.register_buffer("applied_scale", torch.ones(()), persistent=False)
        self.grad_scaler = grad_scaler
        # plain lists (not registered twice): deepcopy maps them onto the copied net's points
        self._points = [point for _, point in points]
        self.layout: list[str] = []  # per point: "flat", "token" (an error per position) or
        # "broadcast" (a (batch, seq, d) point under a (batch, M) head: every position gets e·B)
        self._shapes: list[tuple] = []  # per point: its shape without the batch (and seq) dims
        self.heads: list = []  # ssdfa.heads.Head, in the order their errors are laid side by side
        self.built = rule.kind not in CUT
        self._seed, self._scale = seed, feedback_scale
        self._init = feedback_init
        self._auto, self._problems = auto_points, list(problems or [])
        self._cut = True
        self._tape: list | None = None
        self._target: torch.Tensor | None = None
        self._fired: list = []  # per head: how many carriers existed when it ran (None: not yet)
        self._groups: dict = {}  # points -> their FeedbackGroup (stacked B, at once)
        self._frozen: list = []  # shallow: hidden parameters marked requires_grad=False
        self._early: dict = {}  # parameter -> gradient computed in the forward pass (unlocked)
        self.__class__ = signed_class(type(self), net)  # forward shows the net's arguments
        for name in SHOWN:  # what Hugging Face's Trainer reads off the model it trains
            if hasattr(net, name) and not isinstance(getattr(net, name), nn.Module):
                setattr(self, name, getattr(net, name))

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "grad_scaler" and value:
            watch(value, self)

    @property
    def token(self) -> list[bool]:
        """Per point: does it get an error per sequence position (token-level layout)?"""
        return [lay != "flat" for lay in self.layout]

    @property
    def head(self) -> str:
        """'log_softmax'/'softmax' when the single head is returned behind one, else 'none'."""
        return self.heads[0].softmax if len(self.heads) == 1 else "none"

    # -- the signature tools read: the net's arguments plus ``target`` -----------------------
    def __reduce_ex__(self, protocol):
        """Pickled and deep-copied as the importable class; ``__setstate__`` signs it again."""
        fn, args, *rest = super().__reduce_ex__(protocol)
        base = getattr(type(self), "_signed_base", None)
        return (fn, args, *rest) if base is None else (new_unsigned, (base,), *rest)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__class__ = signed_class(type(self), self.net)

    # -- the forward pass ---------------------------------------------------------------------
    def forward(self, *args, target: torch.Tensor | None = None, **kwargs):
        """Run the network; for a direct rule in grad mode, arm the feedback injection.

        ``target`` (class indices or one-hot) is only read by rules that feed the target back.
        """
        first = first_input(args, kwargs)
        armed = not self.built or (self.rule.kind in CUT and torch.is_grad_enabled() and self._cut)
        if armed and first is not None and first.dim() > 0 and first.shape[0] == 0:
            raise ValueError(
                "the batch is empty (0 examples); skip empty batches, e.g. "
                "DataLoader(..., drop_last=True) or a check before the call"
            )
        if not self.built:
            self._build(args, kwargs)
        if self.rule.kind not in CUT or not torch.is_grad_enabled() or not self._cut:
            return self.net(*args, **kwargs)
        local = self.rule.kind is Kind.LOCAL and self.training  # update-unlocked rules (DRTP unlocked=True)
        if local and target is None:
            raise ValueError(
                f"method {self.rule.name!r} with unlocked=True trains each block during the "
                "forward pass and needs the target: call model(x, target=y), or evaluate under "
                "torch.no_grad() or model.eval()"
            )
        if self.rule.scale_free and self.grad_scaler is None and fp16_autocast(self._device.type):
            raise RuntimeError(
                f"method {self.rule.name!r} feeds back a signal without the size of e (a sign or "
                "the target), so it cannot carry GradScaler's loss scale by itself under fp16 "
                "autocast: pass your scaler, ssdfa.convert(..., grad_scaler=scaler) or set "
                "model.grad_scaler = scaler (False if you use none), or use bf16 autocast"
            )
        if self.rule.needs_target and target is not None:
            check_labels_traced(target, self.num_classes)
        self._tape, self._target, self._local, self._early = [], target, local, {}
        self._fired = [None] * len(self.heads)
        if local:  # every point's early gradients are taken with respect to these
            self._trainable = [p for p in self.net.parameters() if p.requires_grad]
        ACTIVE.append(self)
        try:
            y = self.net(*args, **kwargs)
            tape = self._tape
            fired = [i for i, _, _ in tape]
            if len(set(fired)) != len(fired):
                raise RuntimeError(
                    "a feedback point fired twice in one forward pass; each ssdfa.FeedbackPoint "
                    "must be used once (create one marker per hidden block)"
                )
            return self._finish(y, tape)
        finally:
            ACTIVE.remove(self)
            self._tape, self._target, self._early = None, None, {}

    def _finish(self, y, tape):
        """Inject at returned heads, pass side paths back to their points, check every point's
        signal reached a head, and mark outputs no gradient can reach."""
        for k, head in enumerate(self.heads):
            if head.marker is not None:
                continue
            items = dict(top_level(y))
            if head.key not in items:
                raise ValueError(
                    f"the model's {head.name} is missing from this call's output, "
                    "which it had when the model was converted"
                )
            y = replace(y, head.key, self._inject_head(k, items[head.key]))
        if self._early or any(c is not None for _, c, _ in tape):
            check_reached(self.heads, self._fired, tape, self.point_names)
        outs = {id(det): h for _, _, (h, det) in tape}
        for key, t in top_level(y):
            if id(t) in outs:  # a point's own output returned: its gradient is added there
                y = replace(y, key, outs[id(t)])
            elif (
                t.is_floating_point()
                and not t.requires_grad
                and t.dim() >= 1
                and tape
                and self._anchor is not None
            ):
                y = replace(y, key, Unreached.apply(place(key), t, self._anchor))
        return y

    @property
    def _anchor(self):
        return next((p for p in self.net.parameters() if p.requires_grad), None)

    def _inject_head(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """What head ``k``'s output becomes in this forward: the injection of every carrier."""
        if self._tape is None or not isinstance(z, torch.Tensor):
            return z
        if self._fired[k] is not None:
            raise RuntimeError(
                f"output head {self.heads[k].name!r} ran twice in one forward pass; ssdfa takes the "
                "output error once per head (call the head module once, or convert a model that "
                "returns each use separately)"
            )
        pairs = [(i, c) for i, c, _ in self._tape if c is not None]  # in firing order
        self._fired[k] = len(pairs)
        if self._early:  # update-unlocked: the gradients of every block, delivered in backward
            return Deliver.apply(list(self._early.values()), self, z, *self._early)
        if not pairs:
            return z
        head = self.heads[k]
        check_head_output(head, z, pairs, self.layout, self.point_names, self._at_once)
        softmax = head.softmax if head.marker is None else "none"
        if self._at_once:
            points = tuple(i for i, _ in pairs)
            params = [t for i in points for t in self.feedback[i]._parameters.values()]
            return InjectAll.apply(self, softmax, z, self._target, points, *(c for _, c in pairs), *params)
        start = sum(h.width for h in self.heads[:k])
        span = (start, start + head.width, self.num_classes)
        return Inject.apply(softmax, span, z, *(c for _, c in pairs))

    def _record(self, point: FeedbackPoint, h: torch.Tensor) -> torch.Tensor:
        """What a point hands the model during its forward pass; the next block gets h detached."""
        if self._local:  # this block's gradients are computed now and its graph freed at once
            return self._local_step(point, h)
        i = self.point_index(point)
        if i is None or self._tape is None:  # a marker of some other model
            return h
        check_point_shape(self.point_names[i], self.layout[i], self._shapes[i], h)
        det = h.detach()
        carrier = None
        if self.rule.inject and h.requires_grad:
            if self._at_once:  # the head's InjectAll takes h itself
                carrier = h
            else:
                total = self.num_classes  # ΣM_h: every head's errors side by side
                shape = (*h.shape[:2], total) if self.layout[i] == "token" else (h.shape[0], total)
                params = [t for fb in self.point_feedback(i) for t in fb._parameters.values()]
                carrier = Point.apply(h, self, i, shape, self._target, *params)
        self._tape.append((i, carrier, (h, det)))
        return det  # cut: the next block never sends a gradient back here

    @torch.compiler.disable  # autograd.grad in a forward pass: run eagerly, once, when compiled
    def _local_step(self, point, h):
        """Update-unlocked rules: the block before ``point`` gets its gradients now (its graph
        freed at once); they are handed to the parameters in backward (:class:`~ssdfa.injection.Deliver`).
        Under ``torch.compile`` all of it runs outside the graph, one graph break per point:
        dynamo cannot trace ``torch.autograd.grad``, and a compiled frame that compared the
        point's identity before that break was reused for the next point with the first one's
        index (it "fired twice"), so :class:`FeedbackPoint` calls this before any comparison.
        None when ``point`` is not this model's."""
        i = self.point_index(point)
        if i is None:  # a marker of some other model: FeedbackPoint asks the next owner
            return None
        if self._tape is None:
            return h
        check_point_shape(self.point_names[i], self.layout[i], self._shapes[i], h)
        if h.requires_grad:
            signal = self.rule.local_signal(self.feedback[i], self._target, h)
            params = self._trainable
            for p, g in zip(params, torch.autograd.grad(h, params, signal, allow_unused=True)):
                if g is not None:
                    self._early[p] = g if p not in self._early else self._early[p] + g
        det = h.detach()
        self._tape.append((i, None, (h, det)))
        return det

    def point_index(self, point) -> int | None:
        for i, p in enumerate(self._points):
            if p is point:
                return i
        return None

    def head_index(self, marker) -> int | None:
        for k, head in enumerate(self.heads):
            if head.marker is marker:
                return k
        return None

    def point_feedback(self, i: int) -> list:
        """Point i's feedback modules, one per head (B_{l,h})."""
        n = len(self._points)
        return [self.feedback[h * n + i] for h in range(len(self.heads))]

    @property
    def _at_once(self) -> bool:
        """Every signal from one stacked product at the head (one head; ``ssdfa.injection``)."""
        return self.signals == "at_once" and len(self.heads) == 1

    def feedback_group(self, points: tuple[int, ...]) -> FeedbackGroup:
        """The single head's feedback modules of ``points``, projected together."""
        if torch.compiler.is_compiling():  # traced into the graph: nothing kept on the side
            return FeedbackGroup([self.feedback[i] for i in points])
        group = self._groups.get(points)
        if group is None or any(a is not b for a, b in zip(group, (self.feedback[i] for i in points))):
            group = self._groups[points] = FeedbackGroup([self.feedback[i] for i in points])
        return group

    def error_slices(self, e2: torch.Tensor) -> list[torch.Tensor]:
        """The (rows, ΣM) errors split per head."""
        if len(self.heads) == 1:
            return [e2]
        return list(torch.split(e2, [h.width for h in self.heads], dim=1))

    def scaled(self, signal: torch.Tensor) -> torch.Tensor:
        """``signal`` times the loss scale this backward pass applied (1 unless the loss came
        from the watched ``GradScaler``'s ``scale()``); in fp32, as 2^16 overflows fp16."""
        if not self.grad_scaler:
            return signal
        return (signal.float() * torch.as_tensor(self.applied_scale).to(signal.device)).to(signal.dtype)

    # -- building: shapes, heads, feedback matrices --------------------------------------------
    @torch.compiler.disable
    @torch.inference_mode(False)  # a first call under inference_mode (an evaluation) builds too
    def _build(self, args, kwargs):
        """Place residual points if still to be found, probe the shapes and heads
        (:mod:`ssdfa.probe`), draw each B_{l,h} (:mod:`ssdfa.drawing`)."""
        if self.built:
            return
        if not args and not kwargs:
            raise ValueError("call the model with its input")
        if self._auto:
            points = residual_points(
                self.net, batch_variant((args, kwargs), 2), self._problems, self.rule.name
            )
            self.point_names, self._points = [n for n, _ in points], [p for _, p in points]
            self._auto = False
        found = find_layout(self.net, self.point_names, self._points, self.rule, (args, kwargs))
        self.point_names, self._points = found.names, found.points
        self.layout, self._shapes = found.layout, found.shapes
        self.heads, self.num_classes = found.heads, output_width(self.num_classes, found)
        hook_heads(self.net, found.heads)
        loaded, self.feedback = self.feedback, nn.ModuleList()  # B_l a state_dict brought, if any
        if self.rule.kind in FEEDS_BACK:  # shallow feeds nothing back: no B_l
            self.feedback = draw_feedback(
                self.rule,
                found.heads,
                found.shapes,
                found.producers,
                seed=self._seed,
                init=self._init,
                scale=self._scale,
                device=self._device,
            )
        if len(loaded):
            self.feedback = adopt_loaded(self.feedback, loaded, self.point_names)
        self.built = True
        if self.rule.kind not in FEEDS_BACK:
            self._freeze_hidden(batch_variant((args, kwargs), 2))

    def _freeze_hidden(self, inputs):
        """Shallow learning: hidden parameters get no gradient, so mark them frozen
        (``requires_grad=False``); DistributedDataParallel then expects none for them."""
        self._frozen = unreached_parameters(self, self.net, inputs)
        for p in self._frozen:
            p.requires_grad_(False)

    # -- loading a state_dict before the first call ------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Before the first call (shapes unknown, no B_l yet: a lazily sized model resumed, or
        Lightning's ``load_from_checkpoint``), make each feedback module from the shapes of the
        loaded tensors, so they load; the first forward pass checks them against the network."""
        if not self.built and not len(self.feedback) and (self.rule.kind in FEEDS_BACK):
            self.feedback.extend(
                feedback_from_state(
                    state_dict,
                    prefix + "feedback.",
                    self.num_classes,
                    self._device,
                    self.rule.learned_feedback,
                )
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def _device(self) -> torch.device:
        return next((p.device for p in self.net.parameters()), torch.device("cpu"))

    # -- inspection and control ---------------------------------------------------------------
    def feedback_matrices(self) -> OrderedDict[str, torch.Tensor]:
        """{point name: dense B_l of shape (classes, neurons at the point)}, in firing order;
        (classes, d) for a token-level point.  With several output heads, B_l stacks each head's
        B_{l,h} (rows in the order of ``heads``), so δ_l = [e_1, ..., e_H]·B_l = Σ_h e_h·B_{l,h}."""
        if not self.built and (self.rule.kind in FEEDS_BACK):
            raise RuntimeError(
                f"method {self.rule.name!r} draws its feedback matrices at the model's first "
                "forward pass, when the shapes at its points are known, and this model has not run "
                "yet: call it once on a batch, or pass example_input=a batch (or input_shape=) to "
                "ssdfa.convert"
            )
        if not self.feedback:
            return OrderedDict()
        return OrderedDict(
            (name, torch.cat([fb.dense() for fb in self.point_feedback(i)], 0))
            for i, name in enumerate(self.point_names)
        )

    def points(self) -> OrderedDict[str, nn.Module]:
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
