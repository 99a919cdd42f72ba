"""Train a 64-400-10 tanh MLP on scikit-learn's 8x8 digits with bp, dfa and ssdfa.

The quick demonstration until the CLI lands: one model definition, one line per rule.
"""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import ssdfa


def main(epochs: int = 30, seed: int = 0) -> dict[str, float]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    results = {}
    for method in ("bp", "dfa", "ssdfa"):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(64, 400), nn.Tanh(), nn.Linear(400, 10))
        model = ssdfa.convert(net, method=method, num_classes=10, seed=seed)  # the one line
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(epochs):
            perm = torch.randperm(len(xtr))
            for i in range(0, len(xtr), 32):
                idx = perm[i:i + 32]
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            results[method] = (model(xte).argmax(1) == yte).float().mean().item()
        print(f"{method:6s} test accuracy {100 * results[method]:.1f}%")
    return results


if __name__ == "__main__":
    main()
