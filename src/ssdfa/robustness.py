"""Adversarial robustness of a trained network (Sanfiz & Akrout 2021, BioTorch's benchmark).

Both attacks perturb the input inside an L∞ ball of radius ε, using the gradient of the loss
with respect to the input taken by exact backpropagation through the *trained weights* (the
plain network, ``model.unwrap()``, in eval mode), whatever rule trained them: the attacker knows
the network, not how it learned.

- FGSM (Goodfellow et al. 2015): x' = x + ε·sign(∇ₓL(x, y)).
- PGD (Madry et al. 2018): a uniform random start in the ball, then K steps
  x ← Π_ball(x + α·sign(∇ₓL)), α = 2.5·ε/K (Madry et al.'s choice).

Inputs are perturbed in the representation the network reads (ssdfa's normalised data) and
kept within ``clamp`` (the range of the clean inputs) so no value leaves what the data can hold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ATTACKS = ("fgsm", "pgd")


def _input_grad(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(net(x), y)
        (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(net, x, y, epsilon: float, loss_fn: Callable = F.cross_entropy, clamp=None):
    """x + ε·sign(∇ₓL), clamped to ``clamp`` = (low, high) when given."""
    adv = x + epsilon * _input_grad(net, x, y, loss_fn).sign()
    return adv if clamp is None else adv.clamp(*clamp)


def pgd(
    net,
    x,
    y,
    epsilon: float,
    steps: int,
    loss_fn: Callable = F.cross_entropy,
    clamp=None,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
):
    """L∞ PGD: uniform start in the ε-ball, ``steps`` signed-gradient steps of ``step_size``
    (default 2.5·ε/steps), each projected back onto the ball (and ``clamp``)."""
    alpha = 2.5 * epsilon / steps if step_size is None else step_size
    noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
    adv = x + epsilon * noise
    for _ in range(steps):
        adv = adv + alpha * _input_grad(net, adv, y, loss_fn).sign()
        adv = torch.max(torch.min(adv, x + epsilon), x - epsilon)
        if clamp is not None:
            adv = adv.clamp(*clamp)
    return adv.detach()


def adversarial_accuracy(
    model: nn.Module,
    split,
    attack: str,
    epsilon: float,
    *,
    steps: int = 10,
    batch_size: int = 256,
    device="cpu",
    loss_fn: Callable = F.cross_entropy,
    seed: int = 0,
) -> dict:
    """{"clean_acc", "adv_acc", "examples"} of ``model`` (converted or plain) on ``split``
    under ``attack`` ("fgsm" or "pgd") at ``epsilon``; the attack backpropagates exactly."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of: {', '.join(ATTACKS)}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    if attack == "pgd" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    net = model.unwrap() if hasattr(model, "unwrap") else model
    was = net.training
    net.eval()
    n = len(split)
    low = high = None
    for i in range(0, n, batch_size):  # the clean inputs' range
        x, _ = split.batch(torch.arange(i, min(i + batch_size, n)))
        low = x.min() if low is None else torch.minimum(low, x.min())
        high = x.max() if high is None else torch.maximum(high, x.max())
    clamp = (float(low), float(high))
    gen = torch.Generator().manual_seed(seed)
    clean = adv_correct = 0
    try:
        for i in range(0, n, batch_size):
            x, y = split.batch(torch.arange(i, min(i + batch_size, n)))
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                clean += int((net(x).argmax(1) == y).sum())
            if attack == "fgsm":
                xa = fgsm(net, x, y, epsilon, loss_fn, clamp)
            else:
                xa = pgd(net, x, y, epsilon, steps, loss_fn, clamp, generator=gen)
            with torch.no_grad():
                adv_correct += int((net(xa).argmax(1) == y).sum())
    finally:
        net.train(was)
    return {
        "clean_acc": clean / max(n, 1),
        "adv_acc": adv_correct / max(n, 1),
        "examples": n,
        "input_range": list(clamp),
    }
