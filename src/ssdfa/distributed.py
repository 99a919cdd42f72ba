"""Data-parallel training on PyTorch's own engine: ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

``ssdfa train --nproc N`` starts N local workers through ``torch.distributed.run`` (the engine
behind ``torchrun``); ``torchrun --nproc-per-node N -m ssdfa train ...`` (or several machines with
``--nnodes``) works as well: a process started that way finds ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in its environment and :func:`session` joins the process group.

With world size W, ``--batch-size`` is the batch of each process (PyTorch's convention) and the
global batch is batch_size·W.  Every rank draws the same permutation from the seeded order
generator and takes its shard of each global batch (rank r of global batch k:
``perm[k·B·W:(k+1)·B·W][r::W]``, DistributedSampler's interleaving).  The converted model is
wrapped in ``DistributedDataParallel`` with default arguments: feedback matrices are drawn from the
seed, so they are identical on every rank, and learned B (dkp, kp) are parameters DDP averages.
Rank 0 alone writes config.json, metrics, checkpoints and summary.json, and it holds the
run-directory lock itself while it does: the launcher behind ``--nproc`` checks every option
(and the data, the model and a checkpoint to resume) under the lock, then lets it go to rank 0.
Workers die with their launcher: each asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``) and a watchdog thread checks the parent's pid as well, so a ``kill -9`` of
the launcher never leaves a rank writing on alone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import DistributedSetupError, Diverged

__all__ = [
    "world_size",
    "rank",
    "local_rank",
    "in_worker",
    "session",
    "leave",
    "broadcast_str",
    "barrier",
    "launch",
    "die_with_parent",
    "usable_cores",
    "DistributedSetupError",
]

LAUNCHER_PID = "SSDFA_LAUNCHER_PID"  # set by launch() for its workers


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def in_worker() -> bool:
    """True in a process started by torchrun / ``torch.distributed.run`` with WORLD_SIZE > 1."""
    return _env_int("WORLD_SIZE", 1) > 1 and "RANK" in os.environ


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def _backend(device_name: str | None) -> str:
    name = str(device_name or "auto").strip().lower()
    wants_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    return "nccl" if wants_cuda and dist.is_nccl_available() else "gloo"


@contextlib.contextmanager
def session(device_name: str | None = None):
    """Join the process group when started by torchrun (and leave it at the end); nothing in a
    plain single process or when a group is already initialized (then its owner destroys it)."""
    if not in_worker() or not dist.is_available() or dist.is_initialized():
        yield
        return
    backend = _backend(device_name)
    if backend == "nccl":
        if local_rank() >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank()} has no GPU of its own (this machine "
                f"has {torch.cuda.device_count()}); start fewer processes per "
                "node, or train on the CPU with --device cpu (gloo)"
            )
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend)
    except dist.DistNetworkError as exc:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedSetupError(
            f"torch.distributed cannot start its store at {where} ({_first(exc)}); the port is "
            "probably in use by another job: give torchrun another --master-port (or "
            "MASTER_PORT), or use --rdzv-endpoint localhost:0"
        ) from None
    ok = False
    try:
        yield
        ok = True
    finally:
        leave(ok)


def leave(ok: bool = True) -> None:
    """Destroy the default process group.  After a normal end the ranks first meet at a barrier
    and drop unreachable objects, so no collective is still finishing in gloo's worker threads
    when the group's destructor joins them while holding the GIL (a known PyTorch deadlock,
    pytorch/pytorch#75097, met once in this project's test suite).  After an error there is no
    barrier: the other ranks may never reach it."""
    if not dist.is_initialized():
        return
    if ok:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def broadcast_str(value: str | None) -> str | None:
    """Rank 0's ``value`` on every rank (e.g. a run directory named after the time)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_sum(values: list[float], device) -> list[float]:
    """The sums over ranks of a few numbers (float64)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _first(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:160]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# -- children die with their parent -------------------------------------------------------------
def die_with_parent(poll: float = 0.2) -> None:
    """Make this worker die when the launcher that started it dies, however it dies.

    Two mechanisms, either enough: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux: the kernel
    kills us the moment the parent exits) and a daemon thread that checks every ``poll``
    seconds that the parent's pid is still the launcher's (``SSDFA_LAUNCHER_PID``).  A parent
    that died before this call is caught by the first check.  Nothing happens outside a
    worker of :func:`launch`.
    """
    expected = os.environ.get(LAUNCHER_PID)
    if not expected:
        return
    try:
        parent = int(expected)
    except ValueError:
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the thread does it
            pass
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)

    def watch():
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ssdfa-parent-watchdog", daemon=True).start()


# -- the launcher behind --nproc ----------------------------------------------------------------
def launch(cfg, nproc: int, *, resume: bool, quiet: bool) -> int:
    """Train ``cfg`` (resolved, ``out_dir`` set) in ``nproc`` local processes through
    ``torch.distributed.run``; return its exit status (0: trained; summary.json is written), or
    raise :class:`~ssdfa.training.Diverged` as a one-process run does.  The caller must not
    hold the run directory's lock: rank 0 takes it, as the process that writes."""
    with tempfile.TemporaryDirectory(prefix="ssdfa-ddp-") as tmp:
        cfg_file = Path(tmp) / "config.json"
        cfg_file.write_text(json.dumps(asdict(cfg)), encoding="utf-8")
        args = (
            ["--standalone", f"--nproc-per-node={nproc}", "-m", "ssdfa._ddp_worker", str(cfg_file)]
            + (["--resume"] if resume else [])
            + (["--quiet"] if quiet else [])
        )
        env = {
            LAUNCHER_PID: str(os.getpid()),  # the workers die with this process
            # torchrun sets 1 thread per worker (with a warning) unless told; --threads wins
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(cfg.threads or 1)),
        }
        rc = _torchrun(args, env)
        diverged = Path(tmp) / "diverged.txt"
        if rc == 0 and diverged.is_file():
            raise Diverged(diverged.read_text(encoding="utf-8"))
        return rc


def _torchrun(args: list[str], env: dict[str, str]) -> int:
    """``torchrun ARGS`` in this process (no second interpreter to start): ``torch.distributed.run``
    with ``env`` added to the workers' environment; this process's environment and signal
    handlers (the elastic agent installs its own) are restored afterwards."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    saved_env = dict(os.environ)
    handled = [signal.SIGINT, signal.SIGTERM] + [
        getattr(signal, n) for n in ("SIGHUP", "SIGQUIT") if hasattr(signal, n)
    ]
    saved_handlers = {sig: signal.getsignal(sig) for sig in handled}
    os.environ.update(env)
    try:
        with warnings.catch_warnings():  # its fault handler needs a real stderr (not pytest's)
            warnings.filterwarnings("ignore", message="Unable to enable fault handler")
            torchrun_main(args)
        return 0
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    except SignalException as exc:
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from exc
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
