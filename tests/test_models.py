"""Every named model builds, converts and takes one training step with every method.

Generated from the registries (``list_models()`` x ``ssdfa.METHODS``), so a new model or rule is
tested without anyone remembering to add it.  ImageNet-sized AlexNet/VGG16 steps are ``slow``;
their layout at 224x224 is checked on the meta device (no memory, no time).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa.models import create_model, list_models

# each model on the shape of the dataset it was written for (small variants for the big nets)
NATURAL_SHAPE = {
    "digits-fc": (1, 8, 8),
    "mnist-fc": (1, 28, 28),
    "mnist-cnn": (1, 28, 28),
    "cifar-fc": (3, 32, 32),
    "cifar-cnn": (3, 32, 32),
    "alexnet": (3, 16, 16),
    "vgg16": (3, 16, 16),
    "dkp-cnn": (1, 28, 28),
    "dkp-alexnet": (3, 16, 16),
    "drtp-conv": (1, 28, 28),
    "drtp-reg": (256,),
    "mlp-800": (1, 28, 28),
    "dkp-code-cnn": (3, 32, 32),
}


def shape_for(name):
    if name.startswith("drtp-fc"):
        return (1, 28, 28)
    return NATURAL_SHAPE[name]


def test_every_model_has_a_natural_shape_here():
    assert all(shape_for(n) for n in list_models())


_NETS: dict = {}


def _net(name, shape, classes):
    """One freshly initialised copy per test, built once per model (the big ones are slow)."""
    key = (name, shape, classes)
    if key not in _NETS:
        torch.manual_seed(0)
        _NETS[key] = create_model(name, shape, classes)
    import copy

    return copy.deepcopy(_NETS[key])


def one_step(name, method, shape, classes=10, batch=2):
    net = _net(name, shape, classes)
    model = ssdfa.convert(net, method, num_classes=classes, input_shape=shape, seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, *shape)
    y = torch.arange(batch) % classes
    model.train()
    out = model(x, target=y)
    assert out.shape == (batch, classes)
    loss = F.cross_entropy(out, y)
    opt.zero_grad()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad.sum()), f"{name}/{method}: {pname} grad not finite"
    opt.step()
    return model, before


@pytest.mark.parametrize("method", ssdfa.METHODS)
@pytest.mark.parametrize("name", list_models())
def test_model_trains_one_step_with_every_method(name, method):
    model, before = one_step(name, method, shape_for(name))
    weights = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    out_layer = weights[-1]
    changed = {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}
    out_name = next(k for k, v in model.named_parameters() if v is out_layer.weight)
    assert out_name in changed, f"{name}/{method}: the output layer did not learn"
    with torch.no_grad():
        model.eval()
        assert torch.isfinite(model(torch.randn(3, *shape_for(name)))).all()


@pytest.mark.parametrize("name", ["mnist-fc", "mnist-cnn", "dkp-cnn"])
def test_direct_rules_reach_every_hidden_layer(name):
    """With dfa the first layer learns although no gradient flows back through the later ones."""
    model, before = one_step(name, "dfa", shape_for(name))
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    key = next(k for k, v in model.named_parameters() if v is first.weight)
    assert not torch.equal(first.weight.detach(), before[key])


def _layers(name, shape, classes):
    with torch.device("meta"):
        net = create_model(name, shape, classes)
    return net, [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _count(net):
    return sum(p.numel() for p in net.parameters())


def test_ssdfa_table_ii_layouts():
    _, fc = _layers("mnist-fc", (1, 28, 28), 10)
    assert [(m.in_features, m.out_features) for m in fc] == [(784, 400), (400, 10)]
    _, cnn = _layers("mnist-cnn", (1, 28, 28), 10)
    assert [m.out_channels for m in cnn[:2]] == [32, 64] and cnn[0].kernel_size == (3, 3)
    assert [m.out_features for m in cnn[2:]] == [128, 10]
    _, cfc = _layers("cifar-fc", (3, 32, 32), 100)
    assert [m.out_features for m in cfc] == [1000, 1000, 1000, 100] and cfc[0].in_features == 3072
    _, ccnn = _layers("cifar-cnn", (3, 32, 32), 10)
    assert [m.out_channels for m in ccnn[:3]] == [96, 128, 256]
    assert all(m.kernel_size == (5, 5) for m in ccnn[:3])
    assert [m.out_features for m in ccnn[3:]] == [2048, 2048, 10]


def test_imagenet_alexnet_and_vgg16_have_the_published_sizes():
    # torchvision's AlexNet and VGG16 (1000 classes) hold 61,100,840 and 138,357,544 parameters
    net, _ = _layers("alexnet", (3, 224, 224), 1000)
    assert _count(net) == 61_100_840
    assert net(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1000)
    net, layers = _layers("vgg16", (3, 224, 224), 1000)
    assert _count(net) == 138_357_544 and len(layers) == 16
    assert net(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1000)


def test_dkp_cnn_matches_table_3():
    net, layers = _layers("dkp-cnn", (1, 28, 28), 10)
    assert layers[2].in_features == 6272  # DKP Table 3: Linear(6272, 128) on 28x28 inputs
    assert sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in net.modules()) == 3
    net, _ = _layers("dkp-alexnet", (3, 64, 64), 200)
    assert sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in net.modules()) == 7


def test_drtp_models():
    for name, widths in (("drtp-fc1-500", [500, 10]), ("drtp-fc2-1000", [1000, 1000, 10])):
        net, layers = _layers(name, (1, 28, 28), 10)
        assert [m.out_features for m in layers] == widths
        assert sum(isinstance(m, nn.Tanh) for m in net.modules()) == len(widths) - 1
    _, mnist = _layers("drtp-conv", (1, 28, 28), 10)
    assert mnist[0].out_channels == 32 and mnist[0].kernel_size == (5, 5)
    assert [m.out_features for m in mnist[1:]] == [1000, 10]
    _, cifar = _layers("drtp-conv", (3, 32, 32), 10)
    assert [m.out_channels for m in cifar[:2]] == [64, 256]
    assert [m.out_features for m in cifar[2:]] == [1000, 1000, 10]
    _, reg = _layers("drtp-reg", (256,), 10)
    assert [(m.in_features, m.out_features) for m in reg] == [(256, 100), (100, 100), (100, 10)]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)])
@pytest.mark.parametrize("name", ["alexnet", "vgg16", "cifar-cnn", "mnist-cnn", "dkp-alexnet"])
def test_conv_models_adapt_to_input_size(name, shape):
    net, _ = _layers(name, shape, 7)
    assert net(torch.empty(2, *shape, device="meta")).shape == (2, 7)


def test_conv_model_on_vector_input_says_what_to_do():
    with pytest.raises(ValueError, match="needs image inputs"):
        create_model("mnist-cnn", (64,), 10)


def test_unknown_model_lists_choices():
    with pytest.raises(KeyError, match="choose one of: .*mnist-fc"):
        create_model("resnet9000", (1, 28, 28), 10)


@pytest.mark.slow
@pytest.mark.parametrize("method", ssdfa.METHODS)
@pytest.mark.parametrize("name", ["alexnet", "vgg16", "dkp-alexnet"])
def test_imagenet_sized_step(name, method):
    one_step(name, method, (3, 224, 224), classes=1000)


def test_user_module_through_the_python_api(tmp_path):
    from ssdfa.training import TrainConfig, run

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))

        def forward(self, x):
            return self.body(x)

    cfg = TrainConfig(method="dfa", epochs=1, limit_train=128, out_dir=str(tmp_path / "r"))
    summary = run(cfg, model=Mine(), log=lambda m: None)
    assert summary["model"] == "custom:Mine" and math.isfinite(summary["train_loss"])


# -- the papers' setups: activation, dropout and initial weights (issue 19) -------------------
def test_dkp_code_cnn_is_the_dkp_repositorys_cifar_net():
    """authors-code-setups.md, DKP: conv3x3 32 (no padding) BN ReLU, conv3x3 32 BN ReLU, pool 2,
    FC 6272-128 ReLU, FC 10."""
    net = create_model("dkp-code-cnn", (3, 32, 32), 10)
    kinds = [type(m).__name__ for m in net]
    assert kinds == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert net[0].padding == (0, 0) and net[8].in_features == 6272 and net[8].out_features == 128


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_activation_replaces_every_hidden_activation_and_nothing_else(name, act):
    """Generated from the registry: the same net with the other activation is a plain
    Sequential of the same layers (weights shared) with each hidden ReLU/Tanh swapped."""
    from ssdfa.models import ACTIVATIONS

    shape = shape_for(name)
    if name in ("alexnet", "vgg16", "dkp-alexnet"):
        shape = (3, 16, 16)
    torch.manual_seed(0)
    plain = create_model(name, shape, 10)
    torch.manual_seed(0)
    net = create_model(name, shape, 10, activation=act)
    last = max(i for i, m in enumerate(plain) if isinstance(m, (nn.Linear, nn.Conv2d)))
    want = nn.Sequential(
        *[
            ACTIVATIONS[act]() if i < last and isinstance(m, (nn.ReLU, nn.Tanh)) else m
            for i, m in enumerate(plain)
        ]
    ).eval()
    net.eval()
    assert [type(m) for m in net] == [type(m) for m in want]
    x = torch.randn(2, *shape)
    torch.testing.assert_close(net(x), want(x))
    if name == "drtp-reg":
        assert isinstance(net[-1], nn.Tanh)  # the output activation stays


def test_dropout_sits_before_every_weight_layer_but_the_first():
    net = create_model("mnist-cnn", (1, 28, 28), 10, dropout=0.25)
    kinds = [type(m).__name__ for m in net]
    assert kinds == [
        "Conv2d",
        "ReLU",
        "Dropout",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert all(m.p == 0.25 for m in net if isinstance(m, nn.Dropout))
    # the model's own dropout is replaced, p = 0 removes it
    vgg = create_model("vgg16", (3, 16, 16), 10, dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in vgg)
    # in train mode it is torch's dropout: the same mask from the same seed
    plain = create_model("mnist-fc", (1, 28, 28), 10)
    with_p = create_model("mnist-fc", (1, 28, 28), 10, dropout=0.5)
    assert [type(m).__name__ for m in with_p] == ["Flatten", "Linear", "Tanh", "Dropout", "Linear"]
    with_p[1].load_state_dict(plain[1].state_dict())
    with_p[4].load_state_dict(plain[3].state_dict())
    x = torch.randn(3, 1, 28, 28)
    torch.manual_seed(5)
    got = with_p.train()(x)
    torch.manual_seed(5)
    h = torch.tanh(plain[1](x.flatten(1)))
    want = plain[3](F.dropout(h, 0.5, training=True))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("init", ["zero", "glorot", "sqrt-fan-in", "normal:0.01"])
def test_weight_init_matches_a_plain_torch_construction(init):
    """Each init drawn by hand from the same seed: U(±√(6/(fan_in+fan_out))) (Glorot),
    U(±1/√fan_in), N(0, 0.01²), zeros; the bias constant on every layer."""
    from ssdfa.models import init_weights

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    torch.manual_seed(3)
    init_weights(net, init, bias=0.1)
    torch.manual_seed(3)
    for layer in (net[0], net[3]):
        shape = layer.weight.shape
        fan_in = math.prod(shape[1:])
        fan_out = shape[0] * math.prod(shape[2:])
        if init == "zero":
            want = torch.zeros(shape)
        elif init == "glorot":
            a = math.sqrt(6.0 / (fan_in + fan_out))
            want = torch.empty(shape).uniform_(-a, a)
        elif init == "sqrt-fan-in":
            a = 1.0 / math.sqrt(fan_in)
            want = torch.empty(shape).uniform_(-a, a)
        else:
            want = torch.empty(shape).normal_(0.0, 0.01)
        torch.testing.assert_close(layer.weight.detach(), want)
        torch.testing.assert_close(layer.bias.detach(), torch.full((shape[0],), 0.1))


def test_default_init_leaves_torchs_own_and_bad_names_are_refused():
    from ssdfa.models import check_weight_init, init_weights

    torch.manual_seed(1)
    a = create_model("mnist-fc", (1, 28, 28), 10)
    torch.manual_seed(1)
    b = init_weights(create_model("mnist-fc", (1, 28, 28), 10), "default")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)
    for bad in ("xavier", "normal:-1", "normal:x", "normal:"):
        with pytest.raises(ValueError, match="weight_init"):
            check_weight_init(bad)
    assert check_weight_init("Sqrt_Fan_In") == "sqrt-fan-in"
