"""The FDFA paper's fully connected setting on Fashion-MNIST (Bacho & Chu 2024; code
Florian-BACHO/FDFA, main.py and networks/fc_mnist.py), short.

Their FC network: 784-800-800-10, each hidden layer Linear -> BatchNorm1d -> ReLU with the DFA
hook after the ReLU; Adam lr 1e-4, batch 64, 100 epochs, inputs normalised.  Their forward
gradient baseline (main_fwd_grad.py, networks/fc_mnist_fwd.py): 784-800-10 ReLU, no BatchNorm,
Adam lr 1e-3, one direction per batch over all parameters.  This script trains ours the same way
for a few epochs on one CPU thread and records test error after each epoch.  The paper's own
numbers were not found (the paper is not in shared/papers and its tables were not reachable).

    PYTHONPATH=src python bench/fdfa_fmnist.py --epochs 1 --methods bp,dfa,fdfa,forward_grad
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa.data import load_dataset


def fc_net(method):
    if method == "forward_grad":  # their forward-gradient network
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 800), nn.ReLU(), nn.Linear(800, 10))
    layers, width = [nn.Flatten()], 784
    for _ in range(2):
        layers += [nn.Linear(width, 800), nn.BatchNorm1d(800), nn.ReLU(), ssdfa.FeedbackPoint()]
        width = 800
    return nn.Sequential(*layers, nn.Linear(800, 10))


def test_error(model, data, batch=1000):
    model.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(data.test), batch):
            x, y = data.test.batch(torch.arange(i, min(i + batch, len(data.test))))
            wrong += int((model(x).argmax(1) != y).sum())
    model.train()
    return 100.0 * wrong / len(data.test)


def train(method, data, epochs, seed):
    torch.manual_seed(seed)
    model = ssdfa.convert(fc_net(method), method, seed=seed, input_shape=(1, 28, 28))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if method == "forward_grad" else 1e-4)
    g = torch.Generator().manual_seed(seed)
    errors, t0 = [], time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(data.train), generator=g)
        for i in range(0, len(perm), 64):
            x, y = data.train.batch(perm[i : i + 64])
            opt.zero_grad()
            F.cross_entropy(model(x, target=y), y).backward()
            opt.step()
        errors.append(test_error(model, data))
        print(
            f"  {method}: epoch {len(errors)} test error {errors[-1]:.2f}% "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return {"method": method, "test_error_by_epoch": errors, "seconds": round(time.perf_counter() - t0, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="bp,dfa,fdfa,forward_grad")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fdfa_fmnist.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    rows = []
    for m in args.methods.split(","):
        rows.append(train(m, data, args.epochs, args.seed))
        Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    for r in rows:
        print(f"| {r['method']} | {r['test_error_by_epoch'][-1]:.2f} |")


if __name__ == "__main__":
    main()
