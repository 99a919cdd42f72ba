"""Epoch time of direct methods against plain PyTorch backprop, in one interleaved run.

    python bench/epoch_time.py                 # FC 784-1000-1000-1000-10 tanh, batch 128
    python bench/epoch_time.py --quick --json  # a few seconds, machine-readable

Each repetition runs every variant once, in a rotated order, on the same synthetic data, model
shape, optimizer and thread count; we report medians over repetitions (after a warm-up) and the
ratio of each to plain PyTorch BP measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import ssdfa  # noqa: E402


def fc_net(sizes=(784, 1000, 1000, 1000, 10)):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def make_variant(name: str, seed: int = 0):
    torch.manual_seed(seed)
    net = fc_net()
    if name == "plain-bp":
        model = net
    else:
        model = ssdfa.convert(net, name, num_classes=10, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, opt


def epoch(model, opt, xs, ys, batch):
    for i in range(0, len(xs), batch):
        x, y = xs[i : i + batch], ys[i : i + batch]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="dfa,ssdfa,bp", help="ssdfa methods beside plain-bp")
    p.add_argument("--examples", type=int, default=8192)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    if a.quick:
        a.examples, a.reps = 256, 2
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(a.examples, 784, generator=g)
    ys = torch.randint(0, 10, (a.examples,), generator=g)
    names = ["plain-bp"] + [m for m in a.methods.split(",") if m]
    variants = {n: make_variant(n) for n in names}
    for n in names:  # warm-up
        epoch(*variants[n], xs[: a.batch * 4], ys[: a.batch * 4], a.batch)
    times = {n: [] for n in names}
    for r in range(a.reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            epoch(*variants[n], xs, ys, a.batch)
            times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    result = {
        "benchmark": "fc-784-1000x3-10-tanh epoch",
        "examples": a.examples,
        "batch": a.batch,
        "reps": a.reps,
        "threads": a.threads,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
            "cpus": torch.get_num_threads(),
        },
        "median_seconds": med,
        "ratio_to_plain_bp": {n: med[n] / med["plain-bp"] for n in names},
    }
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'variant':10s} {'median s':>9s} {'x plain BP':>10s}")
        for n in names:
            print(f"{n:10s} {med[n]:9.3f} {result['ratio_to_plain_bp'][n]:10.3f}")
    return result


if __name__ == "__main__":
    main()
