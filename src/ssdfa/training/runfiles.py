"""The files of a run directory: ``config.json``, ``metrics.csv``/``metrics.json``,
``summary.json`` and the checkpoint's restore, with the checks that keep two runs from mixing.

:func:`start` opens a run (a fresh one clears what an earlier run left; a resumed one loads
every state from the checkpoint), :func:`finish` and :func:`diverged` close it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn

from .. import distributed
from ..checkpoint import CHECKPOINT, REQUIRED_KEYS, first_line, load_checkpoint, restore_rng, weights_digest
from ..data import Dataset, canonical_name
from ..errors import CheckpointError, ConfigError, DatasetError, Diverged, PretrainedError
from ..feedback import SparseFeedback
from ..frozen import load_pretrained
from ..models import default_model
from ..rundata import read_json
from ..rundir import write_text_atomic
from .config import TrainConfig, resolve
from .factories import named_model

# settings that may differ between a checkpoint and the run continuing it: they change where
# and how fast it runs, not what it computes (epochs: only the stopping point)
RESUME_MAY_CHANGE = ("epochs", "device", "data_dir", "threads", "download", "out_dir")


def default_out_dir(cfg: TrainConfig) -> str:
    """runs/<time>-<dataset>-<model>-<method>-s<seed>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = cfg.model or default_model(str(cfg.dataset).lower(), ())
    return os.path.join("runs", f"{stamp}-{cfg.dataset}-{model}-{cfg.method}-s{cfg.seed}")


# -- opening and closing a run ----------------------------------------------------------------
def start(
    cfg: TrainConfig,
    out: Path,
    data: Dataset,
    device,
    net,
    opt,
    sched,
    order,
    *,
    resume: bool,
    custom_model: bool,
    writer: bool,
    log,
) -> tuple[list[dict], str | None]:
    """The history to continue (empty for a fresh run) and the digest of the ``init_from``
    weights; writes ``config.json`` (and, resuming, metrics matching the checkpoint again)."""
    world = distributed.world_size()
    if resume:
        history, saved_world, digest = restore(cfg, out / CHECKPOINT, device, net, opt, sched, order, data)
        log(f"resuming {out} after epoch {len(history)} of {cfg.epochs}")
        if saved_world != world:
            log(
                f"note: the checkpoint was trained in {saved_world} process(es), this run has "
                f"{world}: the global batch changes from {cfg.batch_size * saved_world} to "
                f"{cfg.batch_size * world}, so the run will not end as an uninterrupted one"
            )
    else:
        history = []
        digest = None if custom_model else init_from_digest(cfg, data)
        if writer:
            clear_previous_run(out)
    if writer:
        write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=1))
    if resume and writer:  # the metrics files match the checkpoint again, whatever a kill left
        write_metrics(out, history)
    return history, digest


def finish(cfg: TrainConfig, out: Path, history: list[dict], writer: bool) -> dict:
    """Write ``summary.json`` of a finished run and return it."""
    summary = make_summary(cfg, history, "finished")
    if distributed.world_size() > 1:
        summary["global_batch_size"] = cfg.batch_size * distributed.world_size()
    if writer:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    distributed.barrier()  # summary.json is written before any rank returns
    return summary


def diverged(cfg, out, history, epoch, step, value, what="loss", write=True):
    """Write the summary of a diverged run and raise :class:`Diverged`; the last good
    checkpoint is kept."""
    summary = make_summary(cfg, history, "diverged")
    summary["diverged_at"] = {"epoch": epoch, "step": step, "loss": str(value), "which": what}
    if write:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    distributed.barrier()  # summary.json is written before any rank stops
    kept = (
        f"the checkpoint of epoch {len(history)} is kept in {out / CHECKPOINT}"
        if history
        else "no checkpoint had been written yet"
    )
    raise Diverged(
        f"training diverged: {what} is {value} at epoch {epoch}"
        + (f", step {step}" if step is not None else "")
        + f"; {kept}. Try a lower --lr (now {cfg.lr}), gradient-friendlier --optimizer, or a "
        "smaller --batch-size."
    )


def make_summary(cfg, history, status) -> dict:
    last = history[-1] if history else {}
    accs = [r["test_acc"] for r in history if r.get("test_acc") is not None]
    seconds = sum(r["seconds"] for r in history)
    return {
        "status": status,
        "method": cfg.method,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "seed": cfg.seed,
        "epochs": len(history),
        "final_test_acc": last.get("test_acc"),
        "best_test_acc": max(accs) if accs else None,
        "best_epoch": (1 + accs.index(max(accs))) if accs else None,
        "final_test_loss": last.get("test_loss"),
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
        "seconds": round(seconds, 3),
        "out_dir": cfg.out_dir,
        "world_size": distributed.world_size(),
    }


def write_metrics(out: Path, history: list[dict]):
    """``metrics.csv`` (every column any row has; empty where a row lacks it) and ``metrics.json``."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    write_text_atomic(out / "metrics.csv", buf.getvalue())
    write_text_atomic(out / "metrics.json", json.dumps(history, indent=1))


def clear_previous_run(out: Path) -> None:
    """A fresh run replaces whatever run the directory held: the checkpoint goes first, so a
    kill never leaves the new config.json beside the old weights."""
    for name in (CHECKPOINT, "summary.json", "metrics.csv", "metrics.json"):
        (out / name).unlink(missing_ok=True)
    if (out / "tensorboard").is_dir():
        shutil.rmtree(out / "tensorboard")


# -- reading a run back -----------------------------------------------------------------------
def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The config.json of a run directory, or :class:`ConfigError` saying what is wrong with it."""
    path = Path(run_dir) / "config.json"
    values = read_json(
        path,
        lambda exc: ConfigError(
            f"{path} is not valid JSON ({first_line(exc)}); it is damaged — start "
            "the run again in a new --out-dir"
        ),
    )
    return TrainConfig.from_dict(values, where=str(path))


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
    return sorted(
        k
        for k, v in wanted.items()
        if v is not None and k not in may_change and saved.get(k, defaults[k]) != v
    )


def restore(
    cfg: TrainConfig, path: Path, device, net, opt, sched, order, data: Dataset | None = None
) -> tuple[list[dict], int, str | None]:
    """Load every state from the checkpoint at ``path`` after checking it belongs to ``cfg``
    (every field validated first); return its history, the number of processes that trained
    it and the digest of the ``init_from`` weights it started from."""
    ckpt = load_checkpoint(path, map_location=device, required=REQUIRED_KEYS)
    check_checkpoint_config(ckpt["config"], cfg, path)
    digest = ckpt.get("init_from_digest")
    if data is not None:
        _check_same_data(cfg, ckpt, path, data)
    _check_can_continue(cfg, ckpt, path)
    load_state(net, ckpt["model"], "model", path)
    check_model_state(net, path)
    load_state(opt, ckpt["optimizer"], "optimizer", path)
    if sched is not None and ckpt["scheduler"] is not None:
        load_state(sched, ckpt["scheduler"], "scheduler", path)
    try:
        order.set_state(ckpt["data_order"])
        restore_rng(ckpt["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path}: its random-number states are damaged ({first_line(exc)})") from exc
    return list(ckpt["history"]), ckpt.get("world_size", 1), digest  # world_size: data-parallel runs


def _check_same_data(cfg: TrainConfig, ckpt: dict, path: Path, data: Dataset) -> None:
    """The classes and the ``init_from`` weights the checkpoint was trained from are still there."""
    saved_classes = ckpt.get("num_classes")
    if saved_classes is not None and saved_classes != data.num_classes:
        raise ConfigError(
            f"{path.parent} was trained on {saved_classes} classes, the dataset "
            f"now has {data.num_classes} (a class folder added or removed?); "
            "resume on the same data, or start a new run"
        )
    digest = ckpt.get("init_from_digest")
    if digest is not None:
        now = init_from_digest(cfg, data, missing_ok=True)
        if now is not None and now != digest:
            raise ConfigError(
                f"{path.parent} started from other weights of init_from "
                f"{cfg.init_from} than that run holds now (it was trained further "
                "or replaced): continuing would mix two feature extractors; "
                "start a new run with --overwrite"
            )


def _check_can_continue(cfg: TrainConfig, ckpt: dict, path: Path) -> None:
    done = len(ckpt["history"])
    if cfg.epochs < done:
        raise ConfigError(
            f"{path.parent} has trained {done} epochs already; --epochs must be at "
            f"least {done} to continue it"
        )
    saved_epochs = ckpt["config"].get("epochs")
    if cfg.schedule == "cosine" and saved_epochs != cfg.epochs:
        raise ConfigError(
            f"cannot change epochs ({saved_epochs} -> {cfg.epochs}) of a run with the "
            "cosine schedule: its learning rate depends on the total; start a new run"
        )


def check_checkpoint_config(saved: dict, cfg: TrainConfig, path) -> None:
    """Refuse a checkpoint whose own config differs from the run's in anything but the
    settings of ``RESUME_MAY_CHANGE``: its weights belong to another run."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no config of its own; it was not written by ssdfa")
    wanted = asdict(cfg)
    differ = sorted(k for k in wanted if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != wanted[k])
    if differ:
        both = ", ".join(f"{k} {saved[k]!r} vs {wanted[k]!r}" for k in differ[:4])
        raise CheckpointError(
            f"{path} belongs to another run than config.json ({both}"
            f"{', ...' if len(differ) > 4 else ''}): the directory mixes two runs, e.g. an "
            "--overwrite stopped before its first epoch; start again with --overwrite"
        )


def load_state(obj, state, what: str, path) -> None:
    """``obj.load_state_dict(state)`` with a one-line error when the state does not fit."""
    try:
        obj.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(
            f"{path}: its {what} state does not fit this run ({first_line(exc)}); it belongs to another model"
        ) from exc


def check_model_state(net: nn.Module, path) -> None:
    """Loaded feedback indices point at existing errors (a damaged index would fail deep in
    ``embedding_bag`` mid-epoch, or read another error silently on some devices)."""
    for name, mod in net.named_modules():
        if isinstance(mod, SparseFeedback) and mod.index.numel():
            low, high = int(mod.index.min()), int(mod.index.max())
            if low < 0 or high >= mod.num_errors:
                raise CheckpointError(
                    f"{path}: feedback {name} indexes error {low if low < 0 else high}"
                    f" of {mod.num_errors}; the checkpoint is damaged — start "
                    "the run again or restore the file"
                )


def init_from_digest(cfg: TrainConfig, data: Dataset, missing_ok: bool = False) -> str | None:
    """SHA-256 of the weights ``cfg.init_from`` gives the model (None without init_from, or
    with ``missing_ok`` when the source is gone): a run records it, so that continuing it after
    its source changed is caught."""
    if cfg.init_from is None:
        return None
    if missing_ok and not Path(cfg.init_from).exists():
        return None
    try:
        net = named_model(cfg, data)  # as the run builds it
        keys = load_pretrained(net, cfg.init_from, cfg.train_only, cfg.model)
    except (ValueError, PretrainedError) as exc:
        if missing_ok:
            return None
        raise ConfigError(str(exc)) from None
    state = net.state_dict()
    return weights_digest({k: state[k] for k in keys})
