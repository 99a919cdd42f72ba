"""Where a direct rule's per-point time goes on the launch-bound models (issue 21).

    python bench/point_cost.py --threads 1                      # both models, dfa, batch 2
    python bench/point_cost.py --models transformer --rule ssdfa --reps 21

Three views of one step, all at the case's batch (2):

1. Interleaved medians (unprofiled; ``step_time.time_case``) of plain PyTorch BP, the floor
   (``_common.DetachedFloor``), the rule through ``ssdfa.convert`` and ``by-hand``: the same
   rule written with plain autograd for the *same* B_l (``HandDFA``: each point's module output
   handed on detached, the output error e computed from the logits, all e·B_l in one product
   with the B_l stacked side by side, one ``torch.autograd.backward`` from the loss and every
   point's output).  by-hand is what the rule costs with no per-point machinery; the rule's
   excess over it, divided by the points, is the machinery's cost per point.
   ``--check`` first asserts that by-hand gives ssdfa's gradients (max abs difference printed).
   On the transformer, ``ideal`` (``IdealVariant``) goes further: the model's forward written out
   with a detach per encoder layer and one small autograd Function, no hooks at all; it bounds
   what any injection can reach at one point per encoder layer.
2. The autograd graph of one step: how many nodes each variant's backward runs, by kind, and
   how many aten operators a whole step calls (counts, which a loaded machine does not blur).
3. torch.profiler over ``--steps`` steps of the rule, with ssdfa's pieces labelled from here
   (no change to ssdfa): the points' forward hooks (detach; per block also ``Point.apply`` with
   its zero carrier), the head's hook (``InjectAll.apply``, or ``Inject.apply`` per block), the
   backward nodes and, inside them, the e·B_l products (``rule.point_signals``).  Times under the
   profiler are inflated by its own per-op cost; read them as shares and counts.

Results: bench/results/point_cost-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

import _common as C
import _launch as L
import ssdfa
import ssdfa.heads
import ssdfa.points
import step_time


class HandDFA:
    """DFA (dense B_l, e = ∂L/∂z at the logits) with plain autograd, for the points and B_l of
    a converted model ``like``: δ_l = e·B_l (broadcast over the sequence for a (batch, seq, d)
    point under a (batch, M) head), all points' products in one matmul with B = [B_1 … B_P]."""

    def __init__(self, net, like):
        self.net = net
        mats = list(ssdfa.feedback_matrices(like).values())
        self.widths = [int(b.shape[1]) for b in mats]
        self.stacked = torch.cat(mats, dim=1)  # (M, ΣN)
        self.layout = list(like.layout)
        self.outputs: list = []
        for name in like.point_names:
            net.get_submodule(name).register_forward_hook(self._cut)
        if set(self.layout) - {"flat", "broadcast"}:
            raise ValueError(f"HandDFA handles flat and broadcast points, not {self.layout}")

    def _cut(self, module, inputs, out):
        h = out[0] if isinstance(out, tuple) else out
        self.outputs.append(h)
        return (h.detach(), *out[1:]) if isinstance(out, tuple) else h.detach()

    def grads(self, x, y):
        self.outputs = []
        z = self.net(x)
        hs, self.outputs = self.outputs, []
        loss = F.cross_entropy(z, y)
        with torch.no_grad():
            e = torch.softmax(z, 1)
            e[torch.arange(len(y)), y] -= 1
            e /= len(y)  # ∂(mean cross-entropy)/∂z
            signals = torch.split(e @ self.stacked, self.widths, dim=1)
        deltas = [
            s.unsqueeze(1).expand(h.shape) if lay == "broadcast" else s.view(h.shape)
            for s, h, lay in zip(signals, hs, self.layout)
        ]
        torch.autograd.backward([loss, *hs], [None, *deltas])
        return loss


class HandVariant:
    """A ``_common.Variant``-like step for HandDFA (same SGD, same initial weights)."""

    def __init__(self, case, like, momentum=0.9):
        torch.manual_seed(0)
        self.net = case.build()
        self.hand = HandDFA(self.net, like)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=momentum)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        self.hand.grads(x, y)
        self.opt.step()


class _Signals(torch.autograd.Function):
    """Identity on the logits z; in backward, z's gradient and e·B_l broadcast over the tokens
    for each encoder layer's output (the whole injection, four lines of Python)."""

    @staticmethod
    def forward(ctx, stacked, widths, z, *hs):
        ctx.stacked, ctx.widths, ctx.shapes = stacked, widths, [h.shape for h in hs]
        return z.view_as(z)

    @staticmethod
    def backward(ctx, e):
        signals = torch.split(e @ ctx.stacked, ctx.widths, dim=1)
        return (None, None, e, *(s.unsqueeze(1).expand(sh) for s, sh in zip(signals, ctx.shapes)))


class IdealVariant:
    """DFA on ``_launch.TransformerClassifier`` as lean as it can be written: the model's own
    forward spelled out with ``.detach()`` after each encoder layer, no hooks, no wrapper, and
    one autograd Function (``_Signals``) for every point, with the B_l of ``like``.  What no
    injection can beat at one point per encoder layer.  ``bp=True`` (variant ``bp-loop``) is
    plain BP through the very same spelled-out forward, the fair baseline for it (plain BP
    calls ``nn.TransformerEncoder``'s own forward)."""

    def __init__(self, case, like, momentum=0.9, bp=False):
        torch.manual_seed(0)
        self.bp = bp
        self.net = case.build()
        mats = list(ssdfa.feedback_matrices(like).values())
        self.widths = [int(b.shape[1]) for b in mats]
        self.stacked = torch.cat(mats, dim=1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=momentum)

    def logits(self, x):
        n, hs = self.net, []
        h = n.embed(x) + n.pos[: x.shape[1]]
        for layer in n.encoder.layers:
            out = layer(h)
            hs.append(out)
            h = out if self.bp else out.detach()
        if self.bp:
            return n.head(h.mean(dim=1))
        return _Signals.apply(self.stacked, self.widths, n.head(h.mean(dim=1)), *hs)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.logits(x), y).backward()
        self.opt.step()


def _max_grad_difference(case, rule_variant, net, other_backward, x, y, what):
    """Max |∂θ_ssdfa - ∂θ_other| over every parameter, one step from the same weights and the
    same dropout draws; ``other_backward()`` fills ``net``'s gradients."""
    torch.manual_seed(5)
    rule_variant.model.zero_grad(set_to_none=True)
    F.cross_entropy(rule_variant.model(x, target=y), y).backward()
    torch.manual_seed(5)
    net.zero_grad(set_to_none=True)
    other_backward()
    worst = 0.0
    for (name, p), q in zip(rule_variant.net.named_parameters(), net.parameters()):
        if (p.grad is None) != (q.grad is None):
            raise AssertionError(f"{case.name}: {name} has a gradient in one of ssdfa / {what} only")
        if p.grad is not None:
            worst = max(worst, (p.grad - q.grad).abs().max().item())
    return worst


def check_ideal_gradients(case, rule_variant, ideal, x, y):
    """Max |∂θ_ssdfa - ∂θ_ideal| over every parameter, one step from the same weights."""
    ideal.net.load_state_dict(rule_variant.net.state_dict())

    def backward():
        F.cross_entropy(ideal.logits(x), y).backward()

    return _max_grad_difference(case, rule_variant, ideal.net, backward, x, y, "ideal")


def check_same_gradients(case, rule_variant, hand, x, y):
    """Max |∂θ_ssdfa - ∂θ_by-hand| over every parameter, one step from the same weights."""
    net = case.build()
    net.load_state_dict(rule_variant.net.state_dict())  # the rule's current weights
    probe = HandDFA(net, rule_variant.model)
    return _max_grad_difference(case, rule_variant, net, lambda: probe.grads(x, y), x, y, "by-hand")


def graph_nodes(roots):
    """Count the autograd nodes reachable from ``roots`` (grad_fns), by type name."""
    seen, stack, kinds = set(), [r for r in roots if r is not None], {}
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        kinds[type(fn).__name__] = kinds.get(type(fn).__name__, 0) + 1
        stack += [f for f, _ in fn.next_functions if f is not None]
    return {"total": len(seen), "by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}


def step_graph(name, v, x, y):
    """The nodes one step's backward runs (the forward is done, nothing is stepped)."""
    if name == "floor":
        f = v.floor
        f.outputs = []
        loss = F.cross_entropy(f.net(x), y)
        roots, f.outputs = [loss, *(z for _, z in f.outputs)], []
    elif name == "by-hand":
        h = v.hand
        h.outputs = []
        loss = F.cross_entropy(h.net(x), y)
        roots, h.outputs = [loss, *h.outputs], []
    elif name in ("ideal", "bp-loop"):
        roots = [F.cross_entropy(v.logits(x), y)]
    elif name == "plain-bp":
        roots = [F.cross_entropy(v.model(x), y)]
    else:
        roots = [F.cross_entropy(v.model(x, target=y), y)]
    return graph_nodes([r.grad_fn for r in roots])


@contextlib.contextmanager
def labelled(rule_obj):
    """Label ssdfa's per-point pieces for the profiler (restored on exit)."""
    patched = [
        (getattr(ssdfa.points, "OutputPoint", None), "__call__", "ssdfa: point wrap (fwd)"),
        (getattr(ssdfa.points, "InputPoint", None), "__call__", "ssdfa: point wrap (fwd)"),
        (getattr(ssdfa.heads, "HeadWrap", None), "__call__", "ssdfa: head wrap (fwd)"),
        (rule_obj, "point_signals", "ssdfa: e·B_l (point_signals)"),
    ]
    saved = []
    for obj, attr, label in patched:
        fn = getattr(obj, attr, None)
        if fn is None:  # an engine without this piece: its row reads 0
            continue
        saved.append((obj, attr, obj.__dict__.get(attr)))

        def wrapped(*args, _fn=fn, _label=label, **kwargs):
            with record_function(_label):
                return _fn(*args, **kwargs)

        setattr(obj, attr, wrapped)
    try:
        yield
    finally:
        for obj, attr, old in saved:
            if old is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)


GROUPS = {  # label in the report -> profiler event keys (their total CPU time, children included)
    "step": ["step"],
    "forward (model call)": ["forward"],
    "loss + backward": ["backward"],
    "optimizer": ["Optimizer.step#SGD.step"],
    "point wraps (fwd: detach; per block: Point.apply, carrier)": ["ssdfa: point wrap (fwd)"],
    "head wrap (fwd: InjectAll.apply, or Inject.apply per block)": ["ssdfa: head wrap (fwd)"],
    "InjectAll.backward node (at once)": ["autograd::engine::evaluate_function: InjectAllBackward"],
    "Point.backward nodes (per block)": ["autograd::engine::evaluate_function: PointBackward"],
    "  of which e·B_l (point_signals)": ["ssdfa: e·B_l (point_signals)"],
    "Inject.backward node (per block)": ["autograd::engine::evaluate_function: InjectBackward"],
}


def aten_calls(v, x, y, steps=2):
    """aten operators one step calls (a count: unlike times, not blurred by a loaded machine)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            v.step(x, y)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) / steps


def profile_rule(v, x, y, steps):
    """Per-step time of each GROUPS entry and how often it ran, under torch.profiler."""
    for _ in range(2):
        v.step(x, y)

    def one():
        v.opt.zero_grad(set_to_none=True)
        with record_function("forward"):
            out = v.model(x, target=y)
        with record_function("backward"):
            F.cross_entropy(out, y).backward()
        v.opt.step()

    with labelled(v.model.rule), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("step"):
                one()
    events = {e.key: e for e in prof.key_averages()}
    out = {}
    for label, keys in GROUPS.items():
        found = [events[k] for k in keys if k in events]
        out[label] = {
            "ms_per_step": sum(e.cpu_time_total for e in found) / steps / 1e3,
            "calls_per_step": sum(e.count for e in found) / steps,
        }
    zeros = [e for k, e in events.items() if k in ("aten::new_zeros", "aten::zeros")]
    out["zero tensors made (carriers among them)"] = {
        "ms_per_step": sum(e.cpu_time_total for e in zeros) / steps / 1e3,
        "calls_per_step": sum(e.count for e in zeros) / steps,
    }
    out["aten ops per step"] = {
        "ms_per_step": float("nan"),
        "calls_per_step": sum(e.count for k, e in events.items() if k.startswith("aten::")) / steps,
    }
    return out


def run_model(key, a):
    case = L.CASES[key]
    if a.batch:
        case = C.Case(**{**case.__dict__, "batch": a.batch})
    x, y = C.make_data(case, case.batch, seed=1)
    variants = {
        "plain-bp": C.Variant("plain-bp", case, momentum=a.momentum),
        "floor": C.Variant("floor", case, momentum=a.momentum),
        a.rule: C.Variant(a.rule, case, momentum=a.momentum),
    }
    model = variants[a.rule].model
    if a.rule == "dfa":
        variants["by-hand"] = HandVariant(case, model, a.momentum)
        if key == "transformer":
            variants["ideal"] = IdealVariant(case, model, a.momentum)
            variants["bp-loop"] = IdealVariant(case, model, a.momentum, bp=True)
    entry = {
        "case": case.name,
        "batch": case.batch,
        "rule": a.rule,
        "points": list(model.point_names),
        "layout": list(model.layout),
        "feedback_shapes": {k: list(t.shape) for k, t in ssdfa.feedback_matrices(model).items()},
    }
    if "by-hand" in variants and a.check:
        entry["by_hand_max_grad_difference"] = check_same_gradients(
            case, variants[a.rule], variants["by-hand"], x, y
        )
    if "ideal" in variants and a.check:
        entry["ideal_max_grad_difference"] = check_ideal_gradients(
            case, variants[a.rule], variants["ideal"], x, y
        )
    entry["graph"] = {n: step_graph(n, v, x, y) for n, v in variants.items()}
    for v in variants.values():
        v.step(x, y)
    entry["aten_calls_per_step"] = {n: aten_calls(v, x, y) for n, v in variants.items()}
    times = step_time.time_case(case, variants, a)
    med = {n: statistics.median(t) for n, t in times.items()}
    entry["median_step_seconds"], entry["all_step_seconds"] = med, times
    entry["paired_ratio_to_plain_bp"] = step_time.paired(times, "plain-bp")
    entry["profile"] = profile_rule(variants[a.rule], x, y, a.profile_steps)
    print_model(entry, med)
    return entry


def print_model(entry, med):
    p = len(entry["points"])
    print(
        f"\n{entry['case']}, batch {entry['batch']}, {entry['rule']}: {p} points "
        f"{entry['points']}, layout {sorted(set(entry['layout']))}"
    )
    if "by_hand_max_grad_difference" in entry:
        print(f"  by-hand vs ssdfa gradients: max |difference| {entry['by_hand_max_grad_difference']:.2e}")
    if "ideal_max_grad_difference" in entry:
        print(f"  ideal vs ssdfa gradients: max |difference| {entry['ideal_max_grad_difference']:.2e}")
    bp = med["plain-bp"]
    print(
        f"  {'variant':10s} {'ms/step':>8s} {'x BP':>6s} {'paired [q1, q3]':>22s} {'nodes':>6s} {'aten ops':>9s}"
    )
    for n, m in med.items():
        pr = entry["paired_ratio_to_plain_bp"][n]
        spread = f"{pr['median']:.3f} [{pr['q1']:.3f}, {pr['q3']:.3f}]"
        print(
            f"  {n:10s} {m * 1e3:8.2f} {m / bp:6.3f} {spread:>22s} {entry['graph'][n]['total']:6d} "
            f"{entry['aten_calls_per_step'][n]:9.0f}"
        )
    if "by-hand" in med:
        extra = med[entry["rule"]] - med["by-hand"]
        print(f"  {entry['rule']} - by-hand = {extra * 1e3:.2f} ms/step = {extra / p * 1e3:.3f} ms per point")
    print(f"  profiler, {entry['rule']} (ms per step under the profiler, calls per step):")
    for label, r in entry["profile"].items():
        print(f"    {label:52s} {r['ms_per_step']:8.2f} ms  x{r['calls_per_step']:.0f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,transformer", help="of resnet18, transformer")
    p.add_argument("--rule", default="dfa", help="a direct rule (by-hand exists for dfa only)")
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--steps", type=int, default=3, help="steps per timed repetition")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-check", dest="check", action="store_false", help="skip the by-hand = ssdfa gradient check"
    )
    p.add_argument("--quick", action="store_true", help="1-2 tiny iterations: checks it runs")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.steps, a.warmup, a.profile_steps = 2, 1, 1, 1
    a.device = "cpu"
    torch.set_num_threads(a.threads)
    models = C.parse_list(a.models, list(L.CASES), "model")
    result = {
        "script": "point_cost",
        "date": C.now_utc(),
        "command": C.command("point_cost.py", argv),
        "machine": C.machine(a.threads),
        "reps": a.reps,
        "steps_per_rep": a.steps,
        "profile_steps": a.profile_steps,
        "models": {},
    }
    for key in models:
        result["models"][key] = run_model(key, a)
    path = C.write_json(result, "point_cost", a.out)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
