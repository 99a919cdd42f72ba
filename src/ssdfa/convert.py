"""``ssdfa.convert``: one line turns a model into one trained by a chosen rule.

Where feedback points go, in order of preference:
1. the ``ssdfa.FeedbackPoint()`` markers a custom model already holds;
2. an ``nn.Sequential`` (nested ones are flattened): a point at the input of every weight
   layer but the first, i.e. at the output of each hidden block, after its non-linearity,
   pooling and flattening;
3. any other model that ``torch.fx`` can trace as a single chain of supported layers: the same
   placement.  Anything else is rejected with a list of what to change.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .feedback import FeedbackConfigError, default_std, feedback_std, make_feedback
from .frozen import frozen_module, split_leaves
from .layerwise import LAYERS, LayerwiseModel, is_wrappable
from .layerwise import wrap as wrap_layer
from .layers import is_pass_through, is_weight_layer, supported_names
from .points import FeedbackPoint
from .rules import make_rule
from .validate import Problem, UnsupportedModelError, check_sequential, flatten_sequential
from .wrapper import FeedbackModel

_FX_FUNCTIONS = {
    torch.flatten, torch.relu, torch.tanh, torch.sigmoid, F.relu, F.tanh, F.sigmoid, F.gelu,
    F.leaky_relu, F.elu, F.silu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout,
    F.log_softmax, F.softmax, torch.log_softmax, torch.softmax,
}
_FX_METHODS = {"view", "reshape", "flatten", "relu", "tanh", "sigmoid", "contiguous", "softmax",
               "log_softmax", "squeeze", "unsqueeze"}
_SHAPE_ONLY = {"size", "dim"}
# products with a weight that fx exposes as plain functions: a layer-wise rule cannot see them
_WEIGHTED_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.bilinear, torch.matmul, torch.mm,
                       torch.bmm, torch.addmm, torch.einsum, operator.matmul}


def convert(model: nn.Module, method: str = "ssdfa", *, num_classes: int | None = None,
            input_shape: tuple[int, ...] | None = None,
            example_input: torch.Tensor | None = None, seed: int | None = None,
            train_only: str | None = None, feedback_scale: float = 1.0,
            **rule_options) -> FeedbackModel:
    """Wrap ``model`` so that ``loss.backward()`` trains it with ``method`` (see ``METHODS``).

    ``num_classes`` checks the output width (inferred when omitted).  ``input_shape`` (without
    the batch dimension) or ``example_input`` is needed when the first weight layer is a
    Conv2d, to size the feedback of each point.  ``seed`` fixes every B_l; each point gets its
    own independent matrix.  Rule options: ``sparsity`` or ``connections`` and ``rank`` (sdfa,
    dkp, sign_dfa, drtp), ``unlocked`` (drtp).  ``fa``/``kp`` wrap each Linear/Conv2d instead of
    placing points (:mod:`ssdfa.layerwise`).
    ``feedback_scale`` multiplies the std of every direct B_l (default 1: the scale of
    :func:`ssdfa.feedback.feedback_std`, which trains the registered CNNs at BP's lr 0.01 +
    momentum 0.9); below 1 it tempers the hidden layers' updates, above 1 it heats them.
    ``train_only="fc"`` (nn.Sequential only) freezes every layer before the first Linear and
    trains the rest with ``method`` (transfer learning, :mod:`ssdfa.frozen`).
    The returned model shares its parameters with ``model``; build the optimizer after this call.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    rule = make_rule(method, **rule_options)
    feedback_scale = check_feedback_scale(feedback_scale, rule)

    def base_generator():  # drawn only where B is: `bp` leaves the global RNG untouched
        return torch.Generator().manual_seed(
            int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))

    if rule.layerwise:
        net, points, layer_names = _layerwise_net(model, rule, train_only, base_generator())
    else:
        net, points = _place_points(model, rule.name, train_only)
    x = _example(net, model, input_shape, example_input)

    fired, y = _probe(net, points, x)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    out_width = int(y[0].numel())
    if num_classes is not None and num_classes != out_width:
        raise ValueError(
            f"num_classes={num_classes} but the model outputs {out_width} values per example "
            f"(output shape {tuple(y.shape)}); the feedback matrices need the true output width"
        )
    missing = [name for name, _ in points if name not in fired]
    if missing and rule.direct:
        raise UnsupportedModelError([
            Problem(name, "FeedbackPoint", "never reached in the forward pass",
                    "Remove it or make sure forward() calls it") for name in missing
        ], rule.name)
    order = sorted((n for n, _ in points if n in fired), key=lambda n: fired[n][0])
    by_name = dict(points)
    if rule.layerwise:
        return LayerwiseModel(net, rule, layer_names, num_classes=out_width)
    wrapped = FeedbackModel(net, rule, [(n, by_name[n]) for n in order], num_classes=out_width)

    if rule.direct and (rule.inject or rule.local):  # shallow feeds nothing back: no B_l
        base = base_generator()
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        for name in order:
            _, neurons, producer = fired[name]
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=base)))
            spec = rule.feedback_spec(out_width)
            std = default_std(neurons) if producer is None else feedback_std(producer, neurons)
            std *= feedback_scale
            wrapped.feedback.append(
                make_feedback(out_width, neurons, spec, generator=gen, std=std).to(device))
    return wrapped


def check_feedback_scale(scale, rule=None) -> float:
    """``feedback_scale`` as a positive float, or a message saying what is allowed; with
    ``rule``, also that the rule has direct feedback matrices for it to scale."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or scale <= 0:
        raise FeedbackConfigError(f"feedback_scale must be a positive number, got {scale!r}")
    if rule is not None and scale != 1 and not (rule.direct and (rule.inject or rule.local)):
        raise FeedbackConfigError(
            f"feedback_scale={scale:g} has no effect with method {rule.name!r}, which has no direct "
            "feedback matrices; it applies to dfa, sdfa, ssdfa, dkp, sign_dfa and drtp")
    return float(scale)


# -- placing the points ----------------------------------------------------------------------
def _place_points(model: nn.Module, method: str, train_only: str | None = None):
    if train_only is not None:
        leaves = _checked_leaves(model, method)
        frozen, trained = split_leaves(leaves, train_only, model, method)
        net, points = _sequential_with_points(
            [(p, m) for p, m in trained if not isinstance(m, FeedbackPoint)])
        features = frozen_module(frozen)
        if features is not None:
            net = nn.Sequential(OrderedDict([("frozen", features), *net.named_children()]))
        return net, points
    marked = [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackPoint)]
    if marked:
        return model, marked
    if isinstance(model, nn.Sequential):
        return _sequential_with_points(_checked_leaves(model, method))
    return _fx_with_points(model, method)


def _checked_leaves(model, method):
    leaves = flatten_sequential(model) if isinstance(model, nn.Sequential) else []
    problems = check_sequential(leaves) if leaves else []
    if problems:
        raise UnsupportedModelError(problems, method)
    return leaves


def _layerwise_net(model: nn.Module, rule, train_only, base: torch.Generator):
    """A copy of the model's structure with each Linear/Conv2d wrapped to use its own B_l.

    nn.Sequential is rebuilt; other models are traced with torch.fx (any topology: FA needs no
    chain).  The user's modules are shared, never modified.
    """
    def gen():
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=base)))

    names = []
    if isinstance(model, nn.Sequential) or train_only is not None:
        leaves = _checked_leaves(model, rule.name)
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
                mod = wrap_layer(mod, gen(), rule.learnable)
                names.append(name)
            layers[name] = mod
        return nn.Sequential(layers), [], names
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; report the cause, keep the chain
        raise UnsupportedModelError([Problem(
            "", type(model).__name__, f"could not be traced with torch.fx ({exc})",
            "Build the model as an nn.Sequential")], rule.name) from exc
    problems = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _WEIGHTED_FUNCTIONS:
            problems.append(Problem(getattr(node.target, "__name__", str(node.target)), "function",
                                    "a product a layer-wise rule cannot give its own B",
                                    "Use nn.Linear / nn.Conv2d modules for weight layers"))
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if not is_wrappable(mod):
            if any(True for _ in mod.parameters()) and not is_pass_through(mod):
                problems.append(Problem(node.target, type(mod).__name__,
                                        "has weights but no layer-wise backward",
                                        f"Supported weight layers: {', '.join(t.__name__ for t in LAYERS)}"))
            continue
        parent, _, leaf = node.target.rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        if owner is not gm and any(owner is m for m in model.modules()):
            raise UnsupportedModelError([Problem(node.target, type(mod).__name__,
                                                 "shared container cannot be rewired",
                                                 "Build the model as an nn.Sequential")], rule.name)
        setattr(owner, leaf, wrap_layer(mod, gen(), rule.learnable))
        names.append(node.target)
    if problems:
        raise UnsupportedModelError(problems, rule.name)
    gm.recompile()
    return gm, [], names


def _sequential_with_points(leaves):
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    points = []
    seen_weight = False
    for path, mod in leaves:
        if is_weight_layer(mod):
            if seen_weight:
                name = f"point{len(points)}"
                point = FeedbackPoint()
                layers[name] = point
                points.append((name, point))
            seen_weight = True
        layers[path.replace(".", "_")] = mod
    return nn.Sequential(layers), points


def _fx_with_points(model: nn.Module, method: str):
    import torch.fx as fx

    hint = ("Place ssdfa.FeedbackPoint() after each hidden block in your model's forward(), "
            "or build it as an nn.Sequential")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; report the cause, keep the chain
        raise UnsupportedModelError(
            [Problem("", type(model).__name__, f"could not be traced with torch.fx ({exc})", hint)],
            method) from exc
    mods = dict(gm.named_modules())
    problems = []
    weight_nodes = []
    for node in gm.graph.nodes:
        users = [u for u in node.users if not _shape_only(u)]
        if node.op in ("call_module", "call_function", "call_method", "placeholder") and len(users) > 1:
            problems.append(Problem(str(node.target), node.op,
                                    "its output feeds several layers (a branch or skip connection)",
                                    hint))
        if node.op == "call_module":
            mod = mods[node.target]
            if is_weight_layer(mod):
                weight_nodes.append(node)
            elif not is_pass_through(mod):
                problems.append(Problem(str(node.target), type(mod).__name__,
                                        "not a layer ssdfa can train through",
                                        f"Supported: {supported_names()}. {hint}"))
        elif node.op == "call_function" and node.target not in _FX_FUNCTIONS \
                and node.target is not operator.getitem:
            problems.append(Problem(getattr(node.target, "__name__", str(node.target)), "function",
                                    "not an operation ssdfa knows to be element-wise or a reshape",
                                    hint))
        elif node.op == "call_method" and node.target not in _FX_METHODS | _SHAPE_ONLY:
            problems.append(Problem(str(node.target), "method",
                                    "not an operation ssdfa knows to be element-wise or a reshape",
                                    hint))
    if not weight_nodes:
        problems.append(Problem("", type(model).__name__, "no Linear or Conv2d layer", hint))
    if problems:
        raise UnsupportedModelError(problems, method)
    points = []
    for node in weight_nodes[1:]:
        name = f"point{len(points)}"
        point = FeedbackPoint()
        gm.add_submodule(name, point)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, args=(node.args[0],))
        node.replace_input_with(node.args[0], new)
        points.append((name, point))
    gm.recompile()
    return gm, points


def _shape_only(node) -> bool:
    return (node.op == "call_method" and node.target in _SHAPE_ONLY) or (
        node.op == "call_function" and node.target is getattr and node.args[1] == "shape")


# -- probing shapes ----------------------------------------------------------------------------
def _example(net, model, input_shape, example_input):
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor):
            raise TypeError("example_input must be a tensor with a batch dimension")
        return example_input[:2]
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        return torch.zeros(2, *shape, device=device)
    first = next((m for m in net.modules() if is_weight_layer(m)), None)
    if isinstance(first, nn.Linear):
        return torch.zeros(2, first.in_features, device=device)
    raise ValueError(
        f"cannot tell the input size of {type(model).__name__}: its first weight layer is "
        f"{type(first).__name__ if first is not None else 'missing'}. Pass input_shape=(C, H, W) "
        "(without the batch dimension) or example_input=a batch of data to ssdfa.convert"
    )


def _probe(net, points, x):
    """One no-grad eval forward: which points fire, in what order, with how many neurons, and
    which weight layer fired last before each (it sets the feedback scale, ``feedback_std``)."""
    fired: dict[str, tuple[int, int, nn.Module | None]] = {}
    last_weight: list[nn.Module | None] = [None]
    handles = []
    for name, point in points:
        def hook(mod, inp, out, name=name):
            if name not in fired:
                fired[name] = (len(fired), int(out[0].numel()), last_weight[0])
        handles.append(point.register_forward_hook(hook))
    for mod in net.modules():
        if is_weight_layer(mod):
            handles.append(mod.register_forward_hook(
                lambda m, i, o: last_weight.__setitem__(0, m)))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            y = net(x)
    except Exception as exc:
        raise ValueError(
            f"a test forward pass with an input of shape {tuple(x.shape)} failed: {exc}. "
            "Pass input_shape=(...) without the batch dimension, or example_input=a real batch"
        ) from exc
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"the model must return one tensor (batch, classes), got {type(y).__name__}")
    return fired, y
