"""Peak training memory vs depth: BP, DRTP, and DRTP update-unlocked (CPU).

Each (method, depth) runs one training step in a fresh process and reports
- ``saved MB``: the most bytes autograd held for backward at any moment (saved-tensor hooks),
- ``RSS MB``: the process's peak resident memory during the step minus its memory just before,
  after a warm-up step on a tiny batch
  (glibc's mmap threshold is pinned at 64 KiB so that freed tensors leave RSS at once, instead
  of the heap high-water mark that its dynamic threshold would report).
Run:  PYTHONPATH=src python bench/drtp_memory.py [--depths 2 4 8 16] [--width 512] [--batch 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

METHODS = (("bp", {}), ("drtp", {}), ("drtp-unlocked", {"unlocked": True}))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(method: str, depth: int, width: int, batch: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    import ssdfa

    torch.manual_seed(0)
    layers = [nn.Linear(64, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    net = nn.Sequential(*layers, nn.Linear(width, 10))
    opts = dict(METHODS)[method]
    model = ssdfa.convert(net, method.replace("-unlocked", ""), seed=0, **opts)
    x, t = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    # warm-up on a tiny batch: code pages and kernels touched once would otherwise count
    F.cross_entropy(model(x[:8], target=t[:8]), t[:8]).backward()
    for p in model.parameters():  # gradient buffers exist before we measure
        p.grad = torch.zeros_like(p)
    live = peak = 0

    class Held:
        def __init__(self, tensor):
            nonlocal live, peak
            self.t, self.n = tensor, tensor.numel() * tensor.element_size()
            live += self.n
            peak = max(peak, live)

        def __del__(self):
            nonlocal live
            live -= self.n

    before = rss_mb()
    with torch.autograd.graph.saved_tensors_hooks(Held, lambda h: h.t):
        F.cross_entropy(model(x, target=t), t).backward()
    high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
    params = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    return {
        "method": method,
        "depth": depth,
        "saved_mb": peak / 2**20,
        "rss_mb": high - before,
        "param_mb": params,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "DEPTH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.width, args.batch)))
        return 0
    print(f"hidden width {args.width}, batch {args.batch}, float32, one step on CPU")
    print(f"{'method':14s} {'depth':>5s} {'saved MB':>9s} {'RSS MB':>8s} {'params MB':>9s}")
    for method, _ in METHODS:
        for depth in args.depths:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    method,
                    str(depth),
                    "--width",
                    str(args.width),
                    "--batch",
                    str(args.batch),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{method:14s} {depth:5d} {r['saved_mb']:9.1f} {r['rss_mb']:8.1f} {r['param_mb']:9.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
