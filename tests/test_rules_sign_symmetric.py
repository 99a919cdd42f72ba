"""Sign-symmetric feedback (usf, frsf, brsf): each layer's ∂x goes through a B built from sign(W).

The expected gradients are written out by hand from the definitions (Liao, Leibo & Poggio 2016;
BioTorch): a tanh MLP's backward with B_2 in place of W_2, where B_2 is computed here from the
weight, never read from the library's backward.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def hand_gradients(net, x, y, b2):
    """BP through x -> W1 -> tanh -> W2 -> cross-entropy, with b2 in W2's place for ∂h."""
    w1, b1, w2, bias2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
    a1 = x @ w1.detach().T + b1.detach()
    h = torch.tanh(a1)
    z = h @ w2.detach().T + bias2.detach()
    p = torch.softmax(z, 1)
    e = (p - F.one_hot(y, 3).to(p)) / x.shape[0]  # ∂L/∂z for the batch-mean cross-entropy
    dh = e @ b2  # the substitute matrix: (batch, 3) @ (3, 7)
    da = dh * (1 - h**2)
    return {"0.weight": da.T @ x, "0.bias": da.sum(0), "2.weight": e.T @ h, "2.bias": e.sum(0)}


def library_gradients(model, x, y):
    """{name in the user's net: gradient} after one backward (parameters are shared)."""
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad for n, p in model.unwrap().named_parameters() if p.grad is not None}


def layer(model, i):
    return [m for m in model.net if hasattr(m, "backward_weight")][i]


@pytest.mark.parametrize("batch", [1, 6])
def test_usf_is_bp_through_c_sign_w(batch):
    net = mlp()
    model = ssdfa.convert(net, "usf", seed=0)
    x, y = torch.randn(batch, 5), torch.randint(0, 3, (batch,))
    w2 = net[2].weight.detach()
    c = math.sqrt(2.0 / (7 + 3))  # Xavier std of a 7 -> 3 layer
    want = hand_gradients(net, x, y, c * torch.sign(w2))
    got = library_gradients(model, x, y)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_usf_follows_the_weights_sign_at_every_step():
    net = mlp()
    model = ssdfa.convert(net, "usf", seed=0)
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    with torch.no_grad():
        net[2].weight.mul_(-1)  # every sign flips: B must flip with it
    c = math.sqrt(2.0 / 10)
    want = hand_gradients(net, x, y, c * torch.sign(net[2].weight.detach()))
    torch.testing.assert_close(library_gradients(model, x, y)["0.weight"], want["0.weight"])


def test_frsf_uses_fixed_magnitudes_with_the_current_signs():
    net = mlp()
    model = ssdfa.convert(net, "frsf", seed=0)
    m = layer(model, 1)
    r = m.feedback.clone()
    assert (r >= 0).all() and (r <= 1 / math.sqrt(7)).all() and r.std() > 0  # |U(±1/sqrt(fan_in))|
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    for _ in range(2):
        want = hand_gradients(net, x, y, r * torch.sign(net[2].weight.detach()))
        torch.testing.assert_close(library_gradients(model, x, y)["0.weight"], want["0.weight"])
        with torch.no_grad():
            net[2].weight.mul_(-1)
    assert torch.equal(m.feedback, r)  # drawn once


def test_brsf_redraws_the_magnitudes_every_batch_reproducibly():
    net = mlp()
    model = ssdfa.convert(net, "brsf", seed=0)
    twin = ssdfa.convert(mlp(), "brsf", seed=0)
    m, t = layer(model, 1), layer(twin, 1)
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    seen = []
    for _ in range(3):
        got = library_gradients(model, x, y)
        library_gradients(twin, x, y)
        r = m.feedback.clone()
        assert (r >= 0).all() and (r <= 1 / math.sqrt(7)).all()
        want = hand_gradients(net, x, y, r * torch.sign(net[2].weight.detach()))
        torch.testing.assert_close(got["0.weight"], want["0.weight"])
        assert torch.equal(r, t.feedback)  # same seed, same draws: DDP replicas and resumes agree
        seen.append(r)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    with torch.no_grad():  # evaluation draws nothing
        model(x)
    model.eval()
    model(x)
    assert torch.equal(m.feedback, seen[-1]) and int(m.draws) == 3


@pytest.mark.parametrize("method", ["usf", "frsf", "brsf"])
def test_conv_layers_send_delta_through_the_sign_matrix(method):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 25, 2),
    )
    model = ssdfa.convert(net, method, seed=0, input_shape=(2, 5, 5))
    x, y = torch.randn(3, 2, 5, 5), torch.tensor([0, 1, 1])
    got = library_gradients(model, x, y)
    conv2 = layer(model, 1)
    w = net[2].weight.detach()
    b = (
        math.sqrt(2.0 / (3 * 9 + 4 * 9)) * torch.sign(w)
        if method == "usf"
        else conv2.feedback * torch.sign(w)
    )
    # by hand: forward, ∂L/∂(conv2 out) through the linear layer by BP, then ∂(relu out) = δ ⋆ B
    a1 = F.conv2d(x, net[0].weight.detach(), net[0].bias.detach(), padding=1)
    h1 = a1.relu()
    a2 = F.conv2d(h1, w, net[2].bias.detach(), padding=1)
    z = a2.flatten(1) @ net[4].weight.detach().T + net[4].bias.detach()
    e = (torch.softmax(z, 1) - F.one_hot(y, 2)) / 3
    w_fc = net[4].weight.detach()
    b_fc = (
        math.sqrt(2.0 / (100 + 2)) * torch.sign(w_fc)
        if method == "usf"
        else layer(model, 2).feedback * torch.sign(w_fc)
    )
    d2 = (e @ b_fc).view_as(a2)  # the linear layer's ∂x goes through its own sign matrix
    dh1 = torch.nn.grad.conv2d_input(h1.shape, b, d2, padding=1)
    da1 = dh1 * (a1 > 0)
    torch.testing.assert_close(
        got["0.weight"], torch.nn.grad.conv2d_weight(x, net[0].weight.shape, da1, padding=1)
    )
    torch.testing.assert_close(got["2.weight"], torch.nn.grad.conv2d_weight(h1, w.shape, d2, padding=1))


@pytest.mark.parametrize("method", ["usf", "frsf", "brsf"])
def test_sign_matrices_are_sign_concordant_with_w(method):
    """∠(B, W) < 90° always (sign concordance); feedback_matrices gives the B of the last step."""
    from ssdfa.metrics import fa_weight_angles

    model = ssdfa.convert(mlp(), method, seed=0)
    model(torch.randn(2, 5)).sum().backward()
    for name, b in model.feedback_matrices().items():
        w = model.net.get_submodule(name).layer.weight.detach()
        assert torch.equal(torch.sign(b), torch.sign(w))
    angles = fa_weight_angles(model)
    assert len(angles) == 2 and all(a < 60 for a in angles.values()), angles


def test_norm_ratio_beside_the_angle_is_b_over_w():
    """BioTorch's ‖B‖/‖W‖: for uSF ‖c·sign(W)‖ = c·sqrt(#weights), so the ratio is known by hand."""
    from ssdfa.metrics import norm_ratios

    net = mlp()
    model = ssdfa.convert(net, "usf", seed=0)
    ratios = norm_ratios(model)
    for key, lin, c in (
        ("fa/0.layer.weight", net[0], math.sqrt(2 / 12)),
        ("fa/2.layer.weight", net[2], math.sqrt(2 / 10)),
    ):
        w = lin.weight.detach()
        assert ratios[key] == pytest.approx(c * math.sqrt(w.numel()) / float(w.norm()), rel=1e-6)
    fa = ssdfa.convert(mlp(), "fa", seed=0)
    b = fa.feedback_matrices()["2"]
    assert norm_ratios(fa)["fa/2.layer.weight"] == pytest.approx(
        float(b.norm() / fa.net[2].layer.weight.detach().norm())
    )
    dfa = ssdfa.convert(nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), "dfa", seed=0)
    ((point, bl),) = dfa.feedback_matrices().items()
    w_out = dfa.net[-1].weight.detach()
    assert norm_ratios(dfa)[f"eq14/{point}"] == pytest.approx(float(bl.norm() / w_out.norm()), rel=1e-6)
