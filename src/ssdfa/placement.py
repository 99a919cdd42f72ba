"""Where feedback points go: markers, ``points=``, nn.Sequential, fx chains, residual blocks.

In order of preference:
1. the ``ssdfa.FeedbackPoint()`` markers a model already holds;
2. ``points=``: module types (``(BasicBlock,)``) or qualified names (``["layer1.0"]``), each
   such module's output becomes a point (through a wrap of its forward, ``points.OutputPoint``);
3. an ``nn.Sequential`` (nested ones flattened) or a model ``torch.fx`` traces as one chain of
   supported layers: a point at the input of every weight layer but the first, i.e. at each
   hidden block's output, after its non-linearity, pooling and flattening (for a traced model
   through a wrap of that layer's forward, ``points.InputPoint``: the trace only finds the
   places, the model's own forward runs, so its branches, flags and train/eval mode are
   followed);
4. anything else (skip connections, attention): a point at the output of every residual block,
   found by one probe forward (:func:`residual_blocks`): a module whose output merges, by an
   addition, two paths from its own input.  If none is found, every problem of steps 3-4 is
   reported at once with what to do.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import ProbeError
from .frozen import frozen_module, split_leaves
from .layers import is_pass_through, is_weight_layer, supported_names
from .points import FeedbackPoint, InputPoint, OutputPoint
from .validate import Problem, UnsupportedModelError, check_sequential, flatten_sequential

_FX_FUNCTIONS = {
    torch.flatten,
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    F.relu,
    F.tanh,
    F.sigmoid,
    F.gelu,
    F.leaky_relu,
    F.elu,
    F.silu,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.dropout,
    F.log_softmax,
    F.softmax,
    torch.log_softmax,
    torch.softmax,
}
_FX_METHODS = {
    "view",
    "reshape",
    "flatten",
    "relu",
    "tanh",
    "sigmoid",
    "contiguous",
    "softmax",
    "log_softmax",
    "squeeze",
    "unsqueeze",
}
_SHAPE_ONLY = {"size", "dim"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ADDS = {"AddBackward0", "AddBackward1"}
HINT = (
    "Pass points=(YourBlock,) or points=['name', ...] to ssdfa.convert, or place "
    "ssdfa.FeedbackPoint() after each hidden block in your model's forward()"
)


@dataclass
class Placement:
    """The network to run, its points (name, marker), and whether residual blocks are still to
    be found by a probe (``auto``, with the problems that ruled out a chain)."""

    net: nn.Module
    points: list = field(default_factory=list)
    auto: bool = False
    problems: list = field(default_factory=list)


def place_points(model: nn.Module, method: str, train_only: str | None = None, points=None) -> Placement:
    if points is not None:
        if train_only is not None:
            raise ValueError("give points= or train_only=, not both")
        return Placement(model, hook_points(model, select_modules(model, points)))
    if train_only is not None:
        leaves = checked_leaves(model, method)
        frozen, trained = split_leaves(leaves, train_only, model, method)
        net, pts = _sequential_with_points([(p, m) for p, m in trained if not isinstance(m, FeedbackPoint)])
        features = frozen_module(frozen)
        if features is not None:
            net = nn.Sequential(OrderedDict([("frozen", features), *net.named_children()]))
        return Placement(net, pts)
    marked = [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackPoint)]
    if marked:
        return Placement(model, marked)
    if isinstance(model, nn.Sequential):
        leaves = flatten_sequential(model)
        problems = check_sequential(leaves)
        if not problems:
            return Placement(*_sequential_with_points(leaves))
        if any(
            not any(True for _ in model.get_submodule(p.path).children()) for p in problems if p.path
        ):  # an unsupported layer, not a block to wrap
            raise UnsupportedModelError(problems, method)
        return Placement(model, auto=True, problems=problems)
    try:
        return Placement(*_fx_with_points(model))
    except UnsupportedModelError as exc:
        return Placement(model, auto=True, problems=exc.problems)


def checked_leaves(model, method):
    leaves = flatten_sequential(model) if isinstance(model, nn.Sequential) else []
    problems = check_sequential(leaves) if leaves else []
    if problems:
        raise UnsupportedModelError(problems, method)
    return leaves


# -- points= and residual blocks: wraps of the user's modules' forward ------------------------
def select_modules(model: nn.Module, spec) -> list[str]:
    """Qualified names of the modules ``points=`` asks for: types, or names, in model order."""
    if isinstance(spec, type):
        spec = (spec,)
    if isinstance(spec, str) or not hasattr(spec, "__iter__"):
        raise TypeError(
            "points= takes module types, e.g. points=(BasicBlock,), or qualified "
            f"names, e.g. points=['layer1.0', 'layer1.1'], got {spec!r}"
        )
    spec = list(spec)
    mods = dict(model.named_modules())
    if spec and all(isinstance(s, type) for s in spec):
        names = [n for n, m in mods.items() if n and isinstance(m, tuple(spec))]
        if not names:
            raise ValueError(
                f"points={tuple(t.__name__ for t in spec)}: no module of "
                f"{'that type' if len(spec) == 1 else 'those types'} in "
                f"{type(model).__name__}"
            )
        return names
    if not all(isinstance(s, str) for s in spec) or not spec:
        raise TypeError("points= takes module types or qualified names (not a mix, not empty)")
    unknown = [s for s in spec if s not in mods or not s]
    if unknown:
        some = ", ".join(n for n in list(mods)[1:13])
        raise ValueError(
            f"points=: no module named {', '.join(map(repr, unknown))} in "
            f"{type(model).__name__}; names look like: {some}, ..."
        )
    if len(set(spec)) != len(spec):
        raise ValueError("points= names a module twice")
    return spec


def hook_points(model: nn.Module, names: list[str]) -> list[tuple[str, FeedbackPoint]]:
    """Make each named module's output a feedback point, through a wrap of its forward."""
    out = []
    for name in names:
        point = FeedbackPoint()
        OutputPoint(model.get_submodule(name), point)
        out.append((name, point))
    return out


def residual_points(net: nn.Module, inputs, problems: list, method: str) -> list[tuple[str, FeedbackPoint]]:
    """Step 4, at the probe (convert's, or the first call's): a point at every residual block's
    output, or every problem of steps 3-4 at once."""
    names = residual_blocks(net, *inputs)
    if not names:
        problems.append(
            Problem(
                "",
                type(net).__name__,
                "no residual block found either (a module whose output adds two paths from its input)",
                "Place the points yourself",
            )
        )
        raise UnsupportedModelError(problems, method)
    return hook_points(net, names)


def residual_blocks(net: nn.Module, args, kwargs) -> list[str]:
    """Names of the residual blocks of ``net`` found in one forward pass with ``args``.

    A module is residual when an addition inside it merges two paths that both start at its
    input (``x + f(x)``, ``relu(bn(conv(x)) + downsample(x))``, a transformer layer's residual
    stream).  Of those, the outermost repeated type is taken (ResNet's BasicBlock, a
    transformer's layers), else the innermost residual modules; the model itself never.
    """
    seen: dict[str, tuple] = {}
    handles = []
    for name, mod in net.named_modules():
        if not name or isinstance(mod, _CONTAINERS + (FeedbackPoint,)):
            continue

        def hook(m, inputs, kw, output, name=name):
            x = next((t for t in (*inputs, *kw.values()) if isinstance(t, torch.Tensor)), None)
            y = output[0] if isinstance(output, tuple) and output else output
            if (
                name not in seen
                and x is not None
                and x.requires_grad
                and isinstance(y, torch.Tensor)
                and y.grad_fn is not None
            ):
                seen[name] = (x.grad_fn or torch.autograd.graph.get_gradient_edge(x).node, y.grad_fn)

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    args, kwargs = _track_inputs(args), _track_inputs(kwargs)
    was = net.training
    net.eval()
    try:
        with torch.enable_grad():
            net(*args, **kwargs)
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise ProbeError(f"a test forward pass to find the residual blocks failed: {exc}") from exc
    finally:
        net.train(was)
        for h in handles:
            h.remove()
    residual = [n for n, (src, out) in seen.items() if _merges_paths_from(out, src)]
    if not residual:
        return []
    types = [type(net.get_submodule(n)) for n in residual]
    repeated = [n for n, t in zip(residual, types) if types.count(t) >= 2]
    if repeated:
        return [n for n in repeated if not any(n.startswith(o + ".") for o in repeated)]
    return [n for n in residual if not any(o.startswith(n + ".") for o in residual)]


def _track_inputs(obj):
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj.detach().requires_grad_()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_track_inputs(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _track_inputs(v) for k, v in obj.items()}
    return obj


def _merges_paths_from(out_fn, src) -> bool:
    """Does the autograd graph from ``out_fn`` down to ``src`` hold an addition whose two
    operands both depend on ``src``?"""
    reach: dict = {src: True}

    def reaches(fn) -> bool:  # iterative: transformer graphs are deeper than Python's stack
        stack = [fn]
        while stack:
            node = stack[-1]
            if node in reach:
                stack.pop()
                continue
            kids = [k for k, _ in node.next_functions if k is not None]
            todo = [k for k in kids if k not in reach]
            if todo:
                stack.extend(todo)
            else:
                reach[node] = any(reach[k] for k in kids)
                stack.pop()
        return reach[fn]

    visited, stack = set(), [out_fn]
    while stack:
        node = stack.pop()
        if node is None or node is src or node in visited:
            continue
        visited.add(node)
        kids = [k for k, _ in node.next_functions if k is not None]
        if type(node).__name__ in _ADDS and len(kids) == 2 and all(reaches(k) for k in kids):
            return True
        stack.extend(k for k in kids if reaches(k))
    return False


# -- chains: nn.Sequential and torch.fx ---------------------------------------------------------
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


def _fx_with_points(model: nn.Module):
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; report the cause, keep the chain
        raise UnsupportedModelError(
            [Problem("", type(model).__name__, f"could not be traced with torch.fx ({exc})", HINT)], ""
        ) from exc
    mods = dict(gm.named_modules())
    problems = []
    weight_nodes = []
    for node in gm.graph.nodes:
        users = [u for u in node.users if not _shape_only(u)]
        if node.op in ("call_module", "call_function", "call_method", "placeholder") and len(users) > 1:
            problems.append(
                Problem(
                    str(node.target),
                    node.op,
                    "its output feeds several layers (a branch or skip connection)",
                    HINT,
                )
            )
        if node.op == "call_module":
            mod = mods[node.target]
            if is_weight_layer(mod):
                weight_nodes.append(node)
            elif not is_pass_through(mod):
                problems.append(
                    Problem(
                        str(node.target),
                        type(mod).__name__,
                        "not a layer ssdfa can train through",
                        f"Supported: {supported_names()}. {HINT}",
                    )
                )
        elif (
            node.op == "call_function"
            and node.target not in _FX_FUNCTIONS
            and node.target is not operator.getitem
            and not _constant_scaling(node)
        ):
            problems.append(
                Problem(
                    getattr(node.target, "__name__", str(node.target)),
                    "function",
                    "not an operation ssdfa knows to be element-wise or a reshape",
                    HINT,
                )
            )
        elif node.op == "call_method" and node.target not in _FX_METHODS | _SHAPE_ONLY:
            problems.append(
                Problem(
                    str(node.target),
                    "method",
                    "not an operation ssdfa knows to be element-wise or a reshape",
                    HINT,
                )
            )
    if not weight_nodes:
        problems.append(Problem("", type(model).__name__, "no Linear or Conv2d layer", HINT))
    if problems:
        raise UnsupportedModelError(problems, "")
    targets = [str(node.target) for node in weight_nodes]
    if len(set(targets)) != len(targets):
        raise UnsupportedModelError(
            [
                Problem(t, "module", "is called more than once (shared weights)", HINT)
                for t in sorted({t for t in targets if targets.count(t) > 1})
            ],
            "",
        )
    # the trace only finds the places: the user's own forward runs (every branch, flag and mode),
    # each point through a wrap at the input of a weight layer
    return model, input_points(model, targets[1:])


def input_points(model: nn.Module, names: list[str]) -> list[tuple[str, FeedbackPoint]]:
    """Make the input of each named module a feedback point, through a wrap of its forward; the
    marker is added to ``model`` as ``point<k>`` so hooks and ``points()`` can name it."""
    out = []
    for k, name in enumerate(names):
        point = FeedbackPoint()
        InputPoint(model.get_submodule(name), point)
        label = f"point{k}"
        while hasattr(model, label):
            label = "_" + label
        model.add_module(label, point)  # no parameters: the model's state_dict is unchanged
        out.append((label, point))
    return out


def _constant_scaling(node) -> bool:
    """``h * c`` or ``h / c`` with a constant c (a temperature, a logit scale): element-wise."""
    return (
        node.target in (operator.mul, operator.truediv)
        and len(node.args) == 2
        and sum(isinstance(a, fx.Node) for a in node.args) == 1
        and (node.target is operator.mul or isinstance(node.args[0], fx.Node))
    )


def _shape_only(node) -> bool:
    return (node.op == "call_method" and node.target in _SHAPE_ONLY) or (
        node.op == "call_function" and node.target is getattr and node.args[1] == "shape"
    )
