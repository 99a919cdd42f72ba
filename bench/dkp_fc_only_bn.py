"""DKP Table 1 "BP (FC only)" with BatchNorm on batch statistics: a plain-PyTorch check for RESULTS.md.

The conv layers of `dkp-cnn` stay at their random init (requires_grad off) but run in train mode,
so BatchNorm normalises with batch statistics; `ssdfa train --train-only fc` keeps frozen layers in
eval mode instead.  Same data, optimizer and batch order as `ssdfa reproduce dkp-table1`.
Run: SSDFA_DATA=... python bench/dkp_fc_only_bn.py SEED   (one JSON line per epoch)
"""

import json
import sys

import torch
from torch import nn

from ssdfa.data import load_dataset
from ssdfa.models import create_model


def main(seed: int, epochs: int = 3, limit: int = 10000) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = load_dataset("fashion-mnist", limit_train=limit)
    net = create_model("dkp-cnn", data.input_shape, 10)
    first_fc = next(i for i, m in enumerate(net) if isinstance(m, nn.Linear))
    for m in list(net)[:first_fc]:  # conv layers and their BN stay at init; BN still in train mode
        for p in m.parameters():
            p.requires_grad_(False)
    opt = torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad],
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-6,
    )
    order = torch.Generator().manual_seed(seed)
    n = len(data.train)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, 64):
            x, y = data.train.batch(perm[i : i + 64])
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(data.test), 1000):
                x, y = data.test.batch(torch.arange(i, min(i + 1000, len(data.test))))
                correct += (net(x).argmax(1) == y).sum().item()
        print(
            json.dumps({"seed": seed, "epoch": epoch + 1, "test_acc": correct / len(data.test)}), flush=True
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
