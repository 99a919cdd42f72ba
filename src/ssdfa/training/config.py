"""What a run depends on: :class:`TrainConfig`, its types and the checks of its values.

:func:`resolve` fills the defaults that depend on other fields and reports every impossible
value at once, in one :class:`~ssdfa.errors.ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..convert import check_feedback_scale
from ..data import Dataset, check_normalization
from ..errors import ConfigError, FeedbackConfigError
from ..feedback import check_feedback_init
from ..frozen import TRAIN_ONLY
from ..models import ACTIVATIONS, check_weight_init, default_model, list_models
from ..rules import METHODS

OPTIMIZERS = ("sgd", "nesterov", "adam")
SCHEDULES = ("none", "step", "cosine")
LOSSES = ("auto", "ce", "bce", "mse")
MAX_THREADS = 1024  # torch crashes (SIGSEGV) asked for 10^8 threads
_F32_MAX = float(np.finfo(np.float32).max)
_SEED_MAX = 2**63 - 1


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
    def from_dict(cls, values: dict, where: str = "config") -> TrainConfig:
        """A config from a mapping (TOML, config.json, a checkpoint), keys and types checked."""
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a table of options, got {type(values).__name__}")
        known = set(cls.field_names())
        clean = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        check_types(clean, where)
        return cls(**clean)


def _has_type(value, t: str) -> bool:
    if value is None:
        return "None" in t
    if t.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if t.startswith("float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t.startswith("bool"):
        return isinstance(value, bool)
    if t.startswith("str"):
        return isinstance(value, str)
    return True


def check_types(values: dict, where: str) -> None:
    """Each value has its field's type (an int is a float too; None means "unset")."""
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    for key, value in values.items():
        t = types.get(key, "")
        if not _has_type(value, t):
            raise ConfigError(f"{where}: {key} = {value!r} should be {t.split(' |')[0]}")


# -- resolving and checking the config ------------------------------------------------------
def resolve(
    cfg: TrainConfig,
    dataset: Dataset | None = None,
    custom_model: bool = False,
    *,
    check_init_from: bool = True,
) -> TrainConfig:
    """Fill defaults that depend on other fields and reject impossible values, all at once.

    ``check_init_from=False`` when resuming: the checkpoint holds every weight, so the run
    continues even after its ``init_from`` directory has moved."""
    problems = (
        _name_problems(cfg)
        + _rate_problems(cfg)
        + setup_problems(cfg)
        + _limit_problems(cfg)
        + _choice_and_path_problems(cfg, check_init_from)
    )
    if cfg.model is None and dataset is not None:
        cfg.model = default_model(dataset.name, dataset.input_shape)
    if not custom_model and cfg.model is not None and cfg.model not in list_models():
        problems.append(f"model {cfg.model!r} unknown; choose one of: {', '.join(list_models())}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def _name_problems(cfg: TrainConfig) -> list[str]:
    """The method, optimizer, schedule and loss, made canonical and checked."""
    problems = []
    method = str(cfg.method).strip().lower().replace("-", "_")
    if method not in METHODS:
        problems.append(f"method {cfg.method!r} unknown; choose one of: {', '.join(METHODS)}")
    cfg.method = method
    cfg.optimizer = str(cfg.optimizer).lower()
    cfg.schedule = str(cfg.schedule).lower()
    cfg.loss = str(cfg.loss).lower()
    for name, value, choices in (
        ("optimizer", cfg.optimizer, OPTIMIZERS),
        ("schedule", cfg.schedule, SCHEDULES),
        ("loss", cfg.loss, LOSSES),
    ):
        if value not in choices:
            problems.append(f"{name} {value!r} unknown; choose one of: {', '.join(choices)}")
    return problems


def _in_range(value, low, low_ok: bool, high, high_ok: bool) -> bool:
    return (
        math.isfinite(value)
        and (value >= low if low_ok else value > low)
        and (value <= high if high_ok else value < high)
    )


def _rate_problems(cfg: TrainConfig) -> list[str]:
    """Counts at least 1, and the numbers the optimizer multiplies float32 weights by finite
    and in float32's range."""
    problems = []
    for name in ("epochs", "batch_size", "step_size"):
        if int(getattr(cfg, name)) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name, low, low_ok, high, high_ok in (
        ("lr", 0, False, _F32_MAX, True),
        ("momentum", 0, True, 1, False),
        ("weight_decay", 0, True, _F32_MAX, True),
        ("gamma", 0, False, _F32_MAX, True),
        ("feedback_lr", 0, True, _F32_MAX, True),
    ):
        value = getattr(cfg, name)
        if value is not None and not _in_range(value, low, low_ok, high, high_ok):
            where = (
                f"{'[' if low_ok else '('}{low}, "
                f"{'3.4e38]' if high == _F32_MAX else str(high) + (']' if high_ok else ')')}"
            )
            problems.append(f"{name} must be a number in {where}, got {value}")
    try:
        check_feedback_scale(cfg.feedback_scale)
    except FeedbackConfigError as exc:
        problems.append(str(exc))
    return problems


def _limit_problems(cfg: TrainConfig) -> list[str]:
    problems = []
    if not 0 <= cfg.seed <= _SEED_MAX:
        problems.append(f"seed must be an integer in [0, 2**63 - 1], got {cfg.seed}")
    if cfg.threads is not None and not 1 <= cfg.threads <= MAX_THREADS:
        problems.append(f"threads must be in [1, {MAX_THREADS}], got {cfg.threads}")
    for name, what in (
        ("alignment", "alignment must be >= 0 (0 = off)"),
        ("image_size", "image_size must be >= 1"),
        ("limit_train", "limit_train must be >= 1"),
    ):
        value = getattr(cfg, name)
        if value is not None and value < (0 if name == "alignment" else 1):
            problems.append(f"{what}, got {value}")
    return problems


def _choice_and_path_problems(cfg: TrainConfig, check_init_from: bool) -> list[str]:
    problems = []
    if cfg.train_only is not None and cfg.train_only not in TRAIN_ONLY:
        problems.append(
            f"train_only {cfg.train_only!r} unknown; choose one of: "
            f"{', '.join(TRAIN_ONLY)} (or leave it out to train every layer)"
        )
    if check_init_from and cfg.init_from is not None and not Path(cfg.init_from).exists():
        problems.append(
            f"init_from {cfg.init_from!r} does not exist; give the run directory of a "
            "finished `ssdfa train` run (it holds checkpoint.pt)"
        )
    if cfg.out_dir is not None and not str(cfg.out_dir).strip():
        problems.append("out_dir is empty; give a folder name (or leave it out for runs/<time>-...)")
    return problems


def setup_problems(cfg: TrainConfig) -> list[str]:
    """What is wrong with the papers'-setup options (adam_eps ... feedback_gamma), all at once."""
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
            problems.append(
                f"activation {cfg.activation!r} unknown; choose one of: "
                f"{', '.join(ACTIVATIONS)} (or leave it out for the model's own)"
            )
    if cfg.dropout is not None and not (math.isfinite(cfg.dropout) and 0 <= cfg.dropout < 1):
        problems.append(f"dropout must be a probability in [0, 1), got {cfg.dropout}")
    if cfg.feedback_gamma is not None and not (
        math.isfinite(cfg.feedback_gamma) and 0 < cfg.feedback_gamma <= 1
    ):
        problems.append(f"feedback_gamma must be a number in (0, 1], got {cfg.feedback_gamma}")
    for check, name in (
        (check_weight_init, "weight_init"),
        (check_normalization, "normalization"),
        (check_feedback_init, "feedback_init"),
    ):
        try:
            setattr(cfg, name, check(getattr(cfg, name)))
        except ValueError as exc:
            problems.append(str(exc))
    return problems
