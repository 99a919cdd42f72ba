"""The training loop behind ``ssdfa train`` and ``ssdfa compare``, readable top to bottom.

``run(TrainConfig(...))`` loads the dataset, builds the named model, converts it with the chosen
rule, trains, evaluates after every epoch and writes into ``config.out_dir``:
``config.json`` (the resolved config), ``metrics.csv`` and ``metrics.json`` (one row per epoch),
``summary.json`` and ``checkpoint.pt`` (atomic, each epoch).  ``run(config, resume=True)``
continues from the checkpoint and ends with the same weights as an uninterrupted run.
A NaN or infinite loss stops the run with :class:`Diverged`; the last good checkpoint is kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa

from .checkpoint import CHECKPOINT, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .convert import check_feedback_scale
from .data import Dataset, load_dataset
from .feedback import FeedbackConfigError
from .models import create_model, default_model, list_models

__all__ = ["TrainConfig", "run", "Diverged", "ConfigError", "build_model", "evaluate",
           "OPTIMIZERS", "SCHEDULES", "LOSSES"]

OPTIMIZERS = ("sgd", "nesterov", "adam")
SCHEDULES = ("none", "step", "cosine")
LOSSES = ("auto", "ce", "bce", "mse")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the valid choices."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the run directory keeps the last good checkpoint."""


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
    limit_train: int | None = None  # keep the first n training examples (quick runs)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "TrainConfig":
        known = set(cls.field_names())
        clean = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: "
                              f"{', '.join(sorted(known))}")
        return cls(**clean)


# -- resolving and checking the config ------------------------------------------------------
def resolve(cfg: TrainConfig, dataset: Dataset | None = None, custom_model: bool = False) -> TrainConfig:
    """Fill defaults that depend on other fields and reject impossible values, all at once."""
    problems = []
    method = str(cfg.method).strip().lower().replace("-", "_")
    if method not in ssdfa.METHODS:
        problems.append(f"method {cfg.method!r} unknown; choose one of: {', '.join(ssdfa.METHODS)}")
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
    if not cfg.lr > 0:
        problems.append(f"lr must be > 0, got {cfg.lr}")
    if cfg.feedback_lr is not None and not cfg.feedback_lr >= 0:
        problems.append(f"feedback_lr must be >= 0, got {cfg.feedback_lr}")
    try:
        check_feedback_scale(cfg.feedback_scale)
    except FeedbackConfigError as exc:
        problems.append(str(exc))
    if cfg.threads is not None and cfg.threads < 1:
        problems.append(f"threads must be >= 1, got {cfg.threads}")
    if cfg.alignment < 0:
        problems.append(f"alignment must be >= 0 (0 = off), got {cfg.alignment}")
    if cfg.model is None and dataset is not None:
        cfg.model = default_model(dataset.name, dataset.input_shape)
    if not custom_model and cfg.model is not None and cfg.model not in list_models():
        problems.append(f"model {cfg.model!r} unknown; choose one of: {', '.join(list_models())}")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a torch device (cpu, cuda, cuda:1, mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but torch sees no CUDA GPU; use --device cpu")
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


def build_model(cfg: TrainConfig, data: Dataset, net: nn.Module | None = None):
    """The network (named, or the user's own) converted for ``cfg.method``."""
    if net is None:
        try:
            net = create_model(cfg.model, data.input_shape, data.num_classes)
        except ValueError as exc:  # a model that cannot read this dataset's inputs
            raise ConfigError(f"model {cfg.model} on dataset {data.name}: {exc}") from exc
    return ssdfa.convert(net, cfg.method, num_classes=data.num_classes,
                         input_shape=data.input_shape, seed=cfg.seed, **rule_options(cfg))


def feedback_params(model) -> list[nn.Parameter]:
    if hasattr(ssdfa, "feedback_parameters"):
        return list(ssdfa.feedback_parameters(model))
    return list(model.feedback.parameters()) if hasattr(model, "feedback") else []


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Forward weights in one group; learnable feedback (dkp) in its own, at ``feedback_lr``."""
    fb = feedback_params(model)
    fb_ids = {id(p) for p in fb}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in fb_ids]}]
    if fb:
        groups.append({"params": fb, "lr": cfg.feedback_lr if cfg.feedback_lr is not None else cfg.lr})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.optimizer == "nesterov" and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, opt):
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


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
def _write_text_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        "out_dir": cfg.out_dir,
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
    resolve(cfg, custom_model=model is not None)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download,
                        image_size=cfg.image_size, limit_train=cfg.limit_train)
    cfg.dataset = data.name
    resolve(cfg, data, custom_model=model is not None)
    if cfg.out_dir is None:
        cfg.out_dir = default_out_dir(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loss_fn = make_loss(cfg, data)
    classification = data.task == "classification"

    # the same seed gives the same weights, feedback matrices and data order
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    net = build_model(cfg, data, model).to(device)
    opt = make_optimizer(cfg, net)
    sched = make_scheduler(cfg, opt)
    order = torch.Generator().manual_seed(cfg.seed)  # data order, saved in the checkpoint
    history: list[dict] = []

    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT, map_location=device)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt.get("scheduler") is not None:
            sched.load_state_dict(ckpt["scheduler"])
        order.set_state(ckpt["data_order"])
        restore_rng(ckpt["rng"])
        history = list(ckpt["history"])
        log(f"resuming {out} after epoch {ckpt['epoch']} of {cfg.epochs}")
    _write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=1))
    log(f"{cfg.method} on {data.describe()}; model {cfg.model}; run directory {out}")

    tb = _tensorboard(out)
    n = len(data.train)
    align_batch = None
    if cfg.alignment:
        from .metrics import alignment_angles  # owned by the analysis module
        align_batch = data.train.batch(torch.arange(min(n, cfg.batch_size)))

    for epoch in range(len(history) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=order)
        loss_sum, correct, seen = 0.0, 0, 0
        steps = range(0, n, cfg.batch_size)
        bar = _bar(steps, epoch, cfg.epochs, progress)
        for i in bar:
            x, y = data.train.batch(perm[i:i + cfg.batch_size])
            x, y = x.to(device), y.to(device)  # x: (B, *input_shape)
            # zero first: update-unlocked rules (drtp unlocked) write gradients during forward
            opt.zero_grad(set_to_none=True)
            out_ = net(x, target=y)  # (B, classes); the target reaches rules that use it (drtp)
            loss = loss_fn(out_, y)
            if not torch.isfinite(loss):
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
        test_loss, test_acc = evaluate(net, data.test, loss_fn, max(cfg.batch_size, 256), device,
                                       classification)
        row = {"epoch": epoch, "train_loss": loss_sum / seen,
               "train_acc": correct / seen if classification else None,
               "test_loss": test_loss, "test_acc": test_acc,
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 4)}
        if align_batch is not None and epoch % cfg.alignment == 0:
            xa, ya = align_batch
            angles = alignment_angles(net, xa.to(device), ya.to(device), loss_fn=loss_fn)
            row.update({f"angle/{k}": v for k, v in angles.items()})
        history.append(row)
        _write_metrics(out, history)
        if tb is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    tb.add_scalar(k, v, epoch)
        save_checkpoint(out / CHECKPOINT, {
            "epoch": epoch, "model": net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "data_order": order.get_state(), "rng": capture_rng(), "history": history,
            "config": asdict(cfg), "ssdfa_version": ssdfa.__version__,
        })
        acc = f" test acc {100 * test_acc:.2f}%" if test_acc is not None else ""
        log(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
            f"test loss {test_loss:.4f}{acc} ({row['seconds']:.1f} s)")

    if tb is not None:
        tb.close()
    summary = _summary(cfg, history, "finished", sum(r["seconds"] for r in history))
    _write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def _bar(steps, epoch, epochs, progress):
    if not progress:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, file=sys.stderr)


def _diverged(cfg, out, history, epoch, step, value):
    summary = _summary(cfg, history, "diverged", sum(r["seconds"] for r in history))
    summary["diverged_at"] = {"epoch": epoch, "step": step, "loss": str(value)}
    _write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    kept = (f"the checkpoint of epoch {len(history)} is kept in {out / CHECKPOINT}" if history
            else "no checkpoint had been written yet")
    raise Diverged(
        f"training diverged: loss is {value} at epoch {epoch}"
        + (f", step {step}" if step is not None else "")
        + f"; {kept}. Try a lower --lr (now {cfg.lr}), gradient-friendlier --optimizer, or a "
        "smaller --batch-size."
    )
