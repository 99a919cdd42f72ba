"""What a config builds: the device, the converted model, the optimizer, the schedule, the loss."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import convert, feedback_parameters
from ..data import Dataset, load_dataset
from ..errors import ConfigError, PretrainedError
from ..frozen import load_pretrained
from ..models import create_model, init_weights
from .config import TrainConfig


def pick_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked against this machine."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but torch sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                "device 'mps' asked for but torch has no usable MPS (Apple GPU) here; use --device cpu"
            )
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} cannot train a model; use auto, cpu, cuda, cuda:N or mps")
    return device


def rule_options(cfg: TrainConfig) -> dict:
    """Feedback options the user set (unset ones are left to the rule's defaults)."""
    opts = {k: getattr(cfg, k) for k in ("sparsity", "connections", "rank") if getattr(cfg, k) is not None}
    if cfg.unlocked:
        opts["unlocked"] = True
    if cfg.feedback_scale != 1:
        opts["feedback_scale"] = cfg.feedback_scale
    if cfg.train_only:
        opts["train_only"] = cfg.train_only
    return opts


def make_data(cfg: TrainConfig) -> Dataset:
    """The run's dataset as its config names it (directory, download, image size, train limit)."""
    return load_dataset(
        cfg.dataset,
        cfg.data_dir,
        download=cfg.download,
        image_size=cfg.image_size,
        limit_train=cfg.limit_train,
    )


def named_model(cfg: TrainConfig, data: Dataset) -> nn.Module:
    """``cfg.model`` built for ``data`` (unconverted, at PyTorch's default initialisation)."""
    return create_model(
        cfg.model, data.input_shape, data.num_classes, activation=cfg.activation, dropout=cfg.dropout
    )


def build_model(cfg: TrainConfig, data: Dataset, net: nn.Module | None = None, *, pretrained: bool = True):
    """The network (named, or the user's own) converted for ``cfg.method``; ``pretrained=False``
    skips ``init_from`` (a checkpoint about to be loaded holds those weights already)."""
    if net is None:
        try:
            net = named_model(cfg, data)
        except ValueError as exc:  # a model that cannot read this dataset's inputs
            raise ConfigError(f"model {cfg.model} on dataset {data.name}: {exc}") from exc
    elif cfg.activation is not None or cfg.dropout is not None:
        raise ConfigError(
            "activation and dropout change the named models only; build your own "
            "model with the activation and dropout it should have"
        )
    init_weights(net, cfg.weight_init, cfg.bias_init)  # before init_from: frozen layers load over it
    if (
        cfg.init_from is not None and pretrained
    ):  # before convert: the frozen part is built from these weights
        try:
            load_pretrained(net, cfg.init_from, cfg.train_only, cfg.model)
        except PretrainedError as exc:
            raise ConfigError(str(exc)) from None
    extra = {"feedback_init": cfg.feedback_init} if cfg.feedback_init != "ours" else {}
    return convert(
        net,
        cfg.method,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        seed=cfg.seed,
        **rule_options(cfg),
        **extra,
    )


def feedback_params(model) -> list[nn.Parameter]:
    return list(feedback_parameters(model))


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Forward weights in one group; learnable feedback (dkp) in its own, at ``feedback_lr``."""
    fb = feedback_params(model)
    fb_ids = {id(p) for p in fb}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in fb_ids]}]
    if fb:
        groups.append({"params": fb, "lr": cfg.feedback_lr if cfg.feedback_lr is not None else cfg.lr})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(
            groups,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            eps=cfg.adam_eps,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
        )
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.optimizer == "nesterov" and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def make_scheduler(cfg: TrainConfig, opt):
    if cfg.feedback_gamma is not None:
        return _feedback_decay(cfg, opt)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def _feedback_decay(cfg: TrainConfig, opt):
    """``feedback_gamma``: B's group (the optimizer's second) at gamma**epoch of its lr, as DKP's
    code steps a StepLR(step_size=1) on B's optimizer alone; the weights keep ``schedule``."""
    if len(opt.param_groups) < 2:
        raise ConfigError(
            f"feedback_gamma decays the lr of learned feedback, and method "
            f"{cfg.method!r} learns none; use it with dkp, or leave it out"
        )
    if cfg.schedule == "step":

        def weights(e):
            return cfg.gamma ** (e // cfg.step_size)
    elif cfg.schedule == "cosine":

        def weights(e):
            return 0.5 * (1 + math.cos(math.pi * e / cfg.epochs))
    else:

        def weights(e):
            return 1.0

    def feedback(e):
        return cfg.feedback_gamma**e

    return torch.optim.lr_scheduler.LambdaLR(opt, [weights, feedback])


def make_loss(cfg: TrainConfig, data: Dataset) -> Callable:
    kind = cfg.loss
    if kind == "auto":
        kind = "mse" if data.task == "regression" else "ce"
    if data.task == "regression" and kind != "mse":
        raise ConfigError(f"dataset {data.name} is a regression task; use loss mse, not {kind}")
    classes = data.num_classes

    def loss_fn(out, y):
        if kind == "ce":
            return F.cross_entropy(out, y)
        target = y if data.task == "regression" else F.one_hot(y, classes).to(out.dtype)
        if kind == "bce":  # sigmoid outputs, binary cross-entropy on one-hot targets (DRTP)
            return F.binary_cross_entropy_with_logits(out, target)
        return F.mse_loss(out, target)

    return loss_fn
