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
    "digits-fc": (1, 8, 8), "mnist-fc": (1, 28, 28), "mnist-cnn": (1, 28, 28),
    "cifar-fc": (3, 32, 32), "cifar-cnn": (3, 32, 32), "alexnet": (3, 16, 16),
    "vgg16": (3, 16, 16), "dkp-cnn": (1, 28, 28), "dkp-alexnet": (3, 16, 16),
    "drtp-conv": (1, 28, 28), "drtp-reg": (256,), "mlp-800": (1, 28, 28),
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
