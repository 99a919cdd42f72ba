"""Cost model (Table I) against nets counted by hand, and the paper's Fig. 8 claims."""

import json

import pytest
import torch
from torch import nn

from ssdfa.cli import main
from ssdfa.cost import COST_RULES, count_costs, layer_shapes
from ssdfa.data import dataset_shape
from ssdfa.models import paper_network


def _two_layer():
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _totals(res, method):
    t = res[method]["totals"]
    return {k: t[k] for k in ("macs", "reads", "writes", "movement", "feedback")}


def test_shapes_of_two_layer_net():
    a, b = layer_shapes(_two_layer(), (4,))
    assert (a.weights, a.biases, a.positions, a.inputs, a.outputs, a.neurons) == (12, 3, 1, 4, 3, 3)
    assert (b.weights, b.biases, b.positions, b.inputs, b.outputs, b.neurons) == (6, 2, 1, 3, 2, 2)


def test_two_layer_net_counted_by_hand():
    """4-3-2 net, M = 2. |W| = 12 + 3 bias, 6 + 2 bias; |A| = 4, 3; |E| = 3, 2."""
    layers = layer_shapes(_two_layer(), (4,))
    res = count_costs(layers, ("bp", "dfa", "sdfa", "ssdfa"), connections=1)
    # BP, Table I: reads |W|+|A|, writes |W|, MACs 2|W|, movement |W|+|A|+|E|
    assert _totals(res, "bp") == dict(
        macs=2 * 12 + 2 * 6,
        reads=(15 + 4) + (8 + 3),
        writes=15 + 8,
        movement=(15 + 4 + 3) + (8 + 3 + 2),
        feedback=0,
    )
    # DFA: hidden layer |B| = M·N = 2·3 = 6; output layer gets its own error, one per neuron
    assert _totals(res, "dfa") == dict(
        macs=(12 + 6) + 6, reads=(15 + 6) + 8, writes=15 + 8, movement=6 + 2, feedback=6
    )
    # SSDFA: |b| = 1·3
    assert _totals(res, "ssdfa") == dict(
        macs=(12 + 3) + 6, reads=(15 + 3) + 8, writes=15 + 8, movement=3 + 2, feedback=3
    )
    assert _totals(res, "sdfa") == _totals(res, "ssdfa")  # S = 1
    # per-layer rows, and the exact count without the unused error at the input
    assert [r["macs"] for r in res["bp"]["layers"]] == [24, 12]
    exact = count_costs(layers, ("bp",), input_error=False)
    assert exact["bp"]["totals"]["macs"] == 12 + 12
    assert exact["bp"]["totals"]["macs_error"] == 6
    # bytes at a chosen precision
    b16 = count_costs(layers, ("dfa",), bits=16)["dfa"]["totals"]
    assert b16["movement_bytes"] == 8 * 2 and b16["feedback_bytes"] == 6 * 2


def test_sdfa_density_is_s_over_m_not_one_minus():
    """The reference code's bug: a sparse B's density is S/M (here 3/10), never 1 - S/M."""
    net = nn.Sequential(nn.Linear(5, 20), nn.ReLU(), nn.Linear(20, 10))
    res = count_costs(layer_shapes(net, (5,)), ("dfa", "sdfa"), connections=3)
    assert res["dfa"]["layers"][0]["feedback"] == 10 * 20
    assert res["sdfa"]["layers"][0]["feedback"] == 3 * 20
    assert res["sdfa"]["layers"][0]["movement"] == 3 * 20


def test_conv_layer_counted_by_hand():
    """Conv 1→2 ch 3×3 on 1×6×6 (out 2×4×4, 16 positions), pool 2 → 2×2×2, FC 8→3."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    conv, fc = layer_shapes(net, (1, 6, 6))
    assert (conv.weights, conv.positions, conv.inputs, conv.outputs, conv.neurons) == (18, 16, 36, 32, 8)
    assert conv.forward_macs == 18 * 16
    res = count_costs([conv, fc], ("bp", "dfa", "ssdfa"))
    c_bp, c_dfa, c_ss = (res[m]["layers"][0] for m in ("bp", "dfa", "ssdfa"))
    assert c_bp["macs"] == 2 * 288 and c_bp["movement"] == 20 + 36 + 32
    # feedback reaches every position of the pooled block output: N = 2·2·2 = 8 neurons
    assert c_dfa["macs"] == 288 + 3 * 8 and c_dfa["movement"] == 3 * 8 and c_dfa["feedback"] == 24
    assert c_ss["macs"] == 288 + 8 and c_ss["movement"] == 8
    # transfer learning: only the FC layer trains
    fc_only = count_costs([conv, fc], ("bp", "dfa"), train="fc")
    assert fc_only["bp"]["layers"][0]["macs"] == 0 and not fc_only["bp"]["layers"][0]["trained"]
    assert fc_only["dfa"]["totals"]["macs"] == 24  # the output layer alone: ∂W only


def test_extensions_counted_by_hand():
    layers = layer_shapes(_two_layer(), (4,))
    res = count_costs(layers, ("fa", "kp", "dkp", "drtp", "shallow", "sign_dfa"))
    fa = _totals(res, "fa")
    # FA: as BP's MACs, B shaped like W stored beside it, one word received per connection
    assert fa == dict(macs=36, reads=(15 + 12) + (8 + 6), writes=23, movement=12 + (6 + 2), feedback=18)
    assert _totals(res, "kp")["writes"] == 23 + 18
    dkp = _totals(res, "dkp")
    assert dkp["macs"] == (12 + 6 + 6) + 6 and dkp["writes"] == 23 + 6
    drtp = _totals(res, "drtp")
    assert drtp == dict(macs=12 + 6, reads=(15 + 3) + 8, writes=23, movement=3 + 2, feedback=6)
    assert _totals(res, "shallow") == dict(macs=6, reads=8, writes=8, movement=2, feedback=0)
    # sign-DFA: DFA's counts, M = 2 errors (their signs) per hidden neuron, |B| = 2·3
    assert _totals(res, "sign_dfa") == dict(
        macs=(12 + 6) + 6, reads=(15 + 6) + 8, writes=23, movement=6 + 2, feedback=6
    )
    assert set(COST_RULES) >= {"bp", "dfa", "sdfa", "ssdfa", "fa", "kp", "dkp", "drtp"}


def test_errors_are_clear():
    layers = layer_shapes(_two_layer(), (4,))
    with pytest.raises(KeyError, match="choose from"):
        count_costs(layers, ("nope",))
    with pytest.raises(ValueError, match="connections"):
        count_costs(layers, ("sdfa",), connections=5)
    conv_only = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="no layer trains"):
        count_costs(layer_shapes(conv_only, (1, 5, 5)), train="fc")


def _ratios(res):
    t = {m: res[m]["totals"] for m in res}
    return (
        t["bp"]["movement"] / t["ssdfa"]["movement"],
        t["dfa"]["movement"] / t["ssdfa"]["movement"],
        t["bp"]["macs"] / t["ssdfa"]["macs"],
    )


def test_fig8_imagenet_alexnet_claims():
    """Fig. 8: ~6400x less movement BP→SSDFA, ~1000x DFA→SSDFA, ~2x fewer MACs (FC layers)."""
    shape, m = dataset_shape("imagenet")
    with torch.device("meta"):
        net = paper_network("alexnet", shape, m)
    layers = layer_shapes(net, shape)
    bp_ss, dfa_ss, macs = _ratios(count_costs(layers, ("bp", "dfa", "ssdfa"), train="fc"))
    assert 6000 < bp_ss < 6800
    assert 850 < dfa_ss <= 1000
    assert 1.9 < macs <= 2.0
    # all layers trained, feedback to every conv position: still ~2x MACs, DFA/SSDFA ~M
    bp_ss_all, dfa_ss_all, macs_all = _ratios(
        count_costs(layers, ("bp", "dfa", "ssdfa"), train="all", input_error=False)
    )
    assert 200 < bp_ss_all < 300 and 990 < dfa_ss_all <= 1000 and 1.85 < macs_all < 2.0


def test_cifar100_advantage_is_smaller():
    rows = {}
    for name, ds in (("alexnet", "imagenet"), ("cifar-cnn", "cifar100")):
        shape, m = dataset_shape(ds)
        with torch.device("meta"):
            net = paper_network(name, shape, m)
        rows[ds] = _ratios(count_costs(layer_shapes(net, shape), ("bp", "dfa", "ssdfa"), train="fc"))
    assert rows["cifar100"][0] < rows["imagenet"][0]
    assert rows["cifar100"][1] < rows["imagenet"][1]
    assert 90 < rows["cifar100"][1] <= 100


def test_cost_cli_json(capsys):
    assert (
        main(["cost", "--model", "alexnet", "--dataset", "imagenet", "--methods", "bp,dfa,ssdfa", "--json"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"bp", "dfa", "ssdfa"}
    for m in res:
        assert {"macs", "reads", "writes", "movement"} <= set(res[m]["totals"])
        assert len(res[m]["layers"]) == 8
    assert 6000 < res["bp"]["totals"]["movement"] / res["ssdfa"]["totals"]["movement"] < 6800


def test_cost_cli_text_and_errors(capsys):
    assert main(["cost", "--model", "cifar-fc", "--dataset", "cifar10", "--train", "all"]) == 0
    out = capsys.readouterr().out
    assert "bp/ssdfa" in out and "total" in out
    assert main(["cost", "--model", "nope", "--dataset", "cifar10"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["cost", "--model", "alexnet"]) == 2
    assert main(["cost", "--model", "alexnet", "--dataset", "imagenet", "--methods", "bp,xx"]) == 2


def test_every_registered_method_has_a_cost_model():
    import ssdfa

    missing = [m for m in ssdfa.METHODS if m not in COST_RULES]
    assert not missing, f"add a @cost_rule for {missing} in ssdfa/cost.py"


def test_shapes_with_batchnorm_and_converted_models():
    import ssdfa

    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    assert [lay.neurons for lay in layer_shapes(net, (4,))] == [6, 2]
    assert net.training  # restored
    for method in ssdfa.METHODS:
        model = ssdfa.convert(net, method=method, num_classes=2)
        assert [lay.weights for lay in layer_shapes(model, (4,))] == [24, 12], method


# -- the paper networks live once, in ssdfa.models -------------------------------------------------
def _layer_tuples(net, shape):
    return [
        (s.kind, s.weights, s.biases, s.positions, s.inputs, s.outputs, s.neurons)
        for s in layer_shapes(net, shape)
    ]


@pytest.mark.parametrize(
    "name, dataset",
    [("alexnet", "imagenet"), ("cifar-cnn", "cifar100"), ("cifar-fc", "cifar10"), ("mnist-fc", "mnist")],
)
def test_cost_counts_the_models_registrys_paper_networks(name, dataset, capsys):
    """``cost.reference_architecture`` and ``ssdfa cost --reference`` build the network of
    ``models.paper_network``, sized from the data registry; the totals are those of the
    network written here layer by layer from the paper (Table II)."""
    from ssdfa import cost
    from ssdfa.models import PAPER_NETWORKS

    shape, m = dataset_shape(dataset)
    with torch.device("meta"):
        net = paper_network(name, shape, m)
        old = cost.reference_architecture(name, shape, m)
    assert cost.REFERENCE_NAMES == tuple(PAPER_NETWORKS)
    assert _layer_tuples(old, shape) == _layer_tuples(net, shape)
    linear = [lay.weights for lay in layer_shapes(net, shape) if lay.kind == "linear"]
    flat = {"alexnet": 256 * 6 * 6, "cifar-cnn": 256 * 4 * 4, "cifar-fc": 3072, "mnist-fc": 784}[name]
    hidden = {"alexnet": [4096, 4096], "cifar-cnn": [2048, 2048], "cifar-fc": [1000] * 3, "mnist-fc": [400]}[
        name
    ]
    widths = [flat, *hidden, m]
    assert linear == [a * b for a, b in zip(widths, widths[1:])]
    assert main(["cost", "--model", name, "--dataset", dataset, "--reference", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    expected = count_costs(layer_shapes(net, shape), ("bp", "dfa", "ssdfa"), num_classes=m, train="fc")
    assert res == json.loads(json.dumps(expected))


def test_paper_alexnet_is_krizhevskys_one_device_net_not_the_registrys():
    """Only alexnet differs between the two: the paper's counts 96-256-384-384-256 convs, the
    registry's model is torchvision's 64-192-384-256-256 layout."""
    from ssdfa.models import create_model

    shape, m = dataset_shape("imagenet")
    with torch.device("meta"):
        paper = [
            s.outputs // s.positions
            for s in layer_shapes(paper_network("alexnet", shape, m), shape)
            if s.kind == "conv"
        ]
        registry = [
            s.outputs // s.positions
            for s in layer_shapes(create_model("alexnet", shape, m), shape)
            if s.kind == "conv"
        ]
    assert paper == [96, 256, 384, 384, 256] and registry == [64, 192, 384, 256, 256]
    with pytest.raises(KeyError, match="no paper network"):
        paper_network("vgg16", shape, m)
