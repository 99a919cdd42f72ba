"""Cost model of the rules from issue 22, counted by hand for a 4-6-2 network (one example)."""

from torch import nn

from ssdfa.cost import count_costs, layer_shapes


def layers():
    return layer_shapes(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), (4,))


def test_sign_rules_chain_like_fa_and_store_what_they_keep():
    res = count_costs(layers(), ("fa", "usf", "frsf", "brsf"))
    w1, w2, p1, p2 = 24, 12, 30, 14  # weights and parameters (with biases) of the two layers
    for m in ("fa", "usf", "frsf", "brsf"):  # ∂W (w1 + w2) and δ through B in both layers
        assert res[m]["totals"]["macs"] == 2 * (w1 + w2), m
    assert res["usf"]["totals"]["feedback"] == 0  # sign(W) comes from W itself
    assert res["frsf"]["totals"]["feedback"] == res["fa"]["totals"]["feedback"] == w1 + w2
    assert res["usf"]["totals"]["reads"] == p1 + p2
    assert res["brsf"]["totals"]["writes"] == p1 + p2 + w1 + w2  # |R| drawn again
    assert res["frsf"]["totals"]["writes"] == p1 + p2


def test_forward_mode_rules_count_their_tangent_pass():
    res = count_costs(layers(), ("dfa", "fdfa", "forward_grad"), num_classes=2)
    # forward_grad: layer 1 Ẇx (24), layer 2 Ẇx + Wẋ (2·12), then d·v per parameter (30 + 14)
    assert res["forward_grad"]["totals"]["macs"] == 24 + 24 + 30 + 14
    assert res["forward_grad"]["totals"]["feedback"] == 0
    assert res["forward_grad"]["totals"]["movement"] == (6 + 1) + (2 + 1)
    # fdfa: DFA (∂W 24 + 12, e·B 2·6) + ΔB = t·uᵀ (2·6) + the output layer's W·ẋ (12)
    assert res["dfa"]["totals"]["macs"] == 24 + 12 + 12
    assert res["fdfa"]["totals"]["macs"] == 24 + 12 + 12 + 12 + 12
    assert res["fdfa"]["totals"]["movement"] == res["dfa"]["totals"]["movement"] + 2 * 6
