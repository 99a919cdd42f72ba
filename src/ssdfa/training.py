"""The training loop behind ``ssdfa train`` and ``ssdfa compare``, readable top to bottom.

``run(TrainConfig(...))`` loads the dataset, builds the named model, converts it with the chosen
rule, trains, evaluates after every epoch and writes into ``config.out_dir``:
``config.json`` (the resolved config), ``metrics.csv`` and ``metrics.json`` (one row per epoch),
``summary.json`` and ``checkpoint.pt`` (atomic, each epoch).  ``run(config, resume=True)``
continues from the checkpoint and ends with the same weights as an uninterrupted run.
A NaN or infinite loss stops the run with :class:`Diverged`; the last good checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, Diverged  # noqa: F401  (re-exported)
from . import distributed, rundir
from .checkpoint import (CHECKPOINT, REQUIRED_KEYS, CheckpointError, capture_rng, first_line,
                         load_checkpoint, restore_rng, save_checkpoint)
from ._version import __version__
from .convert import check_feedback_scale, convert, feedback_parameters
from .rules import METHODS
from .data import Dataset, DatasetError, canonical_name, load_dataset, set_normalization
from .feedback import FeedbackConfigError
from .frozen import TRAIN_ONLY, PretrainedError, load_pretrained
from .models import create_model, default_model, init_weights, list_models

__all__ = ["TrainConfig", "run", "Diverged", "ConfigError", "build_model", "evaluate",
           "OPTIMIZERS", "SCHEDULES", "LOSSES", "read_run_config", "check_checkpoint_config", "load_state"]

OPTIMIZERS = ("sgd", "nesterov", "adam")
MAX_THREADS = 1024  # torch crashes (SIGSEGV) asked for 10^8 threads
_F32_MAX = float(np.finfo(np.float32).max)
_SEED_MAX = 2**63 - 1
SCHEDULES = ("none", "step", "cosine")
LOSSES = ("auto", "ce", "bce", "mse")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` and read back by ``--resume``."""

    method: str = "ssdfa"
    dataset: str = "digits"
    model: str | None = None  # None: the dataset's default (see ssdfa.models.default_model)
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd | nesterov | adam
    lr: float = 0.01
    momentum: float = 0.9  # sgd and nesterov
    weight_decay: float = 0.0
    schedule: str = "none"  # none | step | cosine (per epoch)
    step_size: int = 10  # schedule=step: epochs between decays
    gamma: float = 0.1  # schedule=step: decay factor
    loss: str = "auto"  # auto (ce, or mse for regression) | ce | bce | mse
    seed: int = 0
    sparsity: float | None = None  # feedback options, passed to the rule when set
    connections: int | None = None
    rank: int | None = None
    feedback_lr: float | None = None  # learning rate of learnable feedback (dkp); None: lr
    feedback_scale: float = 1.0  # multiplies the std of every direct B_l
    unlocked: bool = False  # drtp: update each block during the forward pass
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int | None = None  # CPU threads for torch; None: torch's default
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None  # imagefolder only
    out_dir: str | None = None  # None: runs/<time>-<dataset>-<model>-<method>-s<seed>
    alignment: int = 0  # log alignment angles every k epochs; 0 = off
    train_only: str | None = None  # e.g. "fc": train only the fully connected layers
    init_from: str | None = None  # run directory whose weights start this run (transfer)
    limit_train: int | None = None  # keep the first n training examples (quick runs)
    # the papers' own setups (issue 19; authors-code-setups.md): Adam's eps and betas, how the
    # weights start, the named models' hidden activation and dropout, the input standardisation,
    # how B_l is drawn, and a per-epoch decay of B's learning rate alone (DKP's StepLR)
    adam_eps: float = 1e-8
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_init: str = "default"  # default | zero | glorot | sqrt-fan-in | normal:STD
    bias_init: float | None = None  # a constant for every bias; None: what weight_init leaves
    activation: str | None = None  # relu | tanh: the named model's hidden activations; None: its own
    dropout: float | None = None  # dropout before every hidden weight layer; None: the model's own
    normalization: str = "mean-std"  # mean-std | none | per-image | per-pixel | mean-std:M,S
    feedback_init: str = "ours"  # ours | uniform:1/sqrt(n) | kaiming-uniform
    feedback_gamma: float | None = None  # B's lr times gamma after every epoch (dkp); None: off

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "TrainConfig":
        """A config from a mapping (TOML, config.json, a checkpoint), keys and types checked."""
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a table of options, got {type(values).__name__}")
        known = set(cls.field_names())
        clean = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: "
                              f"{', '.join(sorted(known))}")
        check_types(clean, where)
        return cls(**clean)


def check_types(values: dict, where: str) -> None:
    """Each value has its field's type (an int is a float too; None means "unset")."""
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    for key, value in values.items():
        t = types.get(key, "")
        if value is None:
            if "None" in t:
                continue
            ok = False
        elif t.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t.startswith("float"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif t.startswith("bool"):
            ok = isinstance(value, bool)
        elif t.startswith("str"):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise ConfigError(f"{where}: {key} = {value!r} should be {t.split(' |')[0]}")


# -- resolving and checking the config ------------------------------------------------------
def resolve(cfg: TrainConfig, dataset: Dataset | None = None, custom_model: bool = False, *,
            check_init_from: bool = True) -> TrainConfig:
    """Fill defaults that depend on other fields and reject impossible values, all at once.

    ``check_init_from=False`` when resuming: the checkpoint holds every weight, so the run
    continues even after its ``init_from`` directory has moved."""
    problems = []
    method = str(cfg.method).strip().lower().replace("-", "_")
    if method not in METHODS:
        problems.append(f"method {cfg.method!r} unknown; choose one of: {', '.join(METHODS)}")
    cfg.method = method
    cfg.optimizer = str(cfg.optimizer).lower()
    cfg.schedule = str(cfg.schedule).lower()
    cfg.loss = str(cfg.loss).lower()
    for name, value, choices in (("optimizer", cfg.optimizer, OPTIMIZERS),
                                 ("schedule", cfg.schedule, SCHEDULES),
                                 ("loss", cfg.loss, LOSSES)):
        if value not in choices:
            problems.append(f"{name} {value!r} unknown; choose one of: {', '.join(choices)}")
    for name in ("epochs", "batch_size", "step_size"):
        if int(getattr(cfg, name)) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(cfg, name)}")
    # numbers the optimizer multiplies float32 weights by: finite, in float32's range
    for name, low, low_ok, high, high_ok in (("lr", 0, False, _F32_MAX, True),
                                             ("momentum", 0, True, 1, False),
                                             ("weight_decay", 0, True, _F32_MAX, True),
                                             ("gamma", 0, False, _F32_MAX, True),
                                             ("feedback_lr", 0, True, _F32_MAX, True)):
        value = getattr(cfg, name)
        if value is None:
            continue
        inside = (math.isfinite(value) and (value >= low if low_ok else value > low)
                  and (value <= high if high_ok else value < high))
        if not inside:
            where = (f"{'[' if low_ok else '('}{low}, "
                     f"{'3.4e38]' if high == _F32_MAX else str(high) + (']' if high_ok else ')')}")
            problems.append(f"{name} must be a number in {where}, got {value}")
    try:
        check_feedback_scale(cfg.feedback_scale)
    except FeedbackConfigError as exc:
        problems.append(str(exc))
    problems += setup_problems(cfg)
    if not 0 <= cfg.seed <= _SEED_MAX:
        problems.append(f"seed must be an integer in [0, 2**63 - 1], got {cfg.seed}")
    if cfg.threads is not None and not 1 <= cfg.threads <= MAX_THREADS:
        problems.append(f"threads must be in [1, {MAX_THREADS}], got {cfg.threads}")
    if cfg.alignment < 0:
        problems.append(f"alignment must be >= 0 (0 = off), got {cfg.alignment}")
    if cfg.image_size is not None and cfg.image_size < 1:
        problems.append(f"image_size must be >= 1, got {cfg.image_size}")
    if cfg.limit_train is not None and cfg.limit_train < 1:
        problems.append(f"limit_train must be >= 1, got {cfg.limit_train}")
    if cfg.train_only is not None and cfg.train_only not in TRAIN_ONLY:
        problems.append(f"train_only {cfg.train_only!r} unknown; choose one of: "
                        f"{', '.join(TRAIN_ONLY)} (or leave it out to train every layer)")
    if check_init_from and cfg.init_from is not None and not Path(cfg.init_from).exists():
        problems.append(f"init_from {cfg.init_from!r} does not exist; give the run directory of a "
                        "finished `ssdfa train` run (it holds checkpoint.pt)")
    if cfg.out_dir is not None and not str(cfg.out_dir).strip():
        problems.append("out_dir is empty; give a folder name (or leave it out for runs/<time>-...)")
    if cfg.model is None and dataset is not None:
        cfg.model = default_model(dataset.name, dataset.input_shape)
    if not custom_model and cfg.model is not None and cfg.model not in list_models():
        problems.append(f"model {cfg.model!r} unknown; choose one of: {', '.join(list_models())}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def setup_problems(cfg: TrainConfig) -> list[str]:
    """What is wrong with the papers'-setup options (adam_eps ... feedback_gamma), all at once."""
    from .data import check_normalization
    from .feedback import check_feedback_init
    from .models import ACTIVATIONS, check_weight_init

    problems = []
    if not (math.isfinite(cfg.adam_eps) and 0 < cfg.adam_eps <= _F32_MAX):
        problems.append(f"adam_eps must be a positive number, got {cfg.adam_eps}")
    for name in ("adam_beta1", "adam_beta2"):
        if not (math.isfinite(getattr(cfg, name)) and 0 <= getattr(cfg, name) < 1):
            problems.append(f"{name} must be a number in [0, 1), got {getattr(cfg, name)}")
    if cfg.bias_init is not None and not math.isfinite(cfg.bias_init):
        problems.append(f"bias_init must be a finite number, got {cfg.bias_init}")
    if cfg.activation is not None:
        cfg.activation = str(cfg.activation).strip().lower()
        if cfg.activation not in ACTIVATIONS:
            problems.append(f"activation {cfg.activation!r} unknown; choose one of: "
                            f"{', '.join(ACTIVATIONS)} (or leave it out for the model's own)")
    if cfg.dropout is not None and not (math.isfinite(cfg.dropout) and 0 <= cfg.dropout < 1):
        problems.append(f"dropout must be a probability in [0, 1), got {cfg.dropout}")
    if cfg.feedback_gamma is not None and not (math.isfinite(cfg.feedback_gamma)
                                               and 0 < cfg.feedback_gamma <= 1):
        problems.append(f"feedback_gamma must be a number in (0, 1], got {cfg.feedback_gamma}")
    for check, name in ((check_weight_init, "weight_init"), (check_normalization, "normalization"),
                        (check_feedback_init, "feedback_init")):
        try:
            setattr(cfg, name, check(getattr(cfg, name)))
        except ValueError as exc:
            problems.append(str(exc))
    return problems


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
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                              f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' asked for but torch has no usable MPS (Apple GPU) "
                              "here; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} cannot train a model; use auto, cpu, cuda, cuda:N or mps")
    return device


def rule_options(cfg: TrainConfig) -> dict:
    """Feedback options the user set (unset ones are left to the rule's defaults)."""
    opts = {k: getattr(cfg, k) for k in ("sparsity", "connections", "rank")
            if getattr(cfg, k) is not None}
    if cfg.unlocked:
        opts["unlocked"] = True
    if cfg.feedback_scale != 1:
        opts["feedback_scale"] = cfg.feedback_scale
    if cfg.train_only:
        opts["train_only"] = cfg.train_only
    return opts


def build_model(cfg: TrainConfig, data: Dataset, net: nn.Module | None = None, *,
                pretrained: bool = True):
    """The network (named, or the user's own) converted for ``cfg.method``; ``pretrained=False``
    skips ``init_from`` (a checkpoint about to be loaded holds those weights already)."""
    if net is None:
        try:
            net = create_model(cfg.model, data.input_shape, data.num_classes,
                               activation=cfg.activation, dropout=cfg.dropout)
        except ValueError as exc:  # a model that cannot read this dataset's inputs
            raise ConfigError(f"model {cfg.model} on dataset {data.name}: {exc}") from exc
    elif cfg.activation is not None or cfg.dropout is not None:
        raise ConfigError("activation and dropout change the named models only; build your own "
                          "model with the activation and dropout it should have")
    init_weights(net, cfg.weight_init, cfg.bias_init)  # before init_from: frozen layers load over it
    if cfg.init_from is not None and pretrained:  # before convert: the frozen part is built from these weights
        try:
            load_pretrained(net, cfg.init_from, cfg.train_only, cfg.model)
        except PretrainedError as exc:
            raise ConfigError(str(exc)) from None
    extra = {"feedback_init": cfg.feedback_init} if cfg.feedback_init != "ours" else {}
    return convert(net, cfg.method, num_classes=data.num_classes,
                         input_shape=data.input_shape, seed=cfg.seed, **rule_options(cfg), **extra)


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
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
                                betas=(cfg.adam_beta1, cfg.adam_beta2))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.optimizer == "nesterov" and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


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
        raise ConfigError(f"feedback_gamma decays the lr of learned feedback, and method "
                          f"{cfg.method!r} learns none; use it with dkp, or leave it out")
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
        return cfg.feedback_gamma ** e

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


@torch.no_grad()
def evaluate(model: nn.Module, split, loss_fn, batch_size: int, device, classification=True):
    """Mean loss and accuracy (None for regression) over a split, in eval mode."""
    was = model.training
    model.eval()
    total, correct, n = 0.0, 0, len(split)
    for i in range(0, n, batch_size):
        x, y = split.batch(torch.arange(i, min(i + batch_size, n)))
        x, y = x.to(device), y.to(device)
        out = model(x)
        total += float(loss_fn(out, y)) * len(y)
        if classification:
            correct += int((out.argmax(1) == y).sum())
    model.train(was)
    return total / max(n, 1), (correct / max(n, 1) if classification else None)


# -- files of a run ---------------------------------------------------------------------------
_write_text_atomic = rundir.write_text_atomic

# settings that may differ between a checkpoint and the run continuing it: they change where
# and how fast it runs, not what it computes (epochs: only the stopping point)
RESUME_MAY_CHANGE = ("epochs", "device", "data_dir", "threads", "download", "out_dir")


def settings_differ(saved: dict, cfg: TrainConfig, may_change=RESUME_MAY_CHANGE) -> list[str]:
    """The settings in which a run's saved config differs from ``cfg`` (sorted), comparing
    ``cfg`` resolved (defaults filled, names canonical); its unset fields and ``may_change``
    are left out.  A finished run is reused only when this is empty: runs are never mixed."""
    wanted = asdict(resolve(replace(cfg)))
    try:
        wanted["dataset"] = canonical_name(cfg.dataset)
    except DatasetError:
        pass  # reported by the run itself
    defaults = asdict(TrainConfig())  # a run saved before a setting existed ran at its default
    return sorted(k for k, v in wanted.items()
                  if v is not None and k not in may_change and saved.get(k, defaults[k]) != v)


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The config.json of a run directory, or :class:`ConfigError` saying what is wrong with it."""
    path = Path(run_dir) / "config.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({first_line(exc)}); it is damaged — start "
                          "the run again in a new --out-dir") from exc
    return TrainConfig.from_dict(values, where=str(path))


def check_checkpoint_config(saved: dict, cfg: TrainConfig, path) -> None:
    """Refuse a checkpoint whose own config differs from the run's in anything but the
    settings of ``RESUME_MAY_CHANGE``: its weights belong to another run."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no config of its own; it was not written by ssdfa")
    wanted = asdict(cfg)
    differ = sorted(k for k in wanted if k not in RESUME_MAY_CHANGE and k in saved
                    and saved[k] != wanted[k])
    if differ:
        both = ", ".join(f"{k} {saved[k]!r} vs {wanted[k]!r}" for k in differ[:4])
        raise CheckpointError(
            f"{path} belongs to another run than config.json ({both}"
            f"{', ...' if len(differ) > 4 else ''}): the directory mixes two runs, e.g. an "
            "--overwrite stopped before its first epoch; start again with --overwrite")


def load_state(obj, state, what: str, path) -> None:
    """``obj.load_state_dict(state)`` with a one-line error when the state does not fit."""
    try:
        obj.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path}: its {what} state does not fit this run "
                              f"({first_line(exc)}); it belongs to another model") from exc


def check_model_state(net: nn.Module, path) -> None:
    """Loaded feedback indices point at existing errors (a damaged index would fail deep in
    ``embedding_bag`` mid-epoch, or read another error silently on some devices)."""
    from .feedback import SparseFeedback

    for name, mod in net.named_modules():
        if isinstance(mod, SparseFeedback) and mod.index.numel():
            low, high = int(mod.index.min()), int(mod.index.max())
            if low < 0 or high >= mod.num_errors:
                raise CheckpointError(f"{path}: feedback {name} indexes error {low if low < 0 else high}"
                                      f" of {mod.num_errors}; the checkpoint is damaged — start "
                                      "the run again or restore the file")


def init_from_digest(cfg: TrainConfig, data: Dataset, missing_ok: bool = False) -> str | None:
    """SHA-256 of the weights ``cfg.init_from`` gives the model (None without init_from, or
    with ``missing_ok`` when the source is gone): a run records it, so that continuing it after
    its source changed is caught."""
    if cfg.init_from is None:
        return None
    if missing_ok and not Path(cfg.init_from).exists():
        return None
    from .checkpoint import weights_digest

    try:
        net = create_model(cfg.model, data.input_shape, data.num_classes,
                           activation=cfg.activation, dropout=cfg.dropout)  # as the run builds it
        keys = load_pretrained(net, cfg.init_from, cfg.train_only, cfg.model)
    except (ValueError, PretrainedError) as exc:
        if missing_ok:
            return None
        raise ConfigError(str(exc)) from None
    state = net.state_dict()
    return weights_digest({k: state[k] for k in keys})


def preflight(config: TrainConfig, *, resume: bool = False, world: int = 1) -> None:
    """Every check :func:`run` makes before it writes anything, writing nothing: the options,
    the device, the data (enough examples for ``world`` processes), the model on this data
    and, with ``resume``, the whole checkpoint.  A launcher calls it before its workers start."""
    cfg = TrainConfig(**asdict(config))
    resolve(cfg, check_init_from=not resume)
    device = pick_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download,
                        image_size=cfg.image_size, limit_train=cfg.limit_train)
    cfg.dataset = data.name
    resolve(cfg, data, check_init_from=not resume)
    if len(data.train) < world:
        raise ConfigError(f"{len(data.train)} training example(s) cannot be shared by {world} "
                          "processes; train on more examples or in fewer processes")
    make_loss(cfg, data)
    net = build_model(cfg, data, pretrained=not resume)
    if resume:
        opt = make_optimizer(cfg, net)
        _restore(cfg, Path(cfg.out_dir) / CHECKPOINT, torch.device("cpu") if device.type != "cpu"
                 else device, net, opt, make_scheduler(cfg, opt), torch.Generator(), data)


def _write_metrics(out: Path, history: list[dict]):
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    _write_text_atomic(out / "metrics.csv", buf.getvalue())
    _write_text_atomic(out / "metrics.json", json.dumps(history, indent=1))


def _summary(cfg, history, status, seconds) -> dict:
    last = history[-1] if history else {}
    accs = [r["test_acc"] for r in history if r.get("test_acc") is not None]
    return {
        "status": status, "method": cfg.method, "dataset": cfg.dataset, "model": cfg.model,
        "seed": cfg.seed, "epochs": len(history),
        "final_test_acc": last.get("test_acc"), "best_test_acc": max(accs) if accs else None,
        "best_epoch": (1 + accs.index(max(accs))) if accs else None,
        "final_test_loss": last.get("test_loss"), "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"), "seconds": round(seconds, 3),
        "out_dir": cfg.out_dir, "world_size": distributed.world_size(),
    }


def default_out_dir(cfg: TrainConfig) -> str:
    """runs/<time>-<dataset>-<model>-<method>-s<seed>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = cfg.model or default_model(str(cfg.dataset).lower(), ())
    return os.path.join("runs", f"{stamp}-{cfg.dataset}-{model}-{cfg.method}-s{cfg.seed}")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


# -- the run ----------------------------------------------------------------------------------
def run(config: TrainConfig, *, resume: bool = False, model: nn.Module | None = None,
        progress: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Train as ``config`` says; return the summary (also written to ``summary.json``).

    ``model`` is an optional ``nn.Module`` of your own (unconverted) used instead of a named
    one.  ``resume=True`` continues ``config.out_dir`` from its checkpoint.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = TrainConfig(**asdict(config))
    if model is not None and cfg.model is None:
        cfg.model = f"custom:{type(model).__name__}"
    resolve(cfg, custom_model=model is not None, check_init_from=not resume)
    with distributed.session(cfg.device):  # joins the process group under torchrun
        device = pick_device(cfg.device)
        if distributed.world_size() > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", distributed.local_rank())  # one GPU per local rank
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download,
                            image_size=cfg.image_size, limit_train=cfg.limit_train)
        set_normalization(data, cfg.normalization)
        cfg.dataset = data.name
        resolve(cfg, data, custom_model=model is not None, check_init_from=not resume)
        if distributed.world_size() > 1:
            if distributed.rank() != 0:
                log, progress = (lambda msg: None), False
            cfg.out_dir = distributed.broadcast_str(cfg.out_dir or default_out_dir(cfg))
            # rank 0 alone writes the directory, and holds its lock (a --nproc launcher lets go
            # of it before the workers start)
            own_lock = distributed.rank() == 0
            with rundir.locked(cfg.out_dir) if own_lock else _no_lock(cfg.out_dir) as out:
                return _run_locked(cfg, out, data, device, resume, model, progress, log)
        if cfg.out_dir is None:
            cfg.out_dir = default_out_dir(cfg)
        with rundir.locked(cfg.out_dir) as out:  # one writer per run directory
            return _run_locked(cfg, out, data, device, resume, model, progress, log)


@contextlib.contextmanager
def _no_lock(path):
    yield Path(path)


def _run_locked(cfg: TrainConfig, out: Path, data: Dataset, device, resume: bool,
                model: nn.Module | None, progress: bool, log) -> dict:
    world, rank = distributed.world_size(), distributed.rank()
    writer = rank == 0  # rank 0 alone writes the run directory
    if len(data.train) < world:  # before anything is written: every rank stops here alike
        raise ConfigError(f"{len(data.train)} training example(s) cannot be shared by {world} "
                          "processes; train on more examples or in fewer processes")
    if writer:
        rundir.remove_stale_temp_files(out)  # left by a writer killed mid-write; we hold the lock
    loss_fn = make_loss(cfg, data)
    classification = data.task == "classification"

    # the same seed gives the same weights, feedback matrices and data order
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    net = build_model(cfg, data, model, pretrained=not resume).to(device)
    opt = make_optimizer(cfg, net)
    sched = make_scheduler(cfg, opt)
    order = torch.Generator().manual_seed(cfg.seed)  # data order, saved in the checkpoint
    history: list[dict] = []

    if resume:
        history, saved_world, digest = _restore(cfg, out / CHECKPOINT, device, net, opt, sched,
                                                order, data)
        log(f"resuming {out} after epoch {len(history)} of {cfg.epochs}")
        if saved_world != world:
            log(f"note: the checkpoint was trained in {saved_world} process(es), this run has "
                f"{world}: the global batch changes from {cfg.batch_size * saved_world} to "
                f"{cfg.batch_size * world}, so the run will not end as an uninterrupted one")
    else:
        digest = init_from_digest(cfg, data) if model is None else None
        if writer:
            _clear_previous_run(out)
    if writer:
        _write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=1))
    if resume and writer:  # the metrics files match the checkpoint again, whatever a kill left
        _write_metrics(out, history)
    model_ = net
    if world > 1:
        # every rank has read the checkpoint before rank 0 writes it again
        distributed.barrier()
        # default arguments: B is drawn from the seed (identical on every rank), learned B are
        # parameters DDP averages like weights
        model_ = nn.parallel.DistributedDataParallel(net)
        log(f"data parallel: {world} processes, {cfg.batch_size} examples each, global batch "
            f"{cfg.batch_size * world}")
    log(f"{cfg.method} on {data.describe()}; model {cfg.model}; run directory {out}")

    tb = _tensorboard(out) if writer else None
    n = len(data.train)
    align_batch = None
    if cfg.alignment:
        from .metrics import alignment_angles, norm_ratios  # owned by the analysis module
        align_batch = data.train.batch(torch.arange(min(n, cfg.batch_size)))

    for epoch in range(len(history) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=order)
        loss_sum, correct, seen = 0.0, 0, 0
        step = cfg.batch_size * world  # the global batch
        # a last global batch smaller than the world would leave a rank without examples
        steps = range(0, n if world == 1 else n - n % step if n % step < world else n, step)
        bar = _bar(steps, epoch, cfg.epochs, progress)
        for i in bar:
            # rank r takes every world-th example of the global batch (DistributedSampler's shard)
            x, y = data.train.batch(perm[i:i + step] if world == 1 else perm[i:i + step][rank::world])
            x, y = x.to(device), y.to(device)  # x: (B, *input_shape)
            # zero first: update-unlocked rules (drtp unlocked) write gradients during forward
            opt.zero_grad(set_to_none=True)
            out_ = model_(x, target=y)  # (B, classes); the target reaches rules that use it (drtp)
            loss = loss_fn(out_, y)
            if world > 1:  # every rank stops alike: a NaN on any rank makes the sum NaN
                total = distributed.all_sum([loss.item()], device)[0]
                if not math.isfinite(total):
                    _diverged(cfg, out, history, epoch, i // step, total, write=writer)
            elif not torch.isfinite(loss):
                _diverged(cfg, out, history, epoch, i // cfg.batch_size, loss.item())
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            if classification:
                correct += int((out_.detach().argmax(1) == y).sum())
            if progress:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                                acc=f"{correct / seen:.3f}" if classification else "-")
        if sched is not None:
            sched.step()
        if world > 1:  # the train metrics of the global batch
            loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], device)
            correct, seen = int(correct), int(seen)
        # every rank evaluates the same weights on the same test set: they decide alike
        test_loss, test_acc = evaluate(net, data.test, loss_fn, max(cfg.batch_size, 256), device,
                                       classification)
        if not math.isfinite(test_loss):  # the last step's update broke the weights
            _diverged(cfg, out, history, epoch, None, test_loss, what="test loss", write=writer)
        row = {"epoch": epoch, "train_loss": loss_sum / seen,
               "train_acc": correct / seen if classification else None,
               "test_loss": test_loss, "test_acc": test_acc,
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 4)}
        if align_batch is not None and epoch % cfg.alignment == 0 and writer:
            xa, ya = align_batch
            angles = alignment_angles(net, xa.to(device), ya.to(device), loss_fn=loss_fn)
            row.update({f"angle/{k}": v for k, v in angles.items()})
            row.update({f"norm/{k}": v for k, v in norm_ratios(net).items()})  # ‖B‖/‖W‖
        history.append(row)
        if not writer:
            continue
        # the checkpoint first: the metrics files never describe an epoch it does not hold
        state = {
            "epoch": epoch, "model": net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "data_order": order.get_state(), "rng": capture_rng(), "history": history,
            "config": asdict(cfg), "ssdfa_version": __version__,
            "num_classes": data.num_classes,
        }
        if digest is not None:  # which init_from weights this run was started from
            state["init_from_digest"] = digest
        if world > 1:  # the unwrapped module's weights: they load in one process too
            state["world_size"] = world
        save_checkpoint(out / CHECKPOINT, state)
        _write_metrics(out, history)
        if tb is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    tb.add_scalar(k, v, epoch)
        acc = f" test acc {100 * test_acc:.2f}%" if test_acc is not None else ""
        log(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
            f"test loss {test_loss:.4f}{acc} ({row['seconds']:.1f} s)")

    if tb is not None:
        tb.close()
    summary = _summary(cfg, history, "finished", sum(r["seconds"] for r in history))
    if world > 1:
        summary["global_batch_size"] = cfg.batch_size * world
    if writer:
        _write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    distributed.barrier()  # summary.json is written before any rank returns
    return summary


def _restore(cfg: TrainConfig, path: Path, device, net, opt, sched, order,
             data: Dataset | None = None) -> tuple[list[dict], int, str | None]:
    """Load every state from the checkpoint at ``path`` after checking it belongs to ``cfg``
    (every field validated first); return its history, the number of processes that trained
    it and the digest of the ``init_from`` weights it started from."""
    ckpt = load_checkpoint(path, map_location=device, required=REQUIRED_KEYS)
    check_checkpoint_config(ckpt["config"], cfg, path)
    history = ckpt["history"]
    done = len(history)
    saved_classes = ckpt.get("num_classes")
    if data is not None and saved_classes is not None and saved_classes != data.num_classes:
        raise ConfigError(f"{path.parent} was trained on {saved_classes} classes, the dataset "
                          f"now has {data.num_classes} (a class folder added or removed?); "
                          "resume on the same data, or start a new run")
    digest = ckpt.get("init_from_digest")
    if digest is not None and data is not None:
        now = init_from_digest(cfg, data, missing_ok=True)
        if now is not None and now != digest:
            raise ConfigError(f"{path.parent} started from other weights of init_from "
                              f"{cfg.init_from} than that run holds now (it was trained further "
                              "or replaced): continuing would mix two feature extractors; "
                              "start a new run with --overwrite")
    if cfg.epochs < done:
        raise ConfigError(f"{path.parent} has trained {done} epochs already; --epochs must be at "
                          f"least {done} to continue it")
    saved_epochs = ckpt["config"].get("epochs")
    if cfg.schedule == "cosine" and saved_epochs != cfg.epochs:
        raise ConfigError(f"cannot change epochs ({saved_epochs} -> {cfg.epochs}) of a run with the "
                          "cosine schedule: its learning rate depends on the total; start a new run")
    load_state(net, ckpt["model"], "model", path)
    check_model_state(net, path)
    load_state(opt, ckpt["optimizer"], "optimizer", path)
    if sched is not None and ckpt["scheduler"] is not None:
        load_state(sched, ckpt["scheduler"], "scheduler", path)
    try:
        order.set_state(ckpt["data_order"])
        restore_rng(ckpt["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path}: its random-number states are damaged "
                              f"({first_line(exc)})") from exc
    return list(history), ckpt.get("world_size", 1), digest  # world_size: data-parallel runs


def _clear_previous_run(out: Path) -> None:
    """A fresh run replaces whatever run the directory held: the checkpoint goes first, so a
    kill never leaves the new config.json beside the old weights."""
    for name in (CHECKPOINT, "summary.json", "metrics.csv", "metrics.json"):
        (out / name).unlink(missing_ok=True)
    if (out / "tensorboard").is_dir():
        shutil.rmtree(out / "tensorboard")


def _bar(steps, epoch, epochs, progress):
    if not progress:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, file=sys.stderr)


def _diverged(cfg, out, history, epoch, step, value, what="loss", write=True):
    summary = _summary(cfg, history, "diverged", sum(r["seconds"] for r in history))
    summary["diverged_at"] = {"epoch": epoch, "step": step, "loss": str(value), "which": what}
    if write:
        _write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    distributed.barrier()  # summary.json is written before any rank stops
    kept = (f"the checkpoint of epoch {len(history)} is kept in {out / CHECKPOINT}" if history
            else "no checkpoint had been written yet")
    raise Diverged(
        f"training diverged: {what} is {value} at epoch {epoch}"
        + (f", step {step}" if step is not None else "")
        + f"; {kept}. Try a lower --lr (now {cfg.lr}), gradient-friendlier --optimizer, or a "
        "smaller --batch-size."
    )
