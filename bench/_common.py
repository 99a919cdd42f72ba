"""What the benchmark scripts share: the cases (models defined here, not imported), the
variants (plain PyTorch, ssdfa's methods, BioTorch), a training step, the machine description
and the JSON writer.  Not a public module; the scripts import it from their own folder.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.util
import io
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Use an ssdfa already on the path (PYTHONPATH, pytest's pythonpath=src); else this checkout's.
if importlib.util.find_spec("ssdfa") is None:
    sys.path.insert(0, str(ROOT / "src"))
import ssdfa  # noqa: E402

# The methods the issue asks for, in display order; sdfa at 90% sparsity.
WANTED = ["bp", "fa", "kp", "dfa", "sdfa", "ssdfa", "dkp", "drtp", "shallow"]
OPTIONS = {
    "sdfa": {"sparsity": 0.9},
    "drtp-unlocked": {"unlocked": True},
    "dfa-per-block": {"signals": "per_block"},
    "ssdfa-per-block": {"signals": "per_block"},
}
# variant name -> registered rule; "-per-block": the one-signal-at-a-time injection path
RULE_OF = {"drtp-unlocked": "drtp", "dfa-per-block": "dfa", "ssdfa-per-block": "ssdfa"}
BIOTORCH_MODES = {"biotorch-bp": "backpropagation", "biotorch-fa": "fa", "biotorch-dfa": "dfa"}


# -- cases -------------------------------------------------------------------------------------
def fc_net(sizes, act=nn.Tanh):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def mnist_cnn():
    """The SSDFA paper's MNIST CNN: conv 3x3 32, conv 3x3 64, maxpool 2, FC 128, 10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),  # (B, 32, 26, 26)
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),  # (B, 64, 24, 24)
        nn.MaxPool2d(2),
        nn.Flatten(),  # (B, 9216)
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def cifar_cnn():
    """The SSDFA paper's CIFAR CNN: 5x5 convs 96/128/256, each with a 3x3 stride-2 pool, FC 2048x2."""

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)]

    return nn.Sequential(
        *block(3, 96),
        *block(96, 128),
        *block(128, 256),  # (B, 256, 4, 4)
        nn.Flatten(),
        nn.Linear(4096, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 10),
    )


@dataclass(frozen=True)
class Case:
    name: str
    build: object  # () -> nn.Sequential
    input_shape: tuple
    classes: int
    batch: int
    biotorch: bool  # compare with BioTorch on this case (issue: FC and MNIST CNN)
    summary: str
    floor: str = "loop"  # "loop": FloorLoop (nn.Sequential); "detached": DetachedFloor (any model)
    head: str = ""  # DetachedFloor: the module producing the logits (gets the true error)


CASES = {
    "fc": Case(
        "fc",
        lambda: fc_net((784, 1000, 1000, 1000, 10)),
        (784,),
        10,
        128,
        True,
        "FC 784-1000-1000-1000-10 tanh",
    ),
    "mnist-cnn": Case(
        "mnist-cnn",
        mnist_cnn,
        (1, 28, 28),
        10,
        128,
        True,
        "conv3x3 32, conv3x3 64, maxpool 2, FC 128, 10 (28x28x1)",
    ),
    "cifar-cnn": Case(
        "cifar-cnn",
        cifar_cnn,
        (3, 32, 32),
        10,
        128,
        False,
        "conv5x5 96/128/256 + 3x3/2 pools, FC 2048-2048-10 (32x32x3)",
    ),
    "wide": Case(
        "wide",
        lambda: fc_net((1024, 4096, 4096, 1000)),
        (1024,),
        1000,
        128,
        False,
        "FC 1024-4096-4096-1000 tanh (wide output)",
    ),
}


def parse_list(text, known, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)}; choose from {', '.join(known)}")
    return names


def available_methods(wanted):
    """Those of ``wanted`` registered in ssdfa.METHODS; the rest are reported and skipped."""
    have, missing = [], []
    for v in wanted:
        (have if RULE_OF.get(v, v) in ssdfa.METHODS else missing).append(v)
    if missing:
        print(
            f"[skip] not in ssdfa.METHODS ({', '.join(ssdfa.METHODS)}): {', '.join(missing)}", file=sys.stderr
        )
    return have, missing


# -- BioTorch ----------------------------------------------------------------------------------
def import_biotorch(path=None):
    """BioTorch's BioModule, or (None, reason).  ``path``/$BIOTORCH_PATH: a --target install dir."""
    path = path or os.environ.get("BIOTORCH_PATH")
    if path and path not in sys.path:
        sys.path.append(path)
    try:
        from biotorch.module.biomodule import BioModule
    except Exception as exc:  # report any import failure by its message, then skip
        return None, f"{type(exc).__name__}: {exc}"
    return BioModule, None


# -- variants ----------------------------------------------------------------------------------
COMPILED = "+compile"  # a variant name ending in it: torch.compile (default mode) of that variant


class Variant:
    """One way of training one case: ``step(x, y)`` is a whole optimizer step.

    ``<name>+compile`` is variant ``name`` with its model (plain or converted) passed through
    ``torch.compile`` (default mode); the loss, backward and optimizer step stay eager."""

    def __init__(self, name, case: Case, device="cpu", seed=0, lr=0.01, momentum=0.9, biotorch=None):
        compiled = name.endswith(COMPILED)
        name = name[: -len(COMPILED)] if compiled else name
        if compiled and name in ("forward-only", "floor", *BIOTORCH_MODES):
            raise ValueError(f"{name}{COMPILED}: only plain-bp and ssdfa's methods are compiled")
        self.name, self.case = name, case
        torch.manual_seed(seed)
        net = case.build().to(device)
        self.kind = "plain"
        if name in ("plain-bp", "forward-only", "floor"):
            model = net
        elif name in BIOTORCH_MODES:
            self.kind = "biotorch"
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a conversion report
                model = biotorch(net, mode=BIOTORCH_MODES[name], output_dim=case.classes).to(device)
        else:
            self.kind = "ssdfa"
            model = ssdfa.convert(
                net,
                RULE_OF.get(name, name),
                num_classes=case.classes,
                input_shape=case.input_shape,
                seed=seed,
                **OPTIONS.get(name, {}),
            )
        self.model, self.net = model, net
        self.run = torch.compile(model) if compiled else model
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        if name == "floor":
            self.floor = FloorLoop(net) if case.floor == "loop" else DetachedFloor(net, case.head)

    def step(self, x, y):
        if self.name == "forward-only":
            with torch.no_grad():
                self.model(x)
            return
        if self.name == "floor":
            self.opt.zero_grad(set_to_none=True)
            self.floor.grads(x, y)
            self.opt.step()
            return
        self.opt.zero_grad(set_to_none=True)  # before forward: unlocked DRTP learns in it
        if self.kind == "ssdfa":
            out = self.run(x, target=y)
        elif self.name == "biotorch-dfa":
            out = self.model(x, targets=y, loss_function=F.cross_entropy)
        else:
            out = self.run(x)
        F.cross_entropy(out, y).backward()
        self.opt.step()


class FloorLoop:
    """The least a direct method can do per step: the forward pass plus one weight-gradient
    product per weight layer (∂W_l = δ_lᵀ·a_{l-1}, ∂b_l = Σδ_l), no autograd.

    δ_l for hidden layers is a fixed tensor of the layer's output shape (its cost, e·B_l and
    f'(a_l), is what a method adds to the floor); the output layer gets the true error.
    """

    def __init__(self, net: nn.Sequential):
        self.net = net
        self.deltas = {}

    @torch.no_grad()
    def grads(self, x, y):
        inputs, outputs = [], []
        h = x
        for m in self.net:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                inputs.append(h)
                h = m(h)
                outputs.append(h)
            else:
                h = m(h)
        e = torch.softmax(h, 1)
        e[torch.arange(len(y)), y] -= 1
        e /= len(y)  # ∂(mean cross-entropy)/∂y
        layers = [m for m in self.net if isinstance(m, (nn.Linear, nn.Conv2d))]
        for i, (m, a, z) in enumerate(zip(layers, inputs, outputs)):
            if i == len(layers) - 1:
                d = e
            else:
                d = self.deltas.get((i, z.shape))
                if d is None:
                    d = self.deltas[(i, z.shape)] = torch.randn_like(z) * 1e-3
            if isinstance(m, nn.Linear):
                m.weight.grad = d.t() @ a  # (out, in)
                m.bias.grad = d.sum(0)
            else:
                _, gw, gb = torch.ops.aten.convolution_backward(
                    d,
                    a,
                    m.weight,
                    [m.out_channels],
                    m.stride,
                    m.padding,
                    m.dilation,
                    False,
                    [0, 0],
                    m.groups,
                    [False, True, True],
                )
                m.weight.grad, m.bias.grad = gw, gb


class DetachedFloor:
    """The floor of any model, with autograd: the forward pass plus one ∂W per weight layer and
    no input gradient anywhere.

    A *weight layer* is a module holding parameters of its own (Conv2d, Linear, BatchNorm,
    LayerNorm, MultiheadAttention), other than the root, and not inside another weight layer.
    Each one's inputs are detached (forward pre-hook) and its output is handed on detached
    (forward hook), so autograd builds nodes only for the weight layers themselves: no ReLU,
    pooling, residual add, dropout or softmax node, and no Wᵀ·δ.  The backward pass starts from
    every weight layer's output z_l at once (``torch.autograd.backward([loss, z_1, ...],
    [1, δ_1, ...])``) with a fixed δ_l of z_l's shape (randn·1e-3, drawn once; its making is what
    a rule adds), and from the loss at the ``head`` module (the logits: its output is not
    detached, so it gets the true error and BP's ∂W).  What it computes per layer: ∂W, ∂b only
    (Conv: convolution_backward with the input gradient masked off; BatchNorm/LayerNorm: ∂γ, ∂β).
    nn.MultiheadAttention holds two weight layers, in_proj (packed q, k, v) and out_proj, that
    its functional forward calls without module hooks: the floor runs it as ``_attention`` (the
    same products, the attention core on detached q, k, v), with a root at each projection's
    output, so neither the attention core nor out_proj's input gradient is differentiated.
    A parameter held by no weight layer (the transformer's position table) gets no gradient.
    """

    def __init__(self, net: nn.Module, head: str):
        self.net, self.head = net, net.get_submodule(head)
        self.outputs: list = []
        self.deltas: dict = {}
        self.layers = []
        self.keep_roots, self.roots = False, []  # tests: keep the last step's (name, z_l) roots
        for name, m in net.named_modules():
            if not name or next(m.parameters(recurse=False), None) is None:
                continue
            if any(name.startswith(f"{outer}.") for outer, _ in self.layers):
                continue
            self.layers.append((name, m))
            m.register_forward_pre_hook(self._detach_inputs, with_kwargs=True)
            if isinstance(m, nn.MultiheadAttention):
                m.forward = functools.partial(self._attention, name, m)
            elif m is not self.head:
                m.register_forward_hook(self._taker(name))

    @staticmethod
    def _detach_inputs(module, args, kwargs):
        """Each input tensor detached once: MultiheadAttention(x, x, x) keeps ``query is key``
        (three separate detaches would send it down its slower separate-projection path)."""
        done: dict = {}

        def cut(t):
            if not isinstance(t, torch.Tensor):
                return t
            if id(t) not in done:
                done[id(t)] = t.detach()
            return done[id(t)]

        return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}

    def _taker(self, name):
        def take_output(module, inputs, out):  # keep z_l as a backward root, hand it on detached
            z = out[0] if isinstance(out, tuple) else out
            self.outputs.append((name, z))
            return (z.detach(), *out[1:]) if isinstance(out, tuple) else z.detach()

        return take_output

    def _attention(
        self,
        name,
        m,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        """MultiheadAttention's self-attention with roots at in_proj's and out_proj's outputs."""
        if (
            key_padding_mask is not None
            or attn_mask is not None
            or not (query is key is value)
            or not m.batch_first
            or not m._qkv_same_embed_dim
            or m.in_proj_bias is None
        ):
            raise ValueError("DetachedFloor runs batch_first self-attention without masks only")
        b, t, d = query.shape
        heads = m.num_heads
        # the layouts of F.multi_head_attention_forward (sequence first), so that attention
        # dropout draws the same mask from the same RNG state as the module itself
        qkv = F.linear(query.transpose(0, 1), m.in_proj_weight, m.in_proj_bias)  # (t, b, 3d)
        self.outputs.append((f"{name}.in_proj", qkv))
        q, k, v = qkv.detach().unflatten(-1, (3, d)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
        q, k, v = (
            u.view(t, b * heads, d // heads).transpose(0, 1).view(b, heads, t, d // heads) for u in (q, k, v)
        )
        a = F.scaled_dot_product_attention(
            q, k, v, dropout_p=m.dropout if m.training else 0.0, is_causal=is_causal
        )
        a = a.permute(2, 0, 1, 3).contiguous().view(b * t, d)
        out = F.linear(a, m.out_proj.weight, m.out_proj.bias)  # (t·b, d)
        self.outputs.append((f"{name}.out_proj", out))
        return out.detach().view(t, b, d).transpose(0, 1), None

    def delta(self, name, z):
        """Layer ``name``'s fixed δ for an output shaped like ``z`` (drawn at its first use)."""
        d = self.deltas.get((name, z.shape))
        if d is None:
            d = self.deltas[(name, z.shape)] = torch.randn_like(z) * 1e-3
        return d

    def grads(self, x, y):
        self.outputs = []
        try:
            loss = F.cross_entropy(self.net(x), y)
            taken = self.outputs
        finally:
            self.outputs = []
        if self.keep_roots:
            self.roots = taken
        torch.autograd.backward([loss, *(z for _, z in taken)], [None, *(self.delta(n, z) for n, z in taken)])
        return loss


def make_data(case: Case, n, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *case.input_shape, generator=g)
    y = torch.randint(0, case.classes, (n,), generator=g)
    return x.to(device), y.to(device)


# -- reporting ---------------------------------------------------------------------------------
def machine(threads, device="cpu"):
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    d = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ssdfa": ssdfa.__version__,
        "ssdfa_from": str(Path(ssdfa.__file__).parent),
        "methods": list(ssdfa.METHODS),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "device": device,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name(device)
    return d


def finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def write_json(result, script, out=None):
    """Write to ``out`` if given, else bench/results/<script>-<UTC date-time>.json; return path."""
    if out is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"{script}-{stamp}.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def command(script, argv):
    """The command line that produced a result, for the README and the JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"bench/{script}", *args])


def now_utc():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
