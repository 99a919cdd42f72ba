"""forward_grad (Baydin et al. 2022): g = (∇L·v)·v, v ~ N(0, I), from one forward-mode pass.

The expected values come from the paper's formula with BP's gradient computed here by plain
autograd on a copy of the network, never from the library's jvp.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa.metrics import alignment_angles, angle


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def bp_grads(net, x, y):
    ref = copy.deepcopy(net)
    F.cross_entropy(ref(x), y).backward()
    return [p.grad for p in ref.parameters()]


def step_grads(model, x, y):
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.net.parameters()]


def test_one_step_is_the_directional_derivative_times_v():
    """Baydin et al. Eq. 3 on one step: g = (∇L·v) v with the step's v (seeded, so known)."""
    net = mlp()
    model = ssdfa.convert(net, "forward_grad", seed=3)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    want_bp = bp_grads(net, x, y)
    got = step_grads(model, x, y)
    vs = model.directions(0)
    assert [v.shape for v in vs] == [p.shape for p in net.parameters()]
    d = sum(float((g * v).sum()) for g, v in zip(want_bp, vs))
    for g, v in zip(got, vs):
        torch.testing.assert_close(g, d * v, rtol=1e-4, atol=1e-6)
    assert int(model.steps) == 1
    with torch.no_grad():  # evaluation takes no step
        model(x)
    assert int(model.steps) == 1


def test_the_mean_of_many_estimates_approaches_bp():
    """Unbiased: the average of K estimates at fixed weights closes in on ∇L as 1/sqrt(K)."""
    net = mlp()
    model = ssdfa.convert(net, "forward_grad", seed=0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    want = torch.cat([g.reshape(-1) for g in bp_grads(net, x, y)])
    total, errors = torch.zeros_like(want), {}
    for k in range(1, 3001):
        total += torch.cat([g.reshape(-1) for g in step_grads(model, x, y)])
        if k in (30, 3000):
            errors[k] = float((total / k - want).norm() / want.norm())
    n = want.numel()  # the estimator's relative error is about sqrt((n + 1) / K)
    assert errors[3000] < 2.0 * math.sqrt((n + 1) / 3000), errors
    assert errors[30] > 3 * errors[3000], errors
    assert angle(total / 3000, want) < 15


def test_directions_are_the_same_on_every_replica_and_differ_per_step():
    a = ssdfa.convert(mlp(), "forward_grad", seed=7)
    b = ssdfa.convert(mlp(), "forward_grad", seed=7)
    for va, vb in zip(a.directions(5), b.directions(5)):
        assert torch.equal(va, vb)  # DDP ranks draw the same v, so their averaged g is global
    assert not torch.equal(a.directions(5)[0], a.directions(6)[0])
    with pytest.raises(ValueError, match="no forward-gradient step"):
        a.directions()


def test_frozen_parameters_get_nothing_and_train_only_is_refused():
    net = mlp()
    net[0].weight.requires_grad_(False)
    model = ssdfa.convert(net, "forward_grad", seed=0)
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    F.cross_entropy(model(x), y).backward()
    assert net[0].weight.grad is None and net[2].weight.grad is not None
    with pytest.raises(ValueError, match="requires_grad_"):
        ssdfa.convert(mlp(), "forward_grad", train_only="fc")


def test_angles_are_valid_and_training_state_is_untouched():
    """forward_grad's output layer gets an estimate too, so its dW angle is not 0 (unlike every
    other rule): checked here rather than by the registry-generated angle test."""
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8), nn.Tanh(), nn.Linear(8, 3)
    )
    model = ssdfa.convert(net, "forward_grad", num_classes=3, input_shape=(1, 6, 6), seed=0)
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    F.cross_entropy(model(x), y).backward()
    before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    steps = int(model.steps)
    res = alignment_angles(model, x, y)
    assert any(k.startswith("dW/") for k in res)
    for k, v in res.items():
        assert math.isnan(v) or 0.0 <= v <= 180.0, (k, v)
    assert int(model.steps) == steps
    assert all(
        torch.equal(p.grad, g) for p, g in zip([p for p in model.parameters() if p.grad is not None], before)
    )


def test_forward_gradient_descends_a_convex_problem():
    """Softmax regression, where the expected step is BP's: the loss falls with plain SGD."""
    torch.manual_seed(0)
    x, y = torch.randn(256, 5), torch.randint(0, 3, (256,))
    net = nn.Sequential(nn.Linear(5, 3))
    model = ssdfa.convert(net, "forward_grad", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = float(F.cross_entropy(net(x), y).detach())
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert float(F.cross_entropy(net(x), y)) < start - 0.05


@pytest.mark.parametrize("method", ["usf", "frsf", "brsf", "forward_grad", "fdfa"])
def test_compiled_training_matches_eager_for_the_new_rules(method):
    """torch.compile runs the new rules (the forward-mode passes eagerly inside the compiled
    caller, ``torch.compiler.disable``) and trains exactly as eager does."""
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    finals = []
    for compiled in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(5)  # fdfa's perturbations come from the global RNG
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        model = ssdfa.convert(net, method, seed=0)
        run = torch.compile(model, backend="aot_eager") if compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(run(x, target=y) if model.rule.direct else run(x), y).backward()
            opt.step()
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
