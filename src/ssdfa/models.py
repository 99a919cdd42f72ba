"""The papers' networks by name: ``create_model(name, input_shape, num_classes)``.

Every model is an ``nn.Sequential`` so that :func:`ssdfa.convert` places the feedback points
itself, and adapts to the dataset: the first layer reads ``input_shape`` (C, H, W) or (features,),
the last writes ``num_classes``, and pooling stages that would shrink a small image below 1x1
are skipped (AlexNet and VGG16 on 32x32 CIFAR, say).  Sources:
SSDFA paper Table II (mnist-*, cifar-*, alexnet, vgg16); DKP paper Table 3 and Sec. 3.2
(dkp-*); DRTP paper Sec. 4 and Supplementary Tables (drtp-*); DFA's 1x800 tanh MLP (mlp-800).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .data import registry as datasets
from .errors import DatasetNotFound
from .model_options import (  # noqa: F401  (re-exported: ssdfa.models keeps its names)
    ACTIVATIONS,
    WEIGHT_INITS,
    check_weight_init,
    init_weights,
    set_activation,
    set_dropout,
)

__all__ = [
    "create_model",
    "list_models",
    "model_summary",
    "default_model",
    "paper_network",
    "PAPER_NETWORKS",
    "ACTIVATIONS",
    "WEIGHT_INITS",
    "check_weight_init",
    "init_weights",
    "set_activation",
    "set_dropout",
]


@dataclass
class _Spec:
    build: Callable[[tuple[int, ...], int], nn.Sequential]
    summary: str


_MODELS: dict[str, _Spec] = {}


def _register(name: str, summary: str):
    def deco(fn):
        _MODELS[name] = _Spec(fn, summary)
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_summary(name: str) -> str:
    return _MODELS[name].summary


def create_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    activation: str | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (no batch dim) and ``num_classes``.

    ``activation`` ("relu" or "tanh") replaces every hidden activation (:func:`set_activation`),
    ``dropout`` every dropout layer (:func:`set_dropout`); None keeps the model's own."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be positive sizes without the batch dim, got {input_shape}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    net = _MODELS[key].build(shape, int(num_classes))
    if activation is not None:
        set_activation(net, activation)
    if dropout is not None:
        set_dropout(net, dropout)
    return net


# -- the papers' own setups: activation, dropout, initial weights ---------------------------
def default_model(dataset: str, input_shape: tuple[int, ...] = ()) -> str:
    """The model a dataset trains with when none is named: its registry entry's
    ``default_model`` (``digits-fc`` for a name the registry does not know)."""
    try:
        return datasets.dataset_entry(dataset).default_model
    except DatasetNotFound:
        return "digits-fc"


# -- helpers -------------------------------------------------------------------------------
def _features(shape) -> int:
    return math.prod(shape)


def _image(shape, model: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(
            f"{model} is convolutional and needs image inputs (C, H, W), got {shape}; "
            "pick a fully connected model for this dataset"
        )
    return shape


def _mlp(
    shape,
    hidden: list[int],
    classes: int,
    act=nn.Tanh,
    dropout: float = 0.0,
    out_act: type[nn.Module] | None = None,
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = _features(shape)
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, classes))
    if out_act is not None:
        layers.append(out_act())
    return nn.Sequential(*layers)


class _Size:
    """Tracks the spatial size (H, W) while a conv stack is written down."""

    def __init__(self, h, w):
        self.h, self.w = h, w

    def conv(self, k, s=1, p=0):
        self.h = (self.h + 2 * p - k) // s + 1
        self.w = (self.w + 2 * p - k) // s + 1
        if self.h < 1 or self.w < 1:
            raise ValueError("input image too small for this network")

    def pool(self, k, s, p=0) -> bool:
        """Apply a pooling step if the image stays at least 1x1; say whether it was applied."""
        h = (self.h + 2 * p - k) // s + 1
        w = (self.w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            return False
        self.h, self.w = h, w
        return True


def _conv_block(layers, size, cin, cout, k, s=1, p=0, bn=False, act=nn.ReLU):
    layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=not bn))
    size.conv(k, s, p)
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(act())


def _pool(layers, size, k, s, p=0):
    if size.pool(k, s, p):
        layers.append(nn.MaxPool2d(k, s, p))


def _head(layers, in_features, hidden: list[int], classes, bn=False, act=nn.ReLU, dropout=0.0):
    layers.append(nn.Flatten())
    width = in_features
    for h in hidden:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, h, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(h))
        layers.append(act())
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


# -- SSDFA paper, Table II -----------------------------------------------------------------
@_register("digits-fc", "64-400-10 tanh MLP: the embedded default (8x8 digits)")
def _digits_fc(shape, classes):
    return _mlp(shape, [400], classes)


@_register("mnist-fc", "SSDFA Table II MNIST FC: 784-400-10, tanh")
def _mnist_fc(shape, classes):
    return _mlp(shape, [400], classes)


@_register("mnist-cnn", "SSDFA Table II MNIST CNN: conv3x3 32, conv3x3 64, pool 2, FC 128, ReLU")
def _mnist_cnn(shape, classes):
    c, h, w = _image(shape, "mnist-cnn")
    layers, size = [], _Size(h, w)
    _conv_block(layers, size, c, 32, 3, p=1)
    _conv_block(layers, size, 32, 64, 3, p=1)
    _pool(layers, size, 2, 2)
    return _head(layers, 64 * size.h * size.w, [128], classes)


@_register("cifar-fc", "SSDFA Table II CIFAR FC: 3x1000 tanh")
def _cifar_fc(shape, classes):
    return _mlp(shape, [1000, 1000, 1000], classes)


@_register("cifar-cnn", "SSDFA Table II CIFAR CNN: conv5x5 96/128/256 each with pool 3/2, FC 2048-2048, ReLU")
def _cifar_cnn(shape, classes):
    c, h, w = _image(shape, "cifar-cnn")
    layers, size = [], _Size(h, w)
    cin = c
    for cout in (96, 128, 256):
        _conv_block(layers, size, cin, cout, 5, p=2)
        _pool(layers, size, 3, 2, 1)
        cin = cout
    return _head(layers, 256 * size.h * size.w, [2048, 2048], classes)


def _alexnet(shape, classes, bn: bool, name: str):
    """AlexNet (Krizhevsky et al. 2012) as torchvision lays it out; small images get a 3x3 stem."""
    c, h, w = _image(shape, name)
    layers, size = [], _Size(h, w)
    if min(h, w) >= 64:  # ImageNet-sized: 11x11 stride-4 stem
        _conv_block(layers, size, c, 64, 11, s=4, p=2, bn=bn)
        _pool(layers, size, 3, 2)
    else:  # CIFAR / Tiny-sized: a 3x3 stem keeps the spatial detail
        _conv_block(layers, size, c, 64, 3, p=1, bn=bn)
        _pool(layers, size, 2, 2)
    _conv_block(layers, size, 64, 192, 5, p=2, bn=bn)
    _pool(layers, size, 3 if min(h, w) >= 64 else 2, 2)
    _conv_block(layers, size, 192, 384, 3, p=1, bn=bn)
    _conv_block(layers, size, 384, 256, 3, p=1, bn=bn)
    _conv_block(layers, size, 256, 256, 3, p=1, bn=bn)
    _pool(layers, size, 3 if min(h, w) >= 64 else 2, 2)
    side = 6 if min(h, w) >= 64 else min(size.h, size.w, 2)
    layers.append(nn.AdaptiveAvgPool2d((side, side)))
    return _head(layers, 256 * side * side, [4096, 4096], classes, bn=bn, dropout=0.0 if bn else 0.5)


@_register("alexnet", "AlexNet (SSDFA Table II, ImageNet 224x224); 3x3 stem below 64x64")
def _alexnet_plain(shape, classes):
    return _alexnet(shape, classes, bn=False, name="alexnet")


@_register("vgg16", "VGG16 (SSDFA Table II, ImageNet 224x224); pools skipped on small images")
def _vgg16(shape, classes):
    c, h, w = _image(shape, "vgg16")
    layers, size = [], _Size(h, w)
    cin = c
    for stage in ([64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]):
        for cout in stage:
            _conv_block(layers, size, cin, cout, 3, p=1)
            cin = cout
        _pool(layers, size, 2, 2)
    side = min(7, size.h, size.w)
    layers.append(nn.AdaptiveAvgPool2d((side, side)))
    return _head(layers, 512 * side * side, [4096, 4096], classes, dropout=0.5)


# -- DKP paper -----------------------------------------------------------------------------
@_register("dkp-cnn", "DKP Table 3: conv3x3 32, conv3x3 32 (BN, ReLU), pool 2, FC 128 (BN, ReLU)")
def _dkp_cnn(shape, classes):
    c, h, w = _image(shape, "dkp-cnn")
    layers, size = [], _Size(h, w)
    _conv_block(layers, size, c, 32, 3, p=1, bn=True)
    _conv_block(layers, size, 32, 32, 3, p=1, bn=True)
    _pool(layers, size, 2, 2)
    return _head(layers, 32 * size.h * size.w, [128], classes, bn=True)


@_register(
    "dkp-code-cnn",
    "DKP code's CIFAR-10 net: conv3x3 32 (no padding, BN, ReLU), conv3x3 32 "
    "(BN, ReLU), pool 2, FC 128 ReLU, FC classes",
)
def _dkp_code_cnn(shape, classes):
    c, h, w = _image(shape, "dkp-code-cnn")
    layers, size = [], _Size(h, w)
    _conv_block(layers, size, c, 32, 3, bn=True)
    _conv_block(layers, size, 32, 32, 3, bn=True)
    _pool(layers, size, 2, 2)
    return _head(layers, 32 * size.h * size.w, [128], classes)


@_register("dkp-alexnet", "DKP Sec. 3.2: AlexNet with BatchNorm before every hidden activation")
def _dkp_alexnet(shape, classes):
    return _alexnet(shape, classes, bn=True, name="dkp-alexnet")


# -- DRTP paper ----------------------------------------------------------------------------
def _drtp_fc(hidden_layers: int, units: int):
    def build(shape, classes):
        return _mlp(shape, [units] * hidden_layers, classes)

    return build


for _layers in (1, 2):
    for _units in (500, 1000):
        _register(
            f"drtp-fc{_layers}-{_units}",
            f"DRTP FC{_layers}: {_layers} hidden layer(s) of {_units} tanh units",
        )(_drtp_fc(_layers, _units))


@_register(
    "drtp-conv",
    "DRTP CONV, tanh: 1-channel inputs conv5x5 32 + pool + FC 1000 (MNIST); "
    "else conv3x3 64 + pool, conv3x3 256 + pool, FC 1000-1000 (CIFAR-10)",
)
def _drtp_conv(shape, classes):
    c, h, w = _image(shape, "drtp-conv")
    layers, size = [], _Size(h, w)
    if c == 1:
        _conv_block(layers, size, c, 32, 5, p=2, act=nn.Tanh)
        _pool(layers, size, 2, 2)
        return _head(layers, 32 * size.h * size.w, [1000], classes, act=nn.Tanh)
    _conv_block(layers, size, c, 64, 3, p=1, act=nn.Tanh)
    _pool(layers, size, 2, 2)
    _conv_block(layers, size, 64, 256, 3, p=1, act=nn.Tanh)
    _pool(layers, size, 2, 2)
    return _head(layers, 256 * size.h * size.w, [1000, 1000], classes, act=nn.Tanh)


@_register("drtp-reg", "DRTP Sec. 4.1 regression net: 256-100-100-10, tanh hidden and output")
def _drtp_reg(shape, classes):
    return _mlp(shape, [100, 100], classes, out_act=nn.Tanh)


@_register("mlp-800", "1x800 tanh MLP")
def _mlp_800(shape, classes):
    return _mlp(shape, [800], classes)


# -- the papers' networks as the cost model counts them ------------------------------------
def _alexnet_one_device(shape, classes):
    """Krizhevsky et al. 2012 on one device, as the SSDFA paper counts it (Table II, Fig. 8):
    conv 96-256-384-384-256 without groups, FC 9216-4096-4096-classes; no pool is skipped."""
    c = shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 96, 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(6),
        nn.Flatten(),
        nn.Linear(256 * 36, 4096),
        nn.ReLU(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, classes),
    )


PAPER_NETWORKS: dict[str, Callable[[tuple[int, ...], int], nn.Sequential]] = {
    "alexnet": _alexnet_one_device,
    "cifar-cnn": _cifar_cnn,
    "cifar-fc": _cifar_fc,
    "mnist-fc": _mnist_fc,
}
"""The SSDFA paper's Table II networks exactly as its cost figures count them (``ssdfa cost
--reference``, Fig. 8).  Only ``alexnet`` differs from the registry's model of the same name
(torchvision's 64-192-384-256-256 layout, with a 3x3 stem on small images)."""


def paper_network(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The SSDFA paper's network ``name`` (one of :data:`PAPER_NETWORKS`) for ``input_shape``
    (no batch dim) and ``num_classes``."""
    if name not in PAPER_NETWORKS:
        raise KeyError(f"no paper network {name!r}; known: {', '.join(PAPER_NETWORKS)}")
    return PAPER_NETWORKS[name](tuple(int(d) for d in input_shape), int(num_classes))
