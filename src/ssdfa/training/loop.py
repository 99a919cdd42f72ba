"""The training loop behind ``ssdfa train`` and ``ssdfa compare``, readable top to bottom.

``run(TrainConfig(...))`` loads the dataset, builds the named model, converts it with the chosen
rule, trains, evaluates after every epoch and writes into ``config.out_dir``:
``config.json`` (the resolved config), ``metrics.csv`` and ``metrics.json`` (one row per epoch),
``summary.json`` and ``checkpoint.pt`` (atomic, each epoch).  ``run(config, resume=True)``
continues from the checkpoint and ends with the same weights as an uninterrupted run.
A NaN or infinite loss stops the run with :class:`Diverged`; the last good checkpoint is kept.

Under ``torchrun`` (or ``--nproc``) each process trains on its shard of every global batch and
rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import distributed, rundir
from .._version import __version__
from ..alignment import alignment_angles, norm_ratios
from ..checkpoint import CHECKPOINT, capture_rng, save_checkpoint
from ..data import Dataset, set_normalization
from ..errors import ConfigError
from .config import TrainConfig, resolve
from .factories import build_model, make_data, make_loss, make_optimizer, make_scheduler, pick_device
from .runfiles import default_out_dir, diverged, finish, restore, start, write_metrics


def run(
    config: TrainConfig,
    *,
    resume: bool = False,
    model: nn.Module | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train as ``config`` says; return the summary (also written to ``summary.json``).

    ``model`` is an optional ``nn.Module`` of your own (unconverted) used instead of a named
    one.  ``resume=True`` continues ``config.out_dir`` from its checkpoint.
    """
    log = log or _to_stderr
    cfg = TrainConfig(**asdict(config))
    if model is not None and cfg.model is None:
        cfg.model = f"custom:{type(model).__name__}"
    resolve(cfg, custom_model=model is not None, check_init_from=not resume)
    with distributed.session(cfg.device):  # joins the process group under torchrun
        device = _device(cfg)
        data = make_data(cfg)
        set_normalization(data, cfg.normalization)
        cfg.dataset = data.name
        resolve(cfg, data, custom_model=model is not None, check_init_from=not resume)
        if distributed.world_size() > 1 and distributed.rank() != 0:  # rank 0 alone speaks
            log, progress = _silent, False
        cfg.out_dir = _out_dir(cfg)
        with _run_dir(cfg.out_dir) as out:  # one writer per run directory
            return _train(cfg, out, data, device, resume, model, progress, log)


def _train(
    cfg: TrainConfig,
    out: Path,
    data: Dataset,
    device,
    resume: bool,
    model: nn.Module | None,
    progress: bool,
    log,
) -> dict:
    world = distributed.world_size()
    writer = distributed.rank() == 0  # rank 0 alone writes the run directory
    if len(data.train) < world:  # before anything is written: every rank stops here alike
        raise ConfigError(
            f"{len(data.train)} training example(s) cannot be shared by {world} "
            "processes; train on more examples or in fewer processes"
        )
    if writer:
        rundir.remove_stale_temp_files(out)  # left by a writer killed mid-write; we hold the lock
    loss_fn = make_loss(cfg, data)

    # the same seed gives the same weights, feedback matrices and data order
    _seed_everything(cfg.seed)
    net = build_model(cfg, data, model, pretrained=not resume).to(device)
    opt = make_optimizer(cfg, net)
    sched = make_scheduler(cfg, opt)
    order = torch.Generator().manual_seed(cfg.seed)  # data order, saved in the checkpoint
    history, digest = start(
        cfg,
        out,
        data,
        device,
        net,
        opt,
        sched,
        order,
        resume=resume,
        custom_model=model is not None,
        writer=writer,
        log=log,
    )
    model_ = _data_parallel(net, cfg, log)
    log(f"{cfg.method} on {data.describe()}; model {cfg.model}; run directory {out}")

    tb = _tensorboard(out) if writer else None
    align_batch = (
        data.train.batch(torch.arange(min(len(data.train), cfg.batch_size))) if cfg.alignment else None
    )
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = _train_epoch(
            cfg, out, history, epoch, data, model_, opt, loss_fn, order, device, progress
        )
        if sched is not None:
            sched.step()
        # every rank evaluates the same weights on the same test set: they decide alike
        test_loss, test_acc = evaluate(
            net, data.test, loss_fn, max(cfg.batch_size, 256), device, data.task == "classification"
        )
        if not math.isfinite(test_loss):  # the last step's update broke the weights
            diverged(cfg, out, history, epoch, None, test_loss, what="test loss", write=writer)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 4),
        }
        if align_batch is not None and epoch % cfg.alignment == 0 and writer:
            row.update(_alignment(net, align_batch, device, loss_fn))
        history.append(row)
        if not writer:
            continue
        # the checkpoint first: the metrics files never describe an epoch it does not hold
        save_checkpoint(out / CHECKPOINT, _checkpoint(cfg, data, net, opt, sched, order, history, digest))
        write_metrics(out, history)
        _add_scalars(tb, row)
        acc = f" test acc {100 * test_acc:.2f}%" if test_acc is not None else ""
        log(
            f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
            f"test loss {test_loss:.4f}{acc} ({row['seconds']:.1f} s)"
        )

    if tb is not None:
        tb.close()
    return finish(cfg, out, history, writer)


def _train_epoch(
    cfg: TrainConfig,
    out: Path,
    history: list[dict],
    epoch: int,
    data: Dataset,
    model_: nn.Module,
    opt,
    loss_fn,
    order,
    device,
    progress: bool,
):
    """One pass over the training set in the order drawn from ``order``; the mean train loss
    and accuracy (None for regression) over the global batch."""
    world, rank = distributed.world_size(), distributed.rank()
    classification = data.task == "classification"
    model_.train()
    n = len(data.train)
    perm = torch.randperm(n, generator=order)
    loss_sum, correct, seen = 0.0, 0, 0
    step = cfg.batch_size * world  # the global batch
    # a last global batch smaller than the world would leave a rank without examples
    steps = range(0, n if world == 1 else n - n % step if n % step < world else n, step)
    bar = _bar(steps, epoch, cfg.epochs, progress)
    for i in bar:
        # rank r takes every world-th example of the global batch (DistributedSampler's shard)
        x, y = data.train.batch(perm[i : i + step] if world == 1 else perm[i : i + step][rank::world])
        x, y = x.to(device), y.to(device)  # x: (B, *input_shape)
        # zero first: update-unlocked rules (drtp unlocked) write gradients during forward
        opt.zero_grad(set_to_none=True)
        out_ = model_(x, target=y)  # (B, classes); the target reaches rules that use it (drtp)
        loss = loss_fn(out_, y)
        # every rank stops alike: a NaN on any rank makes the sum NaN
        total = distributed.all_sum([loss.item()], device)[0] if world > 1 else loss.item()
        if not math.isfinite(total):
            diverged(cfg, out, history, epoch, i // step, total, write=world == 1 or rank == 0)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(y)
        seen += len(y)
        if classification:
            correct += int((out_.detach().argmax(1) == y).sum())
        if progress:
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}" if classification else "-"
            )
    if world > 1:  # the train metrics of the global batch
        total_loss, total_correct, total_seen = distributed.all_sum([loss_sum, correct, seen], device)
        loss_sum, correct, seen = total_loss, int(total_correct), int(total_seen)
    return loss_sum / seen, correct / seen if classification else None


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


def preflight(config: TrainConfig, *, resume: bool = False, world: int = 1) -> None:
    """Every check :func:`run` makes before it writes anything, writing nothing: the options,
    the device, the data (enough examples for ``world`` processes), the model on this data
    and, with ``resume``, the whole checkpoint.  A launcher calls it before its workers start."""
    cfg = TrainConfig(**asdict(config))
    resolve(cfg, check_init_from=not resume)
    device = pick_device(cfg.device)
    data = make_data(cfg)
    cfg.dataset = data.name
    resolve(cfg, data, check_init_from=not resume)
    if len(data.train) < world:
        raise ConfigError(
            f"{len(data.train)} training example(s) cannot be shared by {world} "
            "processes; train on more examples or in fewer processes"
        )
    make_loss(cfg, data)
    net = build_model(cfg, data, pretrained=not resume)
    if resume:
        opt = make_optimizer(cfg, net)
        restore(
            cfg,
            Path(str(cfg.out_dir)) / CHECKPOINT,
            torch.device("cpu") if device.type != "cpu" else device,
            net,
            opt,
            make_scheduler(cfg, opt),
            torch.Generator(),
            data,
        )


# -- the pieces the loop calls ----------------------------------------------------------------
def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _silent(msg: str) -> None:
    pass


def _device(cfg: TrainConfig) -> torch.device:
    device = pick_device(cfg.device)
    if distributed.world_size() > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", distributed.local_rank())  # one GPU per local rank
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return device


def _out_dir(cfg: TrainConfig) -> str:
    """``cfg.out_dir``, or the default name; under torchrun every rank gets rank 0's."""
    name = cfg.out_dir if cfg.out_dir is not None else default_out_dir(cfg)
    return str(distributed.broadcast_str(name)) if distributed.world_size() > 1 else name


def _run_dir(path: str):
    """The run directory, locked by rank 0 alone (a ``--nproc`` launcher lets go of the lock
    before its workers start)."""
    own_lock = distributed.world_size() == 1 or distributed.rank() == 0
    return rundir.locked(path) if own_lock else _no_lock(path)


@contextlib.contextmanager
def _no_lock(path):
    yield Path(path)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _data_parallel(net: nn.Module, cfg: TrainConfig, log) -> nn.Module:
    """``net`` itself in one process; wrapped in DistributedDataParallel under torchrun."""
    world = distributed.world_size()
    if world == 1:
        return net
    # every rank has read the checkpoint before rank 0 writes it again
    distributed.barrier()
    # default arguments: B is drawn from the seed (identical on every rank), learned B are
    # parameters DDP averages like weights
    log(
        f"data parallel: {world} processes, {cfg.batch_size} examples each, global batch "
        f"{cfg.batch_size * world}"
    )
    return nn.parallel.DistributedDataParallel(net)


def _alignment(net, batch, device, loss_fn) -> dict:
    """The angles between each layer's update and BP's, and ‖B‖/‖W‖, on one batch."""
    xa, ya = batch
    angles = alignment_angles(net, xa.to(device), ya.to(device), loss_fn=loss_fn)
    return {
        **{f"angle/{k}": v for k, v in angles.items()},
        **{f"norm/{k}": v for k, v in norm_ratios(net).items()},
    }


def _checkpoint(
    cfg: TrainConfig, data: Dataset, net, opt, sched, order, history: list[dict], digest: str | None
) -> dict:
    """Every state the run continues from, after the last epoch of ``history``."""
    state = {
        "epoch": len(history),
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "data_order": order.get_state(),
        "rng": capture_rng(),
        "history": history,
        "config": asdict(cfg),
        "ssdfa_version": __version__,
        "num_classes": data.num_classes,
    }
    if digest is not None:  # which init_from weights this run was started from
        state["init_from_digest"] = digest
    if distributed.world_size() > 1:  # the unwrapped module's weights: they load in one process too
        state["world_size"] = distributed.world_size()
    return state


def _bar(steps, epoch, epochs, progress):
    if not progress:
        return steps
    from tqdm import tqdm  # optional: only for --progress

    return tqdm(steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, file=sys.stderr)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _add_scalars(tb, row: dict) -> None:
    if tb is None:
        return
    for k, v in row.items():
        if k != "epoch" and v is not None:
            tb.add_scalar(k, v, row["epoch"])
