"""Processes: one per stage (``torch.distributed``, gloo, on 127.0.0.1), their failures, the result.

:func:`train_pipeline` checks the request, converts the model once in the parent (so a model or
method the library refuses is refused here, in one line), spawns K workers, and assembles the
trained model from what each stage saved: its modules' weights, its feedback modules, its bytes,
waits, seconds and (the last stage) the loss of every step.  Each stage reads the same dataset,
builds the same net and converts it with the same seed, so every stage holds the B_l that
``ssdfa.convert(net, method, seed)`` draws; stage 0 reads the inputs and the last stage the labels
of each batch (both walk the same seeded order).

A stage whose weights, learned B_l or loss become NaN or infinite stops at once with
:class:`ssdfa.errors.Diverged` (CLI exit 3); a stage that fails otherwise with a one-line
:class:`~ssdfa.errors.PipelineError` naming the stage that failed first (exit 2).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ..convert import feedback_matrices
from ..data import load_dataset
from ..distributed import leave
from ..errors import Diverged, PipelineError
from .communication import Comm, expected_bytes
from .config import PipelineConfig, batches, make_optimizer
from .partition import block_feedback, boundary_shapes, boundary_widths, build_net, convert_net, first_block
from .schedule import PIPELINE_METHODS, train_step
from .stage import build_stage, finite


@dataclass
class PipelineRun:
    """A finished K-stage run: the report, the trained net, its B_l (dense, in order; ``[]``
    without any) and the mean loss of every step."""

    report: dict
    net: nn.Module
    feedback: list[torch.Tensor]
    losses: list[float]


def diverged(cfg: PipelineConfig, rank: int, step: int, bad: list[str]) -> Diverged:
    return Diverged(
        f"training diverged: {cfg.method} over {cfg.stages} stages: stage {rank} found NaN or "
        f"infinite values in {', '.join(bad[:3])} at step {step} of {cfg.steps}; the other stages "
        f"were stopped and nothing was kept. Try a lower --lr (now {cfg.lr}) or a smaller "
        "--batch-size."
    )


def train_stage(rank: int, cfg: PipelineConfig, outdir: str) -> None:
    """Stage ``rank``'s whole training; its counts, time, losses and trained modules go to
    ``outdir``.  Checked after every step: a NaN anywhere in the stage stops it (Diverged)."""
    data = load_dataset(cfg.dataset)
    _, net = build_net(cfg, data)
    model = convert_net(net, cfg.method, data.input_shape, data.num_classes, cfg.seed)
    stage = build_stage(model.net, rank, cfg.stages, block_feedback(model), model.rule)
    shapes = boundary_shapes(model.net, data.input_shape, cfg.stages)
    in_shape = tuple(data.input_shape) if rank == 0 else shapes[rank - 1]
    opt = make_optimizer(cfg, stage.parameters(), stage.learned_feedback())
    comm, losses = Comm(cfg.stages), []
    if cfg.stages > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for step, idx in enumerate(batches(len(data.train), cfg.batch_size, cfg.steps, cfg.seed), 1):
        x, y = data.train.batch(idx)
        loss = train_step(
            stage,
            comm,
            x if stage.first else None,
            y if stage.last else None,
            len(idx),
            cfg.micro_batches,
            in_shape,
            data.num_classes,
            opt,
        )
        bad = stage.nonfinite() if finite(loss) else ["the loss", *stage.nonfinite()]
        if bad:
            raise diverged(cfg, rank, step, bad)
        if loss is not None:
            losses.append(loss)
    if cfg.stages > 1:
        dist.barrier()
    start = first_block(model.net, rank, cfg.stages)
    torch.save(
        {
            "rank": rank,
            "sent": comm.sent,
            "wait": comm.wait,
            "seconds": time.perf_counter() - t0,
            "losses": losses,
            "state": {i: m.state_dict() for i, m in stage.modules().items()},
            "feedback": {start + j: fb.state_dict() for j, fb in enumerate(stage.feedback) if fb is not None},
        },
        os.path.join(outdir, f"rank{rank}.pt"),
    )


def _record_failure(outdir: str, rank: int, run: int, exc: BaseException) -> None:
    """Leave the stage's own error for :func:`worker_failure` (the first one written is the cause)."""
    with open(os.path.join(outdir, f"rank{rank}.error.json"), "w") as f:
        json.dump(
            {"rank": rank, "run": run, "time": time.time(), "type": type(exc).__name__, "message": str(exc)},
            f,
        )


def stage_worker(rank: int, cfgs: list[PipelineConfig], port: int, outdir: str) -> None:
    """One spawned process: join the group, train stage ``rank`` of each run in turn (run i's
    results in ``outdir/i``), leave.  One group for all the runs: a process starts once."""
    run = 0
    try:
        torch.set_num_threads(cfgs[0].threads)
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=cfgs[0].stages)
    except Exception as exc:
        _record_failure(outdir, rank, run, exc)
        raise
    ok = False
    try:
        for run, cfg in enumerate(cfgs):
            train_stage(rank, cfg, os.path.join(outdir, str(run)))
        ok = True
    except Exception as exc:
        _record_failure(outdir, rank, run, exc)
        raise
    finally:
        leave(ok)


def worker_failure(cfgs, outdir: str, exc) -> PipelineError | Diverged:
    """One line for a failed run: the stage whose error came first, its own message, what to do.

    When one stage fails the others may fail after it (a closed connection in recv); the
    error each stage recorded carries a time, and the earliest is the cause.  A stage that
    diverged gives its own Diverged.
    """
    cfgs = cfgs if isinstance(cfgs, (list, tuple)) else [cfgs]
    found = []
    for r in range(cfgs[0].stages):
        path = os.path.join(outdir, f"rank{r}.error.json")
        if os.path.exists(path):
            with open(path) as f:
                found.append(json.load(f))
    if found:
        first = min(found, key=lambda d: d["time"])
        if first["type"] == Diverged.__name__:
            return Diverged(first["message"])
        cfg = cfgs[first.get("run", 0)]
        rank, what = first["rank"], f"{first['type']}: {first['message']}"
    else:  # killed or exited without a Python exception (a signal, out of memory)
        cfg, rank, what = cfgs[0], exc.error_index, str(exc).strip()
    what = "; ".join(ln.strip() for ln in what.splitlines() if ln.strip())
    return PipelineError(
        f"pipeline stage {rank} of {cfg.stages} ({cfg.method}, model {cfg.model or 'default'}) "
        f"failed: {what}; the other stages were stopped and nothing was kept. Fix the input "
        f"it names (--model, --stages, --batch-size, --micro-batches) and run again"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_stages(cfgs: list[PipelineConfig], outdir: str, worker=stage_worker) -> list[list[dict]]:
    """Run ``worker(rank, cfgs, port, outdir)`` in one process per stage; per run, each rank's
    saved result, or the first stage's failure raised as one line."""
    for i in range(len(cfgs)):
        os.makedirs(os.path.join(outdir, str(i)), exist_ok=True)
    # when a stage fails, spawn stops the others and logs a warning per stage it stops; the
    # one-line error says so, so that warning is held back
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    try:
        mp.spawn(worker, args=(cfgs, free_port(), outdir), nprocs=cfgs[0].stages, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        raise worker_failure(cfgs, outdir, exc) from exc
    finally:
        spawn_log.setLevel(level)
    return [
        [torch.load(os.path.join(outdir, str(i), f"rank{r}.pt")) for r in range(cfg.stages)]
        for i, cfg in enumerate(cfgs)
    ]


def check_config(cfg: PipelineConfig, data) -> None:
    if cfg.method not in PIPELINE_METHODS:
        raise PipelineError(
            f"unknown pipeline method {cfg.method!r}; choose from {', '.join(PIPELINE_METHODS)}"
        )
    if cfg.micro_batches < 1 or cfg.micro_batches > cfg.batch_size:
        raise PipelineError(
            f"--micro-batches must be 1..--batch-size ({cfg.batch_size}), got {cfg.micro_batches}"
        )
    if cfg.batch_size > len(data.train):
        raise PipelineError(
            f"--batch-size {cfg.batch_size} is more than the {len(data.train)} training examples"
        )


def _prepare(cfg: PipelineConfig):
    """Everything checked and built in the parent before any process starts."""
    data = load_dataset(cfg.dataset)
    check_config(cfg, data)
    name, net = build_net(cfg, data)
    widths = boundary_widths(net, data.input_shape, cfg.stages)  # checks --stages
    model = convert_net(net, cfg.method, data.input_shape, data.num_classes, cfg.seed)
    return data, name, net, widths, model


def _assemble(cfg: PipelineConfig, prepared, ranks: list[dict]) -> PipelineRun:
    """The trained modules and B_l of every stage in the parent's own converted copy; the report."""
    data, name, net, widths, model = prepared
    for r in ranks:
        for i, state in r["state"].items():
            model.net[i].load_state_dict(state)
        for j, state in r["feedback"].items():
            model.feedback[j].load_state_dict(state)
    report = {
        "method": cfg.method,
        "model": name,
        "dataset": data.name,
        "stages": cfg.stages,
        "micro_batches": cfg.micro_batches,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "bytes_per_step": sum(r["sent"] for r in ranks) // cfg.steps,
        "expected_bytes_per_step": expected_bytes(cfg.method, widths, cfg.batch_size, data.num_classes),
        "seconds_per_step": max(r["seconds"] for r in ranks) / cfg.steps,
        "recv_wait_seconds": [r["wait"] for r in ranks],
        "test_accuracy": evaluate(net, data),
    }
    return PipelineRun(report, net, list(feedback_matrices(model).values()), ranks[-1]["losses"])


def train_pipelines(cfgs: list[PipelineConfig]) -> list[PipelineRun]:
    """Train each config over its stages, all in one set of processes (the same ``stages`` and
    ``threads``), one after the other; every config is checked before any process starts."""
    if not cfgs:
        return []
    if len({(c.stages, c.threads) for c in cfgs}) > 1:
        raise PipelineError("runs launched together must have the same --stages and --threads")
    prepared = [_prepare(cfg) for cfg in cfgs]
    with tempfile.TemporaryDirectory() as tmp:
        results = spawn_stages(list(cfgs), tmp)
    return [_assemble(cfg, p, ranks) for cfg, p, ranks in zip(cfgs, prepared, results)]


def train_pipeline(cfg: PipelineConfig) -> PipelineRun:
    """Train ``cfg.method`` over ``cfg.stages`` processes and assemble the trained model."""
    return train_pipelines([cfg])[0]


def run_pipeline(cfg: PipelineConfig):
    """(report, trained net, trained B_l): :func:`train_pipeline` without the losses.

    The B_l are one per block output but the last, in order (``[]`` for bp and shallow): drawn
    once and kept for dfa, sdfa, ssdfa, sign_dfa and drtp, learned by dkp.
    """
    run = train_pipeline(cfg)
    return run.report, run.net, run.feedback


def evaluate(net: nn.Module, data) -> float:
    net.eval()
    with torch.no_grad():
        x, y = data.test.batch(torch.arange(len(data.test)))
        acc = (net(x).argmax(1) == y).float().mean().item()
    net.train()
    return acc
