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
import inspect
import math
from collections import OrderedDict

import torch
from torch import nn

from .errors import ProbeError  # noqa: F401  (re-exported)
from .feedback import (DenseFeedback, FeedbackGroup, SparseFeedback, child_generator, init_std,
                       make_feedback, seeded_generator)
from .heads import find_heads, hook_heads, place, replace, top_level
from .injection import Deliver, Inject, InjectAll, Point, Unreached
from .layers import is_weight_layer
from .loss_scale import watch
from .points import ACTIVE, FeedbackPoint
from .rules import Rule
from .validate import Problem, UnsupportedModelError

SIGNALS = ("at_once", "per_block")


class FeedbackModel(nn.Module):
    """A network trained with a credit-assignment rule; build it with :func:`ssdfa.convert`.

    Forward returns the network's output unchanged.  ``feedback`` holds one module per feedback
    point and output head (:mod:`ssdfa.feedback`; index h·P + l for head h, point l), in the order
    the points fire; it is part of ``state_dict``.  ``heads`` lists where e is taken
    (:mod:`ssdfa.heads`).
    """

    def __init__(self, net: nn.Module, rule: Rule, points: list[tuple[str, nn.Module]],
                 num_classes: int | None = None, *, seed: int | None = None,
                 feedback_scale: float = 1.0, feedback_init: str = "ours",
                 auto_points: bool = False,
                 problems: list | None = None, grad_scaler=None, signals: str = "at_once"):
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
        self.built = not rule.direct
        self._seed, self._scale = seed, feedback_scale
        self._init = feedback_init
        self._auto, self._problems = auto_points, list(problems or [])
        self._cut = True
        self._tape: list | None = None
        self._target = None
        self._fired: list = []  # per head: how many carriers existed when it ran (None: not yet)
        self._groups: dict = {}  # points -> their FeedbackGroup (stacked B, at once)
        self._frozen: list = []  # shallow: hidden parameters marked requires_grad=False
        self._early: dict = {}  # parameter -> gradient computed in the forward pass (unlocked)
        self.__class__ = _signed_class(type(self), net)  # forward shows the net's arguments
        for name in _SHOWN:  # what Hugging Face's Trainer reads off the model it trains
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
        return (fn, args, *rest) if base is None else (_new_unsigned, (base,), *rest)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__class__ = _signed_class(type(self), self.net)

    # -- the forward pass ---------------------------------------------------------------------
    def forward(self, *args, target: torch.Tensor | None = None, **kwargs):
        """Run the network; for a direct rule in grad mode, arm the feedback injection.

        ``target`` (class indices or one-hot) is only read by rules that feed the target back.
        """
        first = _first_input(args, kwargs)
        armed = not self.built or (self.rule.direct and torch.is_grad_enabled() and self._cut)
        if armed and first is not None and first.dim() > 0 and first.shape[0] == 0:
            raise ValueError("the batch is empty (0 examples); skip empty batches, e.g. "
                             "DataLoader(..., drop_last=True) or a check before the call")
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
                    "must be used once (create one marker per hidden block)")
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
                raise ValueError(f"the model's {head.name} is missing from this call's output, "
                                 "which it had when the model was converted")
            y = replace(y, head.key, self._inject_head(k, items[head.key]))
        carriers = [c for _, c, _ in tape if c is not None]
        if carriers or self._early:
            unfired = [h.name for h, f in zip(self.heads, self._fired) if f is None]
            if len(unfired) == len(self.heads):
                raise RuntimeError(
                    f"no output head ({', '.join(unfired)}) ran in this forward pass, so no error "
                    "can reach the feedback points; call the model as it was converted")
            ran = [n for n in self._fired if n is not None]
            late = [self.point_names[i] for i, c, _ in tape if c is not None][min(ran):] if ran else []
            if late:
                raise RuntimeError(
                    f"feedback point(s) {', '.join(late)} ran after the output head, so their "
                    "signal would never arrive; points must come before the layer producing the "
                    "logits")
        outs = {id(det): h for _, _, (h, det) in tape}
        for key, t in top_level(y):
            if id(t) in outs:  # a point's own output returned: its gradient is added there
                y = replace(y, key, outs[id(t)])
            elif t.is_floating_point() and not t.requires_grad and t.dim() >= 1 and tape \
                    and self._anchor is not None:
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
                "returns each use separately)")
        pairs = [(i, c) for i, c, _ in self._tape if c is not None]  # in firing order
        self._fired[k] = len(pairs)
        if self._early:  # update-unlocked: the gradients of every block, delivered in backward
            return Deliver.apply(list(self._early.values()), self, z, *self._early)
        if not pairs:
            return z
        head = self.heads[k]
        for i, c in pairs:
            lead = (c.shape[:2] if self.layout[i] == "token" else c.shape[:1]) if self._at_once \
                else c.shape[:-1]
            want = tuple(z.shape[:2]) if self.layout[i] == "token" else tuple(z.shape[:1])
            if tuple(lead) != want or (self.layout[i] == "token" and z.dim() != 3):
                raise ValueError(
                    f"the output head {head.name!r} gave shape {tuple(z.shape)} but feedback point "
                    f"{self.point_names[i]!r} saw a batch of {tuple(lead)}; every point must hold "
                    "the batch (and, for token-level feedback, the sequence) in its first "
                    "dimensions, as when the model was converted")
        width = int(z.shape[-1]) if self.layout and self.layout[0] != "flat" else int(z[0].numel())
        if width != head.width:
            raise ValueError(
                f"the output head {head.name!r} gave {width} values per "
                f"{'position' if self.layout[0] != 'flat' else 'example'}, but its feedback "
                f"matrices were drawn for {head.width}; convert again for this output size")
        softmax = head.softmax if head.marker is None else "none"
        if self._at_once:
            points = tuple(i for i, _ in pairs)
            params = [t for i in points for t in self.feedback[i]._parameters.values()]
            return InjectAll.apply(self, softmax, z, self._target, points,
                                   *(c for _, c in pairs), *params)
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
        self._check_shape(i, h)
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
        self._check_shape(i, h)
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

    def _check_shape(self, i, h):
        skip = 1 if self.layout[i] == "flat" else 2
        if tuple(h.shape[skip:]) != self._shapes[i]:
            want = ("(batch, seq, " if skip == 2 else "(batch, ") + ", ".join(map(str, self._shapes[i])) + ")"
            raise ValueError(
                f"feedback point {self.point_names[i]!r} got activations of shape {tuple(h.shape)}, "
                f"but its feedback matrix was drawn for {want} when the model was converted: "
                "feed inputs of the size it was converted with, or convert again for this size")

    def scaled(self, signal: torch.Tensor) -> torch.Tensor:
        """``signal`` times the loss scale this backward pass applied (1 unless the loss came
        from the watched ``GradScaler``'s ``scale()``); in fp32, as 2^16 overflows fp16."""
        if not self.grad_scaler:
            return signal
        return (signal.float() * self.applied_scale.to(signal.device)).to(signal.dtype)

    # -- building: shapes, heads, feedback matrices --------------------------------------------
    @torch.compiler.disable
    @torch.inference_mode(False)  # a first call under inference_mode (an evaluation) builds too
    def _build(self, args, kwargs):
        """Probe the network with two batch sizes; place residual points; find the heads; draw
        each B_{l,h}."""
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
        self._check_batch_dims(small, large)
        order = sorted(range(len(self._points)), key=lambda k: large["fired"][id(self._points[k])][0])
        self._points = [self._points[k] for k in order]
        self.point_names = [self.point_names[k] for k in order]
        shapes = [large["fired"][id(p)][1] for p in self._points]
        seq = self._sequence_points(shapes, large, args, kwargs)
        last = max((large["fired"][id(p)][0] for p in self._points), default=-1)
        heads = find_heads(large["out"], 3, large["outputs"], large["order"], last,
                           {f[3] for f in large["fired"].values()}, any(seq), large["calls"])
        if self.rule.inject or self.rule.local:  # shallow feeds nothing back: any output will do
            self._check_heads(heads, large)
        self.layout = ["flat" if not q else ("token" if not heads or heads[0].sequence else "broadcast")
                       for q in seq]
        if any(seq) and not all(seq):
            flat = [n for n, q in zip(self.point_names, seq) if not q]
            raise UnsupportedModelError([Problem(n, "point", "has no sequence dimension while the "
                                                 "others are (batch, seq, d)",
                                                 "Choose points of shape (batch, seq, d)")
                                         for n in flat], self.rule.name)
        self._shapes = [tuple(s[2:]) if q else tuple(s[1:]) for s, q in zip(shapes, seq)]
        width = sum(h.width for h in heads)
        if self.num_classes is not None and self.num_classes != width \
                and not all(h.width == self.num_classes for h in heads):
            raise ValueError(
                f"num_classes={self.num_classes} but the model outputs {width} values per "
                f"{'position' if any(seq) else 'example'} ({', '.join(f'{h.name}: {h.width}' for h in heads)}); "
                "the feedback matrices need the true output width")
        self.heads, self.num_classes = heads, width
        hook_heads(self.net, heads)
        loaded, self.feedback = self.feedback, nn.ModuleList()  # B_l a state_dict brought, if any
        if self.rule.inject or self.rule.local:  # shallow feeds nothing back: no B_l
            self._draw_feedback(large)
        if len(loaded):
            self._adopt_loaded(loaded)
        self.built = True
        if not (self.rule.inject or self.rule.local):
            self._freeze_hidden(_batch_variant((args, kwargs), 2))

    def _check_batch_dims(self, small, large):
        y2, y3 = _first_output(small["out"]), _first_output(large["out"])
        if y2 is None or y3 is None or y2.dim() == 0 or y2.shape[0] != 2 or y3.shape[0] != 3 \
                or y2.shape[1:] != y3.shape[1:]:
            shape = None if y3 is None else tuple(y3.shape)
            raise ValueError(
                f"the model's output ({shape} for a batch of 3) does not hold the batch "
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

    def _sequence_points(self, shapes, large, args, kwargs) -> list[bool]:
        """Per point: is its dim 1 a sequence?  Yes when a (batch, seq, M) output has the same
        length there, or when a probe one position shorter shortens it (any output: a (batch,
        classes) head then gives every position the example's error, Launay et al. 2020)."""
        ys = [t for _, t in top_level(large["out"]) if t.dim() == 3]
        seq = [len(s) == 3 and any(s[1] == y.shape[1] for y in ys) for s in shapes]
        if all(seq) or not any(len(s) == 3 for s in shapes):
            return seq
        shorter = _seq_variant(_batch_variant((args, kwargs), 3))
        if shorter is None:
            return seq
        try:
            probe = _probe(self.net, self._points, *shorter)
        except ProbeError:
            return seq
        for k, (s, p) in enumerate(zip(shapes, self._points)):
            t = probe["fired"].get(id(p), (None, None))[1]
            if t is not None and len(s) == 3 and len(t) == 3 and t[1] == s[1] - 1 and t[2] == s[2]:
                seq[k] = True
        return seq

    def _check_heads(self, heads, large):
        if not heads:
            raise ValueError(
                "found no output to take the error at: the model must return its prediction (a "
                "tensor with the batch in dim 0, e.g. the logits, alone, in a tuple, or as "
                "`.logits`), produced after the last feedback point")
        scalar_loss = any(t.dim() == 0 and t.requires_grad for _, t in top_level(large["out"]))
        returned = [h.name for h in heads if h.marker is None]
        if scalar_loss and returned:
            raise ValueError(
                f"the model returns a loss computed inside forward, but its {', '.join(returned)} "
                "was produced by no module ssdfa could find (a function such as x @ W.T), so that "
                "loss would never reach the feedback: produce the logits with a module (e.g. "
                "nn.Linear, weights may be tied) or compute the loss outside forward")
        if len(heads) > 1 and self.rule.needs_target:
            raise ValueError(
                f"method {self.rule.name!r} feeds one target back, but the model has several "
                f"output heads ({', '.join(h.name for h in heads)}); use one head, or a rule that "
                "feeds each head's error back (dfa, sdfa, ssdfa, dkp, sign_dfa)")
        if any(h.sequence for h in heads) and not all(h.sequence for h in heads):
            raise ValueError(
                "some output heads are (batch, seq, classes) and others (batch, classes): "
                f"{', '.join(h.name for h in heads)}; ssdfa feeds back one layout per model")

    def _draw_feedback(self, large):
        """B_{l,h} for every head h and point l, each from its own generator, head-major (head 0's
        draws are those of a one-head model)."""
        base = seeded_generator(self._seed)
        device = self._device
        for head in self.heads:
            for i, p in enumerate(self._points):
                producer = large["fired"][id(p)][2]
                neurons = math.prod(self._shapes[i])
                gen = child_generator(base)
                spec = self.rule.feedback_spec(head.width)
                std = init_std(self._init, producer, neurons, head.width, spec.connections)
                self.feedback.append(make_feedback(head.width, neurons, spec, generator=gen,
                                                   std=std * self._scale).to(device))

    def _freeze_hidden(self, inputs):
        """Shallow learning: hidden parameters get no gradient, so mark them frozen
        (``requires_grad=False``); DistributedDataParallel then expects none for them.

        Found with one grad-enabled eval pass whatever mode the first call ran in (``no_grad``,
        ``inference_mode``: an evaluation before training, Lightning's sanity check): a parameter
        is frozen when no tensor of the output (a tuple, dict or ``ModelOutput`` too) depends on
        it past the cut points, so freezing never removes a gradient training would give."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        was = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                outs = [t for t in _tensors(self(*inputs[0], **inputs[1]))
                        if t.requires_grad and (t.is_floating_point() or t.is_complex())]
                grads = torch.autograd.grad(sum(t.float().sum() for t in outs), params,
                                            allow_unused=True) if outs else [None] * len(params)
        finally:
            self.net.train(was)
        self._frozen = [p for p, g in zip(params, grads) if g is None]
        for p in self._frozen:
            p.requires_grad_(False)

    # -- loading a state_dict before the first call ------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Before the first call (shapes unknown, no B_l yet: a lazily sized model resumed, or
        Lightning's ``load_from_checkpoint``), make each feedback module from the shapes of the
        loaded tensors, so they load; the first forward pass checks them against the network."""
        if not self.built and not len(self.feedback) and (self.rule.inject or self.rule.local):
            self.feedback.extend(_feedback_from_state(state_dict, prefix + "feedback.",
                                                      self.num_classes, self._device,
                                                      self.rule.learned_feedback))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _adopt_loaded(self, loaded: nn.ModuleList):
        """Keep the B_l loaded before the first call in place of the ones just drawn, once each
        is known to fit its point (kind, errors, neurons, connections)."""
        def form(fb):
            return (type(fb).__name__, fb.num_errors, fb.num_neurons, getattr(fb, "connections", None))
        drawn = [form(fb) for fb in self.feedback]
        got = [form(fb) for fb in loaded]
        if drawn != got:
            raise ValueError(
                f"the feedback matrices loaded before the first call do not fit this model and "
                f"method: its points {self.point_names} need (kind, errors, neurons, connections) "
                f"{drawn}, the state_dict holds {got}; load a checkpoint of the same model, "
                "method and options")
        self.feedback = loaded

    @property
    def _device(self) -> str:
        return next((p.device for p in self.net.parameters()), torch.device("cpu"))

    # -- inspection and control ---------------------------------------------------------------
    def feedback_matrices(self) -> "OrderedDict[str, torch.Tensor]":
        """{point name: dense B_l of shape (classes, neurons at the point)}, in firing order;
        (classes, d) for a token-level point.  With several output heads, B_l stacks each head's
        B_{l,h} (rows in the order of ``heads``), so δ_l = [e_1, ..., e_H]·B_l = Σ_h e_h·B_{l,h}."""
        if not self.built and (self.rule.inject or self.rule.local):
            raise RuntimeError(
                f"method {self.rule.name!r} draws its feedback matrices at the model's first "
                "forward pass, when the shapes at its points are known, and this model has not run "
                "yet: call it once on a batch, or pass example_input=a batch (or input_shape=) to "
                "ssdfa.convert")
        if not self.feedback:
            return OrderedDict()
        return OrderedDict(
            (name, torch.cat([fb.dense() for fb in self.point_feedback(i)], 0))
            for i, name in enumerate(self.point_names))

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


def _check_labels(target, num_classes):
    """Labels in range, checked in the forward pass: the backward pass that uses them cannot
    read values.  Eagerly the message names the range found; under ``torch.compile`` an
    asynchronous assert inside the graph (reading the values would break the graph in two)."""
    from .rules.drtp import check_labels

    if not torch.compiler.is_compiling():
        check_labels(target, num_classes)
    elif isinstance(target, torch.Tensor) and target.dim() >= 1 and not target.is_floating_point():
        torch._assert_async(((target >= 0) & (target < num_classes)).all(),
                            f"target labels must lie in [0, {num_classes}): a label is out of range")


def _fp16_autocast(kind: str) -> bool:
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16


def _first_input(args, kwargs) -> torch.Tensor | None:
    """The first tensor among a call's inputs (it holds the batch in dim 0)."""
    return next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)


def _batch_variant(inputs, n: int):
    """(args, kwargs) with every tensor that holds the batch in dim 0 cut or repeated to n rows."""
    args, kwargs = inputs
    first = _first_input(args, kwargs)
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


def _seq_variant(inputs):
    """(args, kwargs) one sequence position shorter: every tensor of 2+ dims whose dim 1 has the
    first input's length is cut there (token ids, masks, (batch, seq, d) inputs); None if none."""
    args, kwargs = inputs
    first = _first_input(args, kwargs)
    if first is None or first.dim() < 2 or first.shape[1] < 2:
        return None
    n = first.shape[1]

    def cut(t):
        if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[1] == n:
            return t[:, :n - 1]
        return t
    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _probe(net, points, args, kwargs):
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
            handles.append(mod.register_forward_hook(
                lambda m, i, o: last_weight.__setitem__(0, m)))
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
            "ssdfa.convert") from exc
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return {"fired": fired, "out": y, "outputs": outputs, "order": order, "calls": calls,
            "y": _first_output(y)}


# Hugging Face Trainer reads these off the model: its config (use_cache, the output keys to ignore
# in evaluation), the loss kind (a causal-LM loss counts its tokens over labels[..., 1:]: without
# it the loss, and every gradient, would come out (T-1)/T of the plain model's), whether forward
# takes loss kwargs, and the main input's name
_SHOWN = ("config", "loss_type", "accepts_loss_kwargs", "main_input_name")


def _new_unsigned(cls):
    return cls.__new__(cls)


_SIGNED: dict = {}  # (class, signature text) -> its signed subclass


def _signed_class(cls, net):
    """A subclass of ``cls`` (same name) whose ``forward`` signature is ``net.forward``'s plus
    the keyword ``target``, so that tools that pick inputs by the signature (Hugging Face
    ``Trainer`` keeps the dataset columns it names, finds ``labels`` in it and passes loss
    kwargs when it has ``**kwargs``) see the wrapped model's arguments, not ``*args, **kwargs``.
    The subclass only delegates ``forward``; ``cls`` itself when the net has no signature."""
    cls = getattr(cls, "_signed_base", cls)
    try:
        sig = inspect.signature(net.forward)
        params = list(sig.parameters.values())
        if "target" not in sig.parameters:
            at = next((i for i, q in enumerate(params) if q.kind is q.VAR_KEYWORD), len(params))
            params.insert(at, inspect.Parameter("target", inspect.Parameter.KEYWORD_ONLY, default=None))
        sig = sig.replace(parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                                      *params])
    except (TypeError, ValueError):  # a builtin or C forward: keep (*args, target, **kwargs)
        return cls
    key = (cls, str(sig))
    if key not in _SIGNED:
        def forward(self, *args, **kwargs):
            return super(signed, self).forward(*args, **kwargs)

        forward.__signature__ = sig
        forward.__doc__ = cls.forward.__doc__
        signed = type(cls.__name__, (cls,), {"forward": forward, "_signed_base": cls,
                                              "__module__": cls.__module__,
                                              "__qualname__": cls.__qualname__})
        _SIGNED[key] = signed
    return _SIGNED[key]


def _feedback_from_state(state, prefix, num_errors, device, learnable) -> list[nn.Module]:
    """Empty feedback modules shaped as the ones saved under ``prefix`` (``feedback.<i>.``):
    ``matrix`` (M, N) is dense; ``index`` and ``value`` (N, S) are sparse, with M the model's
    class count, or else 1 + the largest index (every error reaches some neuron, as
    :func:`ssdfa.feedback.make_feedback` draws them); the loaded values are then copied in."""
    parts: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, _, name = key[len(prefix):].partition(".")
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
            fb = SparseFeedback(torch.empty(t["index"].shape, dtype=torch.long),
                                torch.empty(t["value"].shape, dtype=t["value"].dtype), m, learnable)
        else:
            return []
        made.append(fb.to(device))
    return made


def _tensors(y) -> list[torch.Tensor]:
    """Every tensor in a model output: a tensor, or tuples, lists and dicts (``ModelOutput``)."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in _tensors(v)]
    if isinstance(y, dict):
        return [t for v in y.values() for t in _tensors(v)]
    return []


def _first_output(y):
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
