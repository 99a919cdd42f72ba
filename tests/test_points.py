"""Points ssdfa places on a module wrap its forward (ssdfa.points.ForwardWrap) instead of a
forward hook: the converted model survives pickling and deepcopy with each wrap bound to its
own module, tools still see the module's signature, and a forward set on the instance before
(accelerate's hooks do this) still runs."""

from __future__ import annotations

import copy
import inspect
import io

import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from zoo import TransformerClassifier, resnet18


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_pickle_and_deepcopy_keep_every_point_on_its_own_module():
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([1, 3])
    model = ssdfa.convert(resnet18(num_classes=4, in_channels=1, width=4), "dfa", seed=0, example_input=x)
    want = _grads(model, x, y)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for twin in (torch.load(buf, weights_only=False), copy.deepcopy(model)):
        for a, b in zip(_grads(twin, x, y), want, strict=True):
            torch.testing.assert_close(a, b)
        for name in twin.point_names:
            module = twin.net.get_submodule(name)
            assert module.forward.module is module, name  # not the original's module
        assert [p.grad for p in model.parameters()][0] is not None


def test_a_wrapped_forward_shows_the_module_signature():
    x = torch.randint(0, 50, (3, 6))
    model = ssdfa.convert(TransformerClassifier(d=16, heads=2, layers=2, num_classes=4, seq=6), "dfa")
    model(x)
    layer = model.net.get_submodule(model.point_names[0])
    assert isinstance(layer.forward, ssdfa.points.OutputPoint)
    assert inspect.signature(layer.forward) == inspect.signature(type(layer).forward.__get__(layer))


def test_a_forward_already_set_on_the_instance_still_runs():
    """accelerate-style: module.forward replaced before convert; the point wraps that one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    block, calls = net[2], []
    original = block.forward

    def logged(x):
        calls.append(x.shape)
        return original(x)

    block.forward = logged
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    model = ssdfa.convert(net, "dfa", seed=0, points=["2"])
    assert isinstance(block.forward, ssdfa.points.OutputPoint) and block.forward.inner is logged
    _grads(model, x, y)
    assert calls and calls[-1] == (5, 8)
    assert net[0].weight.grad is not None  # the point at block 2 fed the first layer its signal
