"""Models users already have, trained with one added line: accuracy and time per rule.

The pytorch/examples MNIST ``Net`` with its own recipe (Adadelta lr 1, StepLR gamma 0.7, batch
64, log_softmax + nll_loss), torchvision's ResNet-18 architecture and an nn.TransformerEncoder
classifier reading an image's 28 rows as tokens, all from ``tests/zoo.py``, on Fashion-MNIST.
Each rule gets the same initial weights; ``plain`` is the unconverted model (BP) for timing.
With ``--compile`` it also times eager against ``torch.compile`` steps of the converted model.

    python bench/real_models.py --model examples-net --epochs 1
    python bench/real_models.py --model resnet18 --epochs 2 --device cuda
    python bench/real_models.py --model transformer --epochs 3 --compile
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import _common  # noqa: F401  (puts src/ on the path when ssdfa is not installed)
import ssdfa
from ssdfa.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from zoo import ExamplesNet, TransformerClassifier, resnet18  # noqa: E402

METHODS = ["plain", "bp", "dfa", "ssdfa", "dkp", "drtp", "shallow"]


def make_model(name, width):
    if name == "examples-net":
        return ExamplesNet()
    if name == "resnet18":
        return resnet18(num_classes=10, in_channels=1, width=width)
    return TransformerClassifier(d=width, heads=4, layers=4, num_classes=10, seq=28, in_features=28)


def shaped(x, name):
    return x.view(-1, 28, 28) if name == "transformer" else x


def recipe(name, params, lr):
    """The examples' own optimizer and schedule for its Net; SGD+momentum, or AdamW, otherwise."""
    if name == "examples-net":
        opt = torch.optim.Adadelta(params, lr=lr or 1.0)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    if name == "transformer":
        opt = torch.optim.AdamW(params, lr=lr or 1e-3)
        return opt, None
    opt = torch.optim.SGD(params, lr=lr or 0.05, momentum=0.9, weight_decay=5e-4)
    return opt, None


def loss_of(name):
    return F.nll_loss if name == "examples-net" else F.cross_entropy


def evaluate(model, data, name, device):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data.test), 1000):
            x, y = data.test.batch(torch.arange(i, min(i + 1000, len(data.test))))
            correct += (model(shaped(x.to(device), name)).argmax(1).cpu() == y).sum().item()
    model.train()
    return 100.0 * correct / len(data.test)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train(method, init, data, args, device):
    net = copy.deepcopy(init).to(device)
    x0 = shaped(data.train.batch(torch.arange(2))[0], args.model).to(device)
    model = (
        net if method == "plain" else ssdfa.convert(net, method, seed=0, num_classes=10, example_input=x0)
    )  # the one line
    opt, sched = recipe(args.model, model.parameters(), args.lr)
    loss_fn = loss_of(args.model)
    gen = torch.Generator().manual_seed(0)
    n = min(len(data.train), args.limit_train or len(data.train))
    epochs = []
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=gen)
        sync(device)
        start = time.perf_counter()
        for i in range(0, n, args.batch_size):
            x, y = data.train.batch(perm[i : i + args.batch_size])
            x, y = shaped(x.to(device), args.model), y.to(device)
            opt.zero_grad()
            out = model(x) if method == "plain" else model(x, target=y)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
        sync(device)
        seconds = time.perf_counter() - start
        if sched is not None:
            sched.step()
        acc = evaluate(model, data, args.model, device)
        epochs.append(
            {"epoch": epoch + 1, "test_accuracy": acc, "seconds": seconds, "train_loss": float(loss.detach())}
        )
        print(
            f"  {method:8s} epoch {epoch + 1}: test {acc:.2f} %  {seconds:.1f} s  "
            f"loss {float(loss.detach()):.3f}",
            flush=True,
        )
    return epochs


def step_times(method, init, data, args, device, steps=30):
    """Seconds per training step, eager vs torch.compile, same batch, after warm-up."""
    out = {}
    x, y = data.train.batch(torch.arange(args.batch_size))
    x, y = shaped(x.to(device), args.model), y.to(device)
    for mode in ("eager", "compiled"):
        torch._dynamo.reset()
        net = copy.deepcopy(init).to(device)
        model = net if method == "plain" else ssdfa.convert(net, method, seed=0, example_input=x)
        run = torch.compile(model) if mode == "compiled" else model
        opt, _ = recipe(args.model, model.parameters(), args.lr)

        def step():
            opt.zero_grad()  # noqa: B023  (called within this iteration)
            out = run(x) if method == "plain" else run(x, target=y)  # noqa: B023  (called within this iteration)
            loss_of(args.model)(out, y).backward()
            opt.step()  # noqa: B023  (called within this iteration)

        t0 = time.perf_counter()
        for _ in range(3):
            step()
        sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        out[mode] = (time.perf_counter() - t0) / steps
        out[f"{mode}_warmup_s"] = warm
    if method != "plain":
        model.eval()
        explained = torch._dynamo.explain(model)(x)
        out["graph_breaks"] = explained.graph_break_count
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["examples-net", "resnet18", "transformer"], default="examples-net")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None, help="the recipe's own by default")
    ap.add_argument("--width", type=int, default=None, help="ResNet width (64) / d_model (64)")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time eager vs torch.compile")
    ap.add_argument("--quick", action="store_true", help="a few hundred images, to check it runs")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.limit_train, args.epochs = 256, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset("fashion-mnist") if not args.quick else _tiny()
    torch.manual_seed(0)
    init = make_model(args.model, args.width or (8 if args.quick else 64))
    results = {"model": args.model, "recipe": recipe.__doc__, "methods": {}}
    for method in args.methods.split(","):
        print(f"{args.model}: {method}", flush=True)
        entry = {"epochs": train(method, init, data, args, device)}
        if args.compile:
            entry["step_seconds"] = step_times(
                method, init, data, args, device, steps=3 if args.quick else 30
            )
            print(
                f"  {method:8s} step eager {entry['step_seconds']['eager'] * 1e3:.1f} ms, "
                f"compiled {entry['step_seconds']['compiled'] * 1e3:.1f} ms",
                flush=True,
            )
        results["methods"][method] = entry
    plain = results["methods"].get("plain", {}).get("epochs")
    print("\n| method | test accuracy (%) | s / epoch | x plain BP |\n|---|---|---|---|")
    for method, entry in results["methods"].items():
        last = entry["epochs"][-1]
        ratio = last["seconds"] / plain[-1]["seconds"] if plain else float("nan")
        print(f"| {method} | {last['test_accuracy']:.2f} | {last['seconds']:.1f} | {ratio:.2f} |")
    results["machine"] = _common.machine(args.threads, args.device)
    results["command"] = _common.command("real_models.py", argv)
    print("wrote", _common.write_json(results, "real_models", args.out))


def _tiny():
    from ssdfa.data import Dataset, TensorSplit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g)
    return Dataset("tiny", TensorSplit(x[:256], y[:256]), TensorSplit(x[256:], y[256:]), (1, 28, 28), 10)


if __name__ == "__main__":
    main()
