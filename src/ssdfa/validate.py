"""Check a model before conversion and report every problem at once (as Opacus does)."""

from __future__ import annotations

from torch import nn

from .errors import Problem, UnsupportedModelError  # noqa: F401  (re-exported)
from .layers import is_pass_through, is_weight_layer, supported_names
from .points import FeedbackPoint


def flatten_sequential(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Leaf modules of a (nested) nn.Sequential in call order, with their dotted paths."""
    out = []
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out.extend(flatten_sequential(child, path))
        else:
            out.append((path, child))
    return out


def check_sequential(leaves: list[tuple[str, nn.Module]]) -> list[Problem]:
    """Problems in a flattened Sequential: unknown modules, no weight layer."""
    problems = []
    for path, mod in leaves:
        if is_weight_layer(mod) or is_pass_through(mod) or isinstance(mod, FeedbackPoint):
            continue
        problems.append(Problem(
            path, type(mod).__name__, "not a layer ssdfa can train through",
            f"Supported inside nn.Sequential: {supported_names()}. For other layers, write a "
            "custom nn.Module and mark its hidden blocks with ssdfa.FeedbackPoint()",
        ))
    if not any(is_weight_layer(m) for _, m in leaves):
        problems.append(Problem(
            "", "Sequential", "no Linear or Conv2d layer, so nothing to train",
            "Add at least one weight layer",
        ))
    return problems
