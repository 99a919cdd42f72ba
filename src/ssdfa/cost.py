"""Hardware cost of one training example's backward pass, per layer and per method (Table I).

Counting follows the SSDFA paper's Table I and Sec. IV-D, in words (one number each):

=========  ====================  ==========  ====================  =========================
method     reads                 writes      MACs                  movement
=========  ====================  ==========  ====================  =========================
BP         |W| + |A|             |W|         2|W|                  |W| + |A| + |E|
DFA        |W| + |B|             |W|         |W| + |B|             |E| (M errors per neuron)
SDFA       |W| + |b|             |W|         |W| + |b|             |e| (S errors per neuron)
=========  ====================  ==========  ====================  =========================

Per weight layer l (Linear or Conv2d) that trains, with M classes (errors):

- |W|: the layer's parameters (kernel weights and biases) — what is read and written back.
- ∂W MACs: one per forward MAC, ``kernel weights × output positions`` (a Linear layer has one
  position); this is the ``|W|`` term of every MAC column, counted properly for conv layers.
- |A|: activations entering the layer (needed to form ∂W); |E|: errors at its output.
- N_l: neurons at the feedback point after the layer's block (after its activation, pooling
  and flattening: the input of the next weight layer; ``C·H·W`` for conv blocks, every output
  position gets feedback).  |B_l| = M·N_l, |b_l| = S·N_l with S errors per neuron (SSDFA: S = 1).
- The output layer gets its true error under every rule: no feedback matrix, and each output
  neuron receives one error (movement M for the direct rules).
- BP's error MACs of layer l are ``Wᵀ·δ`` through its own weights (= its forward MACs), as in
  Table I's 2|W|.  Table I counts this for every layer, the first included, although nothing
  uses the error at the input of the first trained layer; ``input_error=False`` drops it.

Movement is the paper's definition (Sec. II): what a neuron must send or receive for an update.
For BP on a von Neumann machine that is everything moved to and from main memory
(|W| + |A| + |E|); for the direct rules it is only the error each neuron receives.
Extensions the paper leaves out (see docs/cost-model.md): FA, KP, DKP, DRTP and shallow, the
sign-symmetric rules (usf, frsf, brsf), and the forward-mode rules (forward_grad, fdfa: their
forward-mode pass is counted, although the forward pass itself is not),
feedback storage, and bytes at a chosen precision.  Forward-pass costs are the same for every
rule and are not counted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .data import dataset_shape  # noqa: F401  (re-exported: shapes and classes per dataset)
from .models import PAPER_NETWORKS, paper_network

__all__ = [
    "LayerShape",
    "LayerCost",
    "CostContext",
    "COST_RULES",
    "layer_shapes",
    "count_costs",
    "method_totals",
    "reference_architecture",
    "dataset_shape",
]


@dataclass(frozen=True)
class LayerShape:
    """What the cost formulas need to know about one weight layer, per example."""

    name: str
    kind: str  # "linear" or "conv"
    weights: int  # kernel weights, weight.numel()
    biases: int
    positions: int  # output positions (H_out·W_out; 1 for Linear)
    inputs: int  # |A|: activations entering the layer
    outputs: int  # neurons at the layer's output (C_out·H_out·W_out), |E| for BP
    neurons: int  # N_l: neurons at the feedback point after this layer's block

    @property
    def params(self) -> int:
        """|W| in reads/writes: every parameter is read and written back."""
        return self.weights + self.biases

    @property
    def forward_macs(self) -> int:
        """MACs of the forward pass, = MACs of ∂W, = MACs of Wᵀ·δ."""
        return self.weights * self.positions


@dataclass
class LayerCost:
    """Costs of one layer's update for one example, in words (MACs in operations)."""

    name: str
    kind: str
    trained: bool
    macs: int = 0
    macs_update: int = 0  # forming ∂W
    macs_error: int = 0  # forming the error the layer needs
    reads: int = 0
    writes: int = 0
    movement: int = 0
    feedback: int = 0  # feedback weights stored for this layer


@dataclass(frozen=True)
class CostContext:
    """Choices shared by every layer: class count, which layers train, counting conventions."""

    num_classes: int
    connections: int = 1  # S for sdfa
    input_error: bool = True  # Table I: BP/FA form Wᵀ·δ at every layer, the first included
    first_trained: int = 0  # index of the first trained layer


LayerRule = Callable[[LayerShape, CostContext, bool, bool], LayerCost]
COST_RULES: dict[str, LayerRule] = {}


def cost_rule(name: str):
    """Register how method ``name`` costs one trained layer: f(layer, ctx, is_first, is_last)."""

    def deco(fn):
        COST_RULES[name] = fn
        return fn

    return deco


def _base(layer: LayerShape, **kw) -> LayerCost:
    c = LayerCost(layer.name, layer.kind, True, macs_update=layer.forward_macs, **kw)
    c.macs = c.macs_update + c.macs_error
    return c


def _chain_error(layer, ctx, is_first):
    """MACs of Wᵀ·δ (or Bᵀ·δ) through this layer, unless nothing below needs it."""
    return 0 if (is_first and not ctx.input_error) else layer.forward_macs


@cost_rule("bp")
def _bp(layer, ctx, is_first, is_last):
    """Table I, BP: reads |W|+|A|, writes |W|, MACs 2|W|, movement |W|+|A|+|E|."""
    return _base(
        layer,
        macs_error=_chain_error(layer, ctx, is_first),
        reads=layer.params + layer.inputs,
        writes=layer.params,
        movement=layer.params + layer.inputs + layer.outputs,
    )


def _direct(layer, ctx, is_last, per_neuron, learn_b=False):
    """Direct feedback with ``per_neuron`` errors per neuron (M dense, S sparse; Eq. 8-11)."""
    if is_last:  # the output layer's own error e: one per output neuron, no feedback matrix
        return _base(layer, reads=layer.params, writes=layer.params, movement=layer.outputs)
    b = per_neuron * layer.neurons  # |B_l| or |b_l|
    c = _base(
        layer,
        macs_error=b,
        reads=layer.params + b,
        writes=layer.params + (b if learn_b else 0),
        movement=b,
        feedback=b,
    )
    if learn_b:  # DKP: ΔB_l = eᵀ·h_l, one MAC per feedback weight
        c.macs += b
    return c


@cost_rule("dfa")
def _dfa(layer, ctx, is_first, is_last):
    """Table I, DFA: reads |W|+|B|, writes |W|, MACs |W|+|B|, movement |E| = M per neuron."""
    return _direct(layer, ctx, is_last, ctx.num_classes)


@cost_rule("sdfa")
def _sdfa(layer, ctx, is_first, is_last):
    """Table I, SDFA: as DFA with |b| = S·N non-zero feedback weights (S/M dense)."""
    return _direct(layer, ctx, is_last, ctx.connections)


@cost_rule("ssdfa")
def _ssdfa(layer, ctx, is_first, is_last):
    """SDFA with S = 1: one error and one feedback weight per neuron (Eq. 11)."""
    return _direct(layer, ctx, is_last, 1)


@cost_rule("sign_dfa")
def _sign_dfa(layer, ctx, is_first, is_last):
    """DRTP paper's sDFA: DFA fed sign(e).  Counted as DFA: the products become additions of
    ±B (still M·N operations) and each error needs 2 bits, which ``--bits`` does not model."""
    return _direct(layer, ctx, is_last, ctx.num_classes)


@cost_rule("dkp")
def _dkp(layer, ctx, is_first, is_last):
    """Direct Kolen-Pollack: DFA plus ΔB = eᵀh (|B| MACs) and B written back."""
    return _direct(layer, ctx, is_last, ctx.num_classes, learn_b=True)


@cost_rule("drtp")
def _drtp(layer, ctx, is_first, is_last):
    """DRTP: δ_l = y*·B_l; a one-hot target selects one column of B — no MACs, one read and
    one received word (the class index) per neuron; the whole B is still stored."""
    if is_last:
        return _direct(layer, ctx, True, 1)
    n = layer.neurons
    return _base(layer, reads=layer.params + n, writes=layer.params, movement=n, feedback=ctx.num_classes * n)


def _layerwise(layer, ctx, is_first, is_last, stored: bool, written: bool):
    """FA/KP and the sign rules: δ goes down the chain through a B_l shaped like W_l.

    ``stored``: B_l is kept beside W_l, one word per weight (FA, KP; frSF and brSF keep |R|).
    uSF stores nothing: B = c·sign(W) comes from W, which is read anyway, and its products are
    ±c additions, still one operation per connection.  ``written``: B_l is written back every
    example (KP's ΔB = ΔWᵀ, no extra MACs; brSF's fresh |R| per batch, counted per example as one
    write per weight, an upper bound since one draw serves a batch).

    Movement: every neuron receives the error of each neuron it feeds (one word per
    connection, = the layer's forward MACs); the output neurons receive their own error.
    """
    err = _chain_error(layer, ctx, is_first)
    fb = 0 if (err == 0 or not stored) else layer.weights
    return _base(
        layer,
        macs_error=err,
        reads=layer.params + fb,
        writes=layer.params + (fb if written else 0),
        movement=err + (layer.outputs if is_last else 0),
        feedback=fb,
    )


@cost_rule("fa")
def _fa(layer, ctx, is_first, is_last):
    return _layerwise(layer, ctx, is_first, is_last, stored=True, written=False)


@cost_rule("kp")
def _kp(layer, ctx, is_first, is_last):
    """Kolen-Pollack: FA whose B takes W's update (ΔB = ΔWᵀ, no extra MACs), written back."""
    return _layerwise(layer, ctx, is_first, is_last, stored=True, written=True)


@cost_rule("usf")
def _usf(layer, ctx, is_first, is_last):
    return _layerwise(layer, ctx, is_first, is_last, stored=False, written=False)


@cost_rule("frsf")
def _frsf(layer, ctx, is_first, is_last):
    return _layerwise(layer, ctx, is_first, is_last, stored=True, written=False)


@cost_rule("brsf")
def _brsf(layer, ctx, is_first, is_last):
    return _layerwise(layer, ctx, is_first, is_last, stored=True, written=True)


def _tangent_macs(layer, is_first):
    """MACs of pushing a tangent through the layer in forward mode: W·ẋ, one per forward MAC
    (none for the first layer, whose input carries no tangent)."""
    return 0 if is_first else layer.forward_macs


@cost_rule("forward_grad")
def _forward_grad(layer, ctx, is_first, is_last):
    """Forward gradient (Baydin et al. 2022): the forward-mode pass computes ẏ = Ẇ·x + W·ẋ
    (two MACs per forward MAC; one for the first layer, ẋ = 0), then g = (∇L·v)·v costs one
    multiply per parameter.  v is read (or regenerated) beside W; each neuron passes one
    tangent forward and every parameter receives the one scalar ∇L·v.  No feedback stored."""
    macs = layer.forward_macs + _tangent_macs(layer, is_first)
    c = LayerCost(
        layer.name,
        layer.kind,
        True,
        macs_update=layer.params,
        macs_error=macs,
        reads=2 * layer.params,
        writes=layer.params,
        movement=layer.outputs + 1,
    )
    c.macs = c.macs_update + c.macs_error
    return c


@cost_rule("fdfa")
def _fdfa(layer, ctx, is_first, is_last):
    """Forward DFA (Bacho & Chu 2024): DFA's costs, plus the forward-mode pass (W·ẋ through the
    layer, after the first), plus, at each hidden point, the estimate t·uᵀ (M·N MACs), B's
    momentum step written back, and the output tangent t (M words) sent to each neuron."""
    c = _direct(layer, ctx, is_last, ctx.num_classes, learn_b=True)
    t = _tangent_macs(layer, is_first)
    c.macs_error += t
    c.macs += t
    if not is_last:
        c.movement += ctx.num_classes * layer.neurons
    return c


@cost_rule("shallow")
def _shallow(layer, ctx, is_first, is_last):
    """Only the output layer learns; hidden layers cost nothing in the backward pass."""
    if not is_last:
        return LayerCost(layer.name, layer.kind, False)
    return _direct(layer, ctx, True, 1)


# -- shapes --------------------------------------------------------------------------------------
def layer_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerShape]:
    """Weight layers of ``model`` in execution order, sized by one forward pass of zeros.

    Forward hooks on every Linear/Conv2d record input and output shapes (batch 1); N_l of a
    layer is the input size of the next weight layer (its block's output), the last layer's is
    its output.  The model may live on the ``meta`` device: nothing is computed then.
    """
    records = []

    def hook(module, inputs, output):
        records.append((module, inputs[0].shape, output.shape))

    names = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            names[mod] = name
            handles.append(mod.register_forward_hook(hook))
    if not handles:
        raise ValueError("the model has no Linear or Conv2d layer to count")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    # eval: BatchNorm cannot run in training mode on a batch of one; backprop(): a converted
    # model runs its plain layers (a layer-wise wrapper would otherwise bypass the hooked layer)
    exact = model.backprop() if hasattr(model, "backprop") else contextlib.nullcontext()
    try:
        model.eval()
        with torch.no_grad(), exact:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    shapes = []
    for i, (mod, ishape, oshape) in enumerate(records):
        outputs = math.prod(oshape[1:])
        positions = math.prod(oshape[2:]) if isinstance(mod, nn.Conv2d) else outputs // oshape[-1]
        neurons = math.prod(records[i + 1][1][1:]) if i + 1 < len(records) else outputs
        shapes.append(
            LayerShape(
                name=names[mod],
                kind="conv" if isinstance(mod, nn.Conv2d) else "linear",
                weights=mod.weight.numel(),
                biases=0 if mod.bias is None else mod.bias.numel(),
                positions=int(positions),
                inputs=int(math.prod(ishape[1:])),
                outputs=int(outputs),
                neurons=int(neurons),
            )
        )
    return shapes


def count_costs(
    layers,
    methods=("bp", "dfa", "ssdfa"),
    *,
    num_classes: int | None = None,
    train: str = "all",
    connections: int = 1,
    input_error: bool = True,
    bits: int = 32,
) -> dict:
    """Costs per method: ``{method: {"totals": {...}, "layers": [{...}, ...]}}`` (words/MACs).

    ``layers`` comes from :func:`layer_shapes`.  ``train="fc"`` counts only Linear layers as
    trained (transfer learning: conv layers frozen, as for the paper's Table V and Fig. 8);
    ``connections`` is S for ``sdfa``; ``bits`` sets the precision of the ``*_bytes`` totals.
    """
    layers = list(layers)
    if train not in ("all", "fc"):
        raise ValueError(f"train must be 'all' or 'fc', got {train!r}")
    unknown = [m for m in methods if m not in COST_RULES]
    if unknown:
        raise KeyError(f"no cost model for {', '.join(unknown)}; choose from {', '.join(sorted(COST_RULES))}")
    m = num_classes if num_classes is not None else layers[-1].outputs
    trained = [train == "all" or lay.kind == "linear" for lay in layers]
    if not any(trained):
        raise ValueError("no layer trains: train='fc' on a network without Linear layers")
    first = trained.index(True)
    if not 1 <= connections <= m:
        raise ValueError(f"connections must lie in [1, {m}] (errors per neuron), got {connections}")
    ctx = CostContext(num_classes=m, connections=connections, input_error=input_error, first_trained=first)
    out = {}
    for method in methods:
        rows = []
        for i, lay in enumerate(layers):
            if not trained[i]:
                rows.append(LayerCost(lay.name, lay.kind, False))
                continue
            rows.append(COST_RULES[method](lay, ctx, i == first, i == len(layers) - 1))
        dicts = [asdict(r) for r in rows]
        out[method] = {"totals": method_totals(dicts, bits), "layers": dicts}
    return out


def method_totals(rows: list[dict], bits: int = 32) -> dict:
    """Sum the per-layer rows; add byte counts at ``bits`` per word."""
    keys = ("macs", "macs_update", "macs_error", "reads", "writes", "movement", "feedback")
    tot = {k: int(sum(r[k] for r in rows)) for k in keys}
    for k in ("reads", "writes", "movement", "feedback"):
        tot[f"{k}_bytes"] = tot[k] * bits / 8
    tot["bits"] = bits
    return tot


# -- the paper's networks and the datasets' shapes: read from their registries ---------------
def reference_architecture(name: str, input_shape, num_classes: int) -> nn.Module:
    """The SSDFA paper's network ``name``: :func:`ssdfa.models.paper_network` (kept under this
    name for callers of earlier versions)."""
    return paper_network(name, input_shape, num_classes)


REFERENCE_NAMES = tuple(PAPER_NETWORKS)
"""Names :func:`reference_architecture` builds: the keys of ``ssdfa.models.PAPER_NETWORKS``."""
