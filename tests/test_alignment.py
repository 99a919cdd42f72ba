"""Alignment angles against hand-computed cases and independent tensor algebra."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa.alignment import (
    alignment_angles,
    angle,
    fa_weight_angles,
    feedback_weight_angles,
    output_prediction_angles,
)


def test_angle_hand_cases():
    a = torch.tensor([1.0, 2.0, -3.0])
    assert angle(a, a) == pytest.approx(0.0, abs=1e-6)
    assert angle(a, 5 * a) == pytest.approx(0.0, abs=1e-6)
    assert angle(a, -a) == pytest.approx(180.0, abs=1e-6)
    assert angle(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])) == pytest.approx(90.0)
    assert angle(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert angle(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 3.0**0.5])) == pytest.approx(120.0)
    # shapes do not matter, only the flattened vectors
    assert angle(torch.eye(2), torch.tensor([1.0, 0.0, 0.0, 1.0])) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(angle(torch.zeros(3), a))
    with pytest.raises(ValueError):
        angle(torch.zeros(3), torch.zeros(4))


def _mlp(seed=0, act=nn.Tanh):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 5), act(), nn.Linear(5, 3))


def _batch(seed=1, n=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_bp_is_aligned_with_itself():
    model = ssdfa.convert(_mlp(), method="bp", num_classes=3)
    x, y = _batch()
    res = alignment_angles(model, x, y)
    assert set(k for k in res if k.startswith("delta/")) == {"delta/point0", "delta/point1"}
    assert len([k for k in res if k.startswith("dW/")]) == 6
    for k, v in res.items():
        assert v == pytest.approx(0.0, abs=1e-3), k


def test_direct_feedback_equal_to_downstream_weights_gives_zero():
    """Linear net: B_l = W_n·…·W_{l+1} makes e·B_l BP's δ exactly (the DFA analogue of B = Wᵀ)."""
    net = _mlp(act=nn.Identity)
    model = ssdfa.convert(net, method="dfa", num_classes=3, seed=0)
    w = [m.weight.detach() for m in net if isinstance(m, nn.Linear)]
    model.feedback[0].matrix.copy_(w[2] @ w[1])  # (3, 8) for point0
    model.feedback[1].matrix.copy_(w[2])  # (3, 5) for point1
    x, y = _batch()
    res = alignment_angles(model, x, y)
    for k, v in res.items():
        if k.startswith("dkp/"):
            continue
        assert v == pytest.approx(0.0, abs=1e-3), k
    assert res["eq14/point0"] == pytest.approx(0.0, abs=1e-3)


def test_delta_and_dw_angles_match_independent_algebra():
    net = _mlp()
    model = ssdfa.convert(net, method="dfa", num_classes=3, seed=3)
    x, y = _batch()
    res = alignment_angles(model, x, y)
    # independent: plain autograd on the plain net gives BP's δ and ∂W; DFA's δ at point l is e·B_l
    lin = [m for m in net if isinstance(m, nn.Linear)]
    h1 = torch.tanh(lin[0](x)).detach().requires_grad_(True)
    h2 = torch.tanh(lin[1](h1))
    h2.retain_grad()
    out = lin[2](h2)
    loss = F.cross_entropy(out, y)
    d1, d2 = torch.autograd.grad(loss, (h1, h2))
    e = (torch.softmax(out, 1) - F.one_hot(y, 3)).detach() / len(y)
    b0, b1 = [fb.dense() for fb in model.feedback]
    assert res["delta/point0"] == pytest.approx(angle(e @ b0, d1), abs=1e-3)
    assert res["delta/point1"] == pytest.approx(angle(e @ b1, d2), abs=1e-3)
    # ∂W of the first layer: DFA uses δ = (e·B_0) ⊙ f'(a_1)
    a1 = lin[0](x).detach()
    dw_dfa = ((e @ b0) * (1 - torch.tanh(a1) ** 2)).t() @ x
    dw_bp = (d1 * (1 - torch.tanh(a1) ** 2)).t() @ x
    assert res["dW/0.weight"] == pytest.approx(angle(dw_dfa, dw_bp), abs=1e-3)
    # δz (pre-activation, DRTP's modulatory signal): f' applied to both
    fp = 1 - torch.tanh(a1) ** 2
    assert res["dz/0"] == pytest.approx(angle((e @ b0) * fp, d1 * fp), abs=1e-3)
    assert "dz/4" not in res  # the output layer's δz is e under every rule
    # the output layer gets its true gradient under DFA
    assert res["dW/4.weight"] == pytest.approx(0.0, abs=1e-3)
    assert 0 < res["delta/point0"] < 180
    # DKP Fig. 2: h_l·B_lᵀ against the output pre-activation
    h2v = torch.tanh(lin[1](torch.tanh(lin[0](x)))).detach()
    assert res["dkp/point1"] == pytest.approx(angle(h2v @ b1.t(), out.detach()), abs=1e-3)


def test_eq14_against_hand_product():
    net = _mlp()
    model = ssdfa.convert(net, method="dfa", num_classes=3, seed=1)
    lin = [m.weight.detach() for m in net if isinstance(m, nn.Linear)]
    b0, b1 = [fb.dense() for fb in model.feedback]
    res = feedback_weight_angles(model)
    assert res["eq14/point0"] == pytest.approx(angle(b0, lin[2] @ lin[1]), abs=1e-4)
    assert res["eq14/point1"] == pytest.approx(angle(b1, lin[2]), abs=1e-4)


def test_does_not_disturb_training():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    model = ssdfa.convert(net, method="dfa", num_classes=3, seed=0)
    model.train()
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    bufs = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    res = alignment_angles(model, x, y)
    assert res
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    for b, v in zip(model.buffers(), bufs):
        torch.testing.assert_close(b, v, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)
    # and a model without any grad stays without
    model.zero_grad(set_to_none=True)
    alignment_angles(model, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_dropout_masks_match_between_passes():
    """With the same dropout mask in both passes, BP against itself is exactly aligned."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    model = ssdfa.convert(net, method="bp", num_classes=3).train()
    res = alignment_angles(model, *_batch())
    assert all(v == pytest.approx(0.0, abs=1e-3) for v in res.values())


def test_conv_points_are_measured():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    model = ssdfa.convert(net, method="ssdfa", num_classes=3, input_shape=(1, 8, 8), seed=0)
    x = torch.randn(5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1])
    res = alignment_angles(model, x, y)
    assert 0.0 <= res["delta/point0"] <= 180.0
    assert "dW/0.weight" in res and "dW/4.weight" in res


def test_fa_angle_from_weight_shaped_feedback():
    """A layer-wise feedback tensor stored beside its weight: B = W gives 0°, B = -W 180°."""
    net = _mlp()
    model = ssdfa.convert(net, method="bp", num_classes=3)
    lin = [m for m in net if isinstance(m, nn.Linear)]
    lin[1].register_buffer("feedback_weight", lin[1].weight.detach().clone())
    lin[2].register_buffer("feedback_weight", -lin[2].weight.detach().t().clone())
    res = fa_weight_angles(model)
    assert res["fa/2.weight"] == pytest.approx(0.0, abs=1e-4)
    assert res["fa/4.weight"] == pytest.approx(180.0, abs=1e-4)
    assert "fa/0.weight" not in res


@pytest.mark.skipif("fa" not in ssdfa.METHODS, reason="FA rule not available on this branch")
def test_fa_rule_with_b_equal_w_gives_bp():
    net = _mlp()
    model = ssdfa.convert(net, method="fa", num_classes=3, seed=0)
    static = fa_weight_angles(model)
    if not static:
        pytest.skip("FA keeps its feedback where fa_weight_angles cannot find it")
    # set every feedback tensor found to its weight (in the stored orientation)
    with torch.no_grad():
        for mod in model.modules():
            for name, buf in list(mod.named_buffers(recurse=False)) + list(
                mod.named_parameters(recurse=False)
            ):
                for lin in (m for m in net if isinstance(m, nn.Linear)):
                    if buf is lin.weight or name in ("weight", "bias"):
                        continue
                    if buf.shape == lin.weight.shape:
                        buf.copy_(lin.weight)
                    elif buf.dim() == 2 and buf.t().shape == lin.weight.shape:
                        buf.copy_(lin.weight.t())
    res = alignment_angles(model, *_batch())
    for k, v in res.items():
        if k.startswith(("delta/", "dW/")):
            assert v == pytest.approx(0.0, abs=1e-2), k


def test_output_prediction_angle_skips_missing():
    model = ssdfa.convert(_mlp(), method="dfa", num_classes=3, seed=0)
    assert output_prediction_angles(model, {}, torch.zeros(2, 3)) == {}


# forward_grad estimates the output layer's gradient too (Baydin et al. 2022), so its output
# angle is not 0: tests/test_rules_forward_grad.py checks its angles and side effects
@pytest.mark.parametrize("method", [m for m in ssdfa.METHODS if m != "forward_grad"])
def test_every_rule_gives_valid_angles_and_leaves_grads(method):
    """Generated from the registry: angles in [0°, 180°], the output layer exact, no side effects."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8), nn.Tanh(), nn.Linear(8, 3)
    )
    model = ssdfa.convert(net, method=method, num_classes=3, input_shape=(1, 6, 6), seed=0)
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    F.cross_entropy(model(x, target=y), y).backward()
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    res = alignment_angles(model, x, y)
    for k, v in res.items():
        assert math.isnan(v) or 0.0 <= v <= 180.0, (k, v)
    out_w = [k for k in res if k.startswith("dW/") and k.endswith("weight")][-1]
    assert res[out_w] == pytest.approx(0.0, abs=1e-3)  # every rule gives the output layer its gradient
    for p, g in zip(model.parameters(), before):
        assert (g is None and p.grad is None) or torch.equal(p.grad, g)


def test_ssdfa_metrics_still_imports_every_alignment_name():
    """``ssdfa.metrics`` (the module's old name) re-exports ssdfa.alignment's public API unchanged."""
    import ssdfa.alignment as new
    import ssdfa.metrics as old

    assert old.__all__ == new.__all__
    for name in new.__all__:
        assert getattr(old, name) is getattr(new, name), name
