"""``ssdfa.convert``: one line turns a model into one trained by a chosen rule.

It reads: refuse what is already wrapped, pick the rule, place the points
(:mod:`ssdfa.placement`), wrap, and size the feedback matrices with a probe forward when an
input can be made now (else at the first forward pass, :class:`ssdfa.wrapper.FeedbackModel`).
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .errors import ProbeError
from .feedback import FeedbackConfigError, check_feedback_init, child_generator, seeded_generator
from .forward_mode import FDFAModel, ForwardGradientModel
from .frozen import frozen_module, split_leaves
from .layers import clone_tree, is_pass_through, is_weight_layer
from .layerwise import LAYERS, LayerwiseModel, is_wrappable
from .layerwise import wrap as wrap_layer
from .placement import checked_leaves, place_points
from .points import FeedbackPoint
from .probe import batch_variant, probe
from .rules import CUT, FEEDS_BACK, Kind, make_rule
from .validate import Problem, UnsupportedModelError
from .wrapper import FeedbackModel


def convert(
    model: nn.Module,
    method: str = "ssdfa",
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    example_input: torch.Tensor | None = None,
    seed: int | None = None,
    train_only: str | None = None,
    feedback_scale: float = 1.0,
    points=None,
    grad_scaler=None,
    feedback_init: str = "ours",
    signals: str = "at_once",
    **rule_options,
) -> FeedbackModel:
    """Wrap ``model`` so that ``loss.backward()`` trains it with ``method`` (see ``METHODS``).

    No input shape is needed: the feedback matrices are sized by a probe forward at the first
    call (or now, from ``input_shape`` without the batch dimension or ``example_input``; dkp,
    whose B_l the optimizer must hold, needs one of them unless the first layer is Linear).
    ``num_classes`` checks the output width.  ``points``: module types or qualified names whose
    outputs get feedback (default: Sequential/chain blocks, else every residual block).
    ``seed`` fixes every B_l; each point gets its own independent matrix.  Rule options:
    ``sparsity`` or ``connections`` and ``rank`` (sdfa, dkp, sign_dfa, drtp), ``unlocked``
    (drtp).  ``fa``/``kp`` wrap each Linear/Conv2d instead of placing points.
    ``feedback_scale`` multiplies the std of every direct B_l (default 1: the scale of
    :func:`ssdfa.feedback.feedback_std`, which trains the registered CNNs at BP's lr 0.01 +
    momentum 0.9); below 1 it tempers the hidden layers' updates, above 1 it heats them.  ``grad_scaler``: the ``torch.amp.GradScaler`` used
    with fp16 autocast, for sign_dfa and drtp whose signal must carry its loss scale.
    ``train_only="fc"`` (nn.Sequential only) freezes every layer before the first Linear.
    ``feedback_init``: how each direct B_l is drawn (:func:`ssdfa.feedback.init_std`): "ours"
    (default), "uniform:1/sqrt(n)" (the SSDFA code's) or "kaiming-uniform" (DRTP's and DKP's).
    ``signals``: "at_once" (default) forms every point's signal in one stacked product when e is
    known, the fast path; "per_block" forms each when backward reaches its block, so one signal is
    alive at a time, as BP's δ (less memory for very wide models; :mod:`ssdfa.injection`).  The
    gradients are the same.
    The returned model shares its parameters with ``model``; build the optimizer after this call.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    _refuse_wrapped(model)
    rule = make_rule(method, **rule_options)
    settings = _checked(rule, num_classes, points, feedback_scale, feedback_init, signals, grad_scaler, seed)
    _materialise_lazy(model, rule, input_shape, example_input)
    placed = _place(model, rule, train_only, points)
    wrapped = _wrap(model, placed, rule, num_classes, train_only, settings)
    _probe_now(wrapped, rule, input_shape, example_input)
    return wrapped


def _checked(rule, num_classes, points, feedback_scale, feedback_init, signals, grad_scaler, seed) -> dict:
    """convert's own arguments checked against the rule: the settings a wrapper takes."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if points is not None and rule.kind not in CUT:
        raise ValueError(f"points= places direct feedback; method {rule.name!r} has none")
    return {
        "seed": seed,
        "feedback_scale": check_feedback_scale(feedback_scale, rule),
        "feedback_init": check_feedback_init(feedback_init, rule),
        "grad_scaler": grad_scaler,
        "signals": signals,
    }


def _place(model, rule, train_only, points):
    """Where feedback goes (:mod:`ssdfa.placement`); None for the kinds with no points."""
    if rule.kind in (Kind.FORWARD_GRADIENT, Kind.LAYERWISE):
        return None
    return place_points(model, rule.name, train_only, points if rule.kind in CUT else None)


def _wrap(model, placed, rule, num_classes, train_only, settings) -> FeedbackModel:
    """The model class of the rule's kind around the placed network."""
    if rule.kind is Kind.FORWARD_GRADIENT:  # no points, one forward-mode pass per step
        if train_only is not None:
            raise ValueError(
                "forward_grad perturbs every parameter that requires grad: freeze "
                "layers with requires_grad_(False) instead of train_only"
            )
        return ForwardGradientModel(model, rule, num_classes, seed=settings["seed"])
    if rule.kind is Kind.LAYERWISE:  # drawn only where B is: `bp` leaves the global RNG untouched
        net, layer_names = _layerwise_net(model, rule, train_only, seeded_generator(settings["seed"]))
        return LayerwiseModel(net, rule, layer_names, num_classes=num_classes)
    if rule.kind not in CUT:  # bp: any module that runs; chain points (identities) name its taps
        return FeedbackModel(
            model if placed.auto else placed.net, rule, [] if placed.auto else placed.points, num_classes
        )
    # fdfa: DFA whose B_l follow forward-mode estimates
    model_class = FDFAModel if rule.kind is Kind.FORWARD_FEEDBACK else FeedbackModel
    return model_class(
        placed.net,
        rule,
        placed.points,
        num_classes,
        auto_points=placed.auto,
        problems=placed.problems,
        **settings,
    )


def _probe_now(wrapped, rule, input_shape, example_input) -> None:
    """Size the feedback now when an input is given or can be made, else at the first call."""
    given = _given_example(wrapped.net, input_shape, example_input)
    if given is not None:
        if wrapped.built:
            _check_width(wrapped, given)
        else:
            wrapped._build((given,), {})
        return
    guess = _guessed_example(wrapped)
    if guess is not None and not wrapped.built:
        try:
            wrapped._build((guess,), {})
        except ProbeError:
            pass  # not a plain-input model: size it at the first forward
    if not wrapped.built and rule.learned_feedback:
        raise ValueError(
            f"method {rule.name!r} learns its feedback matrices, so they must exist before you "
            "build the optimizer: pass input_shape=(...) without the batch dimension, or "
            "example_input=a batch, to ssdfa.convert"
        )


def _refuse_wrapped(model: nn.Module):
    if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
        raise ValueError(
            "this model is already compiled: convert first, then compile, "
            "model = torch.compile(ssdfa.convert(net, ...))"
        )
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise ValueError("convert first, then wrap: DistributedDataParallel(ssdfa.convert(net, ...))")
    done = next((m for m in model.modules() if isinstance(m, FeedbackModel)), None)
    if done is not None:
        raise ValueError(
            f"this model is already converted (method {done.rule.name!r}); converting it again "
            "would nest two rules. Convert the original model, or model.unwrap() for the plain "
            "network"
        )


def _check_width(wrapped, x):
    y = probe(wrapped.net, [], *batch_variant(((x,), {}), 2))["y"]
    width = int(y[0].numel())
    if wrapped.num_classes is not None and wrapped.num_classes != width:
        raise ValueError(
            f"num_classes={wrapped.num_classes} but the model outputs {width} values per example "
            f"(output shape {tuple(y.shape)}); the feedback matrices need the true output width"
        )
    wrapped.num_classes = width


def _given_example(net, input_shape, example_input):
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
            raise TypeError("example_input must be a tensor with a batch dimension")
        return example_input
    if input_shape is not None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        return torch.zeros(2, *(int(d) for d in input_shape), device=device)
    return None


def _is_lazy(model: nn.Module) -> bool:
    return any(nn.parameter.is_lazy(p) for p in model.parameters()) or any(
        nn.parameter.is_lazy(b) for b in model.buffers()
    )


def _materialise_lazy(model, rule, input_shape, example_input):
    """Lazy modules (nn.LazyLinear, ...) get their shapes from one forward on the given input;
    without one, the rules that size B from the weights refuse, the others size at first call."""
    if not _is_lazy(model):
        return
    given = _given_example(model, input_shape, example_input)
    if given is None:
        if rule.layerwise or rule.learned_feedback:
            lazy = sorted({type(m).__name__ for m in model.modules() if isinstance(m, LazyModuleMixin)})
            raise ValueError(
                f"the model has lazy modules ({', '.join(lazy)}) "
                f"whose weights have no shape yet, and method {rule.name!r} draws its feedback "
                "matrices from them: call the model once on a batch before converting, or pass "
                "example_input=a batch (or input_shape=...) to ssdfa.convert"
            )
        return
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(given)
    finally:
        model.train(was)


def _guessed_example(wrapped):
    """A zero batch for a model whose first layer, in definition order, is a Linear (not a
    lazy one: its input width is unknown)."""
    net = wrapped.net
    if _is_lazy(net):
        return None
    first = next((m for m in net.modules() if is_weight_layer(m) or isinstance(m, nn.Embedding)), None)
    if isinstance(first, nn.Linear):
        device = first.weight.device
        return torch.zeros(2, first.in_features, device=device)
    return None


def check_feedback_scale(scale, rule=None) -> float:
    """``feedback_scale`` as a positive float, or a message saying what is allowed; with
    ``rule``, also that the rule has direct feedback matrices for it to scale."""
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise FeedbackConfigError(f"feedback_scale must be a positive number, got {scale!r}")
    if rule is not None and scale != 1 and rule.kind not in FEEDS_BACK:
        raise FeedbackConfigError(
            f"feedback_scale={scale:g} has no effect with method {rule.name!r}, which has no direct "
            "feedback matrices; it applies to dfa, sdfa, ssdfa, dkp, sign_dfa and drtp"
        )
    return float(scale)


def _layerwise_net(model: nn.Module, rule, train_only, base: torch.Generator):
    """A copy of the model's structure with each Linear/Conv2d wrapped to use its own B_l.

    nn.Sequential is rebuilt; other models are traced with torch.fx (any topology: FA needs no
    chain).  The user's modules are shared, never modified.
    """

    def gen():
        return child_generator(base)

    names = []
    if isinstance(model, nn.Sequential) or train_only is not None:
        leaves = checked_leaves(model, rule.name)
        frozen, trained = split_leaves(leaves, train_only, model, rule.name)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        features = frozen_module(frozen)
        if features is not None:
            layers["frozen"] = features
        for path, mod in trained:
            name = path.replace(".", "_")
            if isinstance(mod, FeedbackPoint):
                continue
            if is_wrappable(mod):
                mod = wrap_layer(mod, gen(), rule.learnable, getattr(rule, "sign", None))
                names.append(name)
            layers[name] = mod
        return nn.Sequential(layers), names
    net = clone_tree(model)
    problems = _functional_products(model)
    targets = []
    for name, mod in net.named_modules():
        if is_wrappable(mod):
            targets.append(name)
        elif (
            any(p is not None for p in mod._parameters.values())
            and not is_pass_through(mod)
            and not isinstance(mod, nn.Embedding)
        ):
            problems.append(
                Problem(
                    name,
                    type(mod).__name__,
                    "has weights but no layer-wise backward",
                    f"Supported weight layers: {', '.join(t.__name__ for t in LAYERS)}",
                )
            )
    if problems:
        raise UnsupportedModelError(problems, rule.name)
    for name in targets:
        parent, _, leaf = name.rpartition(".")
        setattr(
            net.get_submodule(parent),
            leaf,
            wrap_layer(net.get_submodule(name), gen(), rule.learnable, getattr(rule, "sign", None)),
        )
        names.append(name)
    return net, names


def _functional_products(model) -> list[Problem]:
    """Weight products torch.fx sees as plain functions (F.linear, matmul, ...): a layer-wise rule
    cannot give them their own B.  Models fx cannot trace are checked module by module only."""
    weighted = {
        F.linear,
        F.conv1d,
        F.conv2d,
        F.conv3d,
        F.bilinear,
        torch.matmul,
        torch.mm,
        torch.bmm,
        torch.addmm,
        torch.einsum,
        operator.matmul,
    }
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # fx raises many types; module checks still apply
        return []
    return [
        Problem(
            getattr(n.target, "__name__", str(n.target)),
            "function",
            "a product a layer-wise rule cannot give its own B",
            "Use nn.Linear / nn.Conv2d modules for weight layers",
        )
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target in weighted
    ]


def feedback_matrices(model: FeedbackModel) -> OrderedDict[str, torch.Tensor]:
    """{feedback-point name: dense tensor (num_classes, neurons at that point)}, in order."""
    if not isinstance(model, FeedbackModel):
        raise TypeError("feedback_matrices expects a model returned by ssdfa.convert")
    return model.feedback_matrices()


def feedback_parameters(model: FeedbackModel) -> list[torch.nn.Parameter]:
    """The learned feedback matrices alone (DKP's B_l, KP's B_l), for their own optimizer.

    They are also in ``model.parameters()``; to give them another learning rate or weight
    decay, build param groups: ``fb = ssdfa.feedback_parameters(model)`` and the rest as
    ``[p for p in model.parameters() if all(p is not q for q in fb)]``.  Empty for fixed B.
    """
    if not isinstance(model, FeedbackModel):
        raise TypeError("feedback_parameters expects a model returned by ssdfa.convert")
    if isinstance(model, LayerwiseModel):
        return model.feedback_parameters()
    return list(model.feedback.parameters())
