"""What the authors' setups change on a built model: its activation, its dropout, its weight and
bias init (``shared/papers/authors-code-setups.md``; used by ``ssdfa.training``)."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
WEIGHT_INITS = ("default", "zero", "glorot", "sqrt-fan-in", "normal:STD")


def _is_activation(m: nn.Module) -> bool:
    return isinstance(m, (nn.ReLU, nn.Tanh))


def set_activation(net: nn.Sequential, activation: str) -> nn.Sequential:
    """Every ReLU/Tanh before the last weight layer becomes ``activation`` (in place); an output
    activation after it (drtp-reg's tanh) stays."""
    act = ACTIVATIONS.get(str(activation).strip().lower())
    if act is None:
        raise ValueError(f"activation {activation!r} unknown; choose one of: {', '.join(ACTIVATIONS)}")
    last = max(i for i, m in enumerate(net) if isinstance(m, (nn.Linear, nn.Conv2d)))
    for i, m in enumerate(net):
        if i < last and _is_activation(m):
            net[i] = act()
    return net


def set_dropout(net: nn.Sequential, p: float) -> nn.Sequential:
    """Dropout ``p`` at the input of every weight layer but the first (in place), the model's own
    dropout layers removed; ``p = 0`` removes them all.  That is where the feedback points of a
    chain sit, so the signal e·B_l passes back through the dropout mask, as in the SSDFA code
    (which masks without the 1/(1-p) rescaling torch's inverted dropout applies: the same net
    up to a factor 1/(1-p) on the next layer's weights)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {p}")
    kept = [m for m in net if not isinstance(m, nn.Dropout)]
    layers, seen = [], False
    for m in kept:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if seen and p > 0:
                layers.append(nn.Dropout(p))
            seen = True
        layers.append(m)
    for name in list(net._modules):
        del net._modules[name]
    for i, m in enumerate(layers):
        net.add_module(str(i), m)
    return net


def check_weight_init(init) -> str:
    """``init`` as "default", "zero", "glorot", "sqrt-fan-in" or "normal:STD" (STD > 0)."""
    key = str(init).strip().lower().replace("_", "-")
    if key in ("default", "zero", "glorot", "sqrt-fan-in"):
        return key
    if key.startswith("normal:"):
        try:
            std = float(key.split(":", 1)[1])
        except ValueError:
            std = float("nan")
        if math.isfinite(std) and std > 0:
            return f"normal:{std:g}"
    raise ValueError(
        f"weight_init {init!r} unknown; choose one of: {', '.join(WEIGHT_INITS)} (e.g. normal:0.01)"
    )


def _fan_in(m: nn.Module) -> int:
    return m.weight[0].numel()  # in_features, or C_in/groups·k_h·k_w


@torch.no_grad()
def init_weights(net: nn.Module, init: str = "default", bias: float | None = None) -> nn.Module:
    """Reset every Linear/Conv2d weight as ``init`` says (in place, from torch's global RNG):
    ``default`` leaves torch's own, ``zero``, ``glorot`` (Glorot-uniform, TF's
    glorot_uniform), ``sqrt-fan-in`` U(±1/√fan_in), ``normal:STD`` N(0, STD²); ``bias`` sets
    every bias of those layers to one constant (None: left as it is)."""
    init = check_weight_init(init)
    for m in net.modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        if init == "zero":
            m.weight.zero_()
        elif init == "glorot":
            nn.init.xavier_uniform_(m.weight)
        elif init == "sqrt-fan-in":
            bound = 1.0 / math.sqrt(_fan_in(m))
            m.weight.uniform_(-bound, bound)
        elif init.startswith("normal:"):
            m.weight.normal_(0.0, float(init.split(":", 1)[1]))
        if bias is not None and m.bias is not None:
            m.bias.fill_(float(bias))
    return net
