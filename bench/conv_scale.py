"""Does conv-layer feedback have the right scale?  Per-layer update sizes, and a short training
at BP's learning rate, for the MNIST and CIFAR CNNs.

    python bench/conv_scale.py               # both CNNs, bp/dfa/ssdfa (+ BioTorch dfa if found)
    python bench/conv_scale.py --quick

1. One plain SGD step (lr 0.01) on one batch: ||ΔW_l|| / ||W_l|| for every weight layer.  A
   direct method whose conv feedback is mis-scaled gives one layer an update orders of
   magnitude above the others ("spread" = largest / smallest ratio).
2. ``--steps`` steps of SGD (lr 0.01, momentum 0.9) on a learnable synthetic task (class
   prototypes plus noise): first and last loss, accuracy on the last batches, and whether the
   loss diverged (non-finite, or above 3x its start).
Results: bench/results/conv_scale-<date>.json.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

import _common as C


def weight_layers(net):
    """[(label, layer)]: 'conv<i>' / 'fc<i>' by position among the weight layers."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return [(f"{'conv' if isinstance(m, nn.Conv2d) else 'fc'}{i}", m) for i, m in enumerate(layers)]


def synthetic(case, n, seed=0):
    """x = class prototype + noise: learnable in a few dozen steps, same for every method."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(case.classes, *case.input_shape, generator=g)
    y = torch.randint(0, case.classes, (n,), generator=g)
    x = 0.5 * protos[y] + torch.randn(n, *case.input_shape, generator=g)
    return x, y


def update_ratios(name, case, x, y, lr, biotorch):
    v = C.Variant(name, case, lr=lr, momentum=0.0, biotorch=biotorch)
    layers = weight_layers(v.net)
    before = [m.weight.detach().clone() for _, m in layers]
    v.step(x, y)
    return {n: float((m.weight.detach() - w0).norm() / w0.norm()) for (n, m), w0 in zip(layers, before)}


def train(name, case, xs, ys, steps, batch, lr, biotorch):
    v = C.Variant(name, case, lr=lr, momentum=0.9, biotorch=biotorch)
    losses, correct, seen = [], 0, 0
    for s in range(steps):
        i = (s * batch) % (len(xs) - batch + 1)
        x, y = xs[i : i + batch], ys[i : i + batch]
        with torch.no_grad():
            out = v.net(x)  # the user's net: ssdfa shares its layers, BioTorch converted it in place
            losses.append(float(F.cross_entropy(out, y)))
            if s >= steps - max(1, steps // 5):
                correct += int((out.argmax(1) == y).sum())
                seen += len(y)
        v.step(x, y)
        if not math.isfinite(losses[-1]):
            break
    first = losses[0]
    diverged = not all(math.isfinite(v) for v in losses) or max(losses) > 3 * first
    return {
        "first_loss": first,
        "last_loss": losses[-1],
        "max_loss": max(losses),
        "last_accuracy": correct / max(1, seen),
        "diverged": diverged,
        "steps": len(losses),
        "losses": losses,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="mnist-cnn,cifar-cnn")
    p.add_argument("--methods", default="bp,dfa,sdfa,ssdfa,drtp")
    p.add_argument("--no-biotorch", action="store_true")
    p.add_argument("--biotorch-path", default=None)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.cases, a.steps, a.batch, a.methods, a.no_biotorch = "mnist-cnn", 2, 4, "bp,dfa,ssdfa", True
    torch.set_num_threads(a.threads)
    cases = C.parse_list(a.cases, list(C.CASES), "case")
    methods, missing = C.available_methods(C.parse_list(a.methods, C.WANTED + list(C.OPTIONS), "method"))
    biotorch, why = (None, "disabled") if a.no_biotorch else C.import_biotorch(a.biotorch_path)
    if biotorch is None:
        print(f"[skip] BioTorch: {why}", file=sys.stderr)
    names = ["plain-bp", *methods] + (["biotorch-bp", "biotorch-dfa"] if biotorch else [])
    result = {
        "script": "conv_scale",
        "date": C.now_utc(),
        "command": C.command("conv_scale.py", argv),
        "machine": C.machine(a.threads),
        "lr": a.lr,
        "steps": a.steps,
        "batch": a.batch,
        "skipped_methods": missing,
        "cases": {},
    }
    for cname in cases:
        case = C.CASES[cname]
        xs, ys = synthetic(case, max(a.batch * min(a.steps, 20), a.batch))
        rows = {}
        for n in names:
            try:
                ratios = update_ratios(n, case, xs[: a.batch], ys[: a.batch], a.lr, biotorch)
                tr = train(n, case, xs, ys, a.steps, a.batch, a.lr, biotorch)
            except Exception as exc:  # one method failing must not hide the others
                rows[n] = {"skipped": f"{type(exc).__name__}: {exc}"}
                print(f"[skip] {cname}/{n}: {rows[n]['skipped']}", file=sys.stderr)
                continue
            vals = [r for r in ratios.values() if r > 0]
            rows[n] = {
                "update_ratio": ratios,
                "spread": max(vals) / min(vals) if vals else float("nan"),
                **tr,
            }
        result["cases"][cname] = rows
        print(f"\n{cname}: ||ΔW||/||W|| after one SGD step at lr {a.lr}; {a.steps} steps with momentum")
        layer_names = list(next(r for r in rows.values() if "update_ratio" in r)["update_ratio"])
        print(
            f"  {'method':13s}"
            + "".join(f"{ln[-10:]:>11s}" for ln in layer_names)
            + f"{'spread':>8s}{'loss0':>9s}{'lossN':>10s}{'acc':>6s}  diverged"
        )
        for n, r in rows.items():
            if "skipped" in r:
                print(f"  {n:13s} skipped")
                continue
            print(
                f"  {n:13s}"
                + "".join(f"{v:11.2e}" for v in r["update_ratio"].values())
                + f"{r['spread']:8.1f}{r['first_loss']:9.3f}{r['last_loss']:10.4g}"
                + f"{r['last_accuracy']:6.2f}  {r['diverged']}"
            )
    path = C.write_json(result, "conv_scale", a.out)
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
