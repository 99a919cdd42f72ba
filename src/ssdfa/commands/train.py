"""``ssdfa train``: train one model with one rule; ``--resume RUN_DIR`` continues a run."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from .. import distributed
from ..campaign import train_or_explain
from ..checkpoint import CHECKPOINT
from ..errors import UserError
from ..rundata import read_json
from ..rundir import locked, refuse_foreign
from ..training import (
    RESUME_MAY_CHANGE,
    ConfigError,
    Diverged,
    TrainConfig,
    default_out_dir,
    pick_device,
    read_run_config,
    resolve,
)
from ._options import add_training_options, check_nproc, config_from_args, given_keys, logger, show_progress


def register(sub):
    p = sub.add_parser(
        "train",
        help="train a model with a learning rule",
        description="Train a model with a learning rule, writing metrics and checkpoints to a "
        "run directory. Example: ssdfa train --method ssdfa --dataset fashion-mnist "
        "--model mnist-fc --epochs 10",
    )
    add_training_options(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the run in RUN_DIR from its last checkpoint",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an --out-dir that already holds a run, replacing it",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    nproc = check_nproc(args)
    if distributed.in_worker():  # started by torchrun: join the group for the whole command
        with distributed.session(getattr(args, "device", None)):
            return _run(args, nproc)
    return _run(args, nproc)


def _run(args, nproc: int) -> int:
    log = logger(args)
    me = distributed.rank()
    if me != 0:  # under torchrun rank 0 alone talks
        log = logger(argparse.Namespace(quiet=True))
    if args.resume:
        cfg = _resume_config(args)
    else:
        cfg, _ = config_from_args(args)
        if cfg.out_dir is None:  # named after the time: rank 0's name for every rank
            cfg.out_dir = distributed.broadcast_str(default_out_dir(cfg))
    resolve(replace(cfg), check_init_from=not args.resume)  # refused before the directory is touched
    pick_device(cfg.device)
    out = Path(cfg.out_dir)
    if nproc > 1 and out.exists():  # looked at under the lock, which rank 0 then takes
        with locked(out):
            _check_fresh(args, out)
    # checked and written by this process (under torchrun: rank 0) alone until it exits
    with locked(out) if me == 0 and nproc == 1 else contextlib.nullcontext():
        if nproc == 1:
            _check_fresh(args, out)
        distributed.barrier()  # every rank has looked before rank 0 clears the directory
        try:
            summary = train_or_explain(
                cfg, nproc=nproc, resume=bool(args.resume), progress=show_progress(args) and me == 0, log=log
            )
        except KeyboardInterrupt:
            if (out / CHECKPOINT).exists():
                print(
                    f"ssdfa train: interrupted; the last finished epoch is saved — continue "
                    f"with `ssdfa train --resume {out}`",
                    file=sys.stderr,
                )
            else:
                print(
                    "ssdfa train: interrupted before the first epoch finished; nothing was "
                    "saved to resume — run the same command again",
                    file=sys.stderr,
                )
            return 130
        except Diverged as exc:
            if me != 0:
                return 3
            print(f"ssdfa train: {exc}", file=sys.stderr)
            if args.json:
                summary_file = out / "summary.json"
                if summary_file.exists():
                    print(
                        json.dumps(read_json(summary_file, lambda exc: UserError(f"{summary_file}: {exc}")))
                    )
            return 3
    if me != 0:
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        print(_describe(summary))
    return 0


def _check_fresh(args, out: Path) -> None:
    """Called under the directory's lock: a busy directory is reported before anything else."""
    refuse_foreign(out, ("train",), "--resume" if args.resume else "--out-dir", inside=False)
    if not args.resume and (out / CHECKPOINT).exists() and not args.overwrite:
        raise UserError(
            f"{out} already holds a run; continue it with --resume "
            f"{out}, pick another --out-dir, or pass --overwrite"
        )


def _resume_config(args) -> TrainConfig:
    run_dir = Path(args.resume)
    if not (run_dir / CHECKPOINT).is_file() or not (run_dir / "config.json").is_file():
        raise UserError(
            f"{run_dir} is not a run directory with a checkpoint (expected "
            f"config.json and {CHECKPOINT} there); to start it, run without --resume"
        )
    try:
        saved = read_run_config(run_dir)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    given, _ = config_from_args(args)
    typed = given_keys(args)  # flags and every key of --config, checked alike
    if "out_dir" in typed and os.path.realpath(given.out_dir) != os.path.realpath(run_dir):
        raise UserError(
            f"--resume {run_dir} continues the run where it is; --out-dir "
            f"{given.out_dir} names another directory — leave --out-dir out (or copy "
            "the run there first and resume the copy)"
        )
    merged = replace(saved, **{k: getattr(given, k) for k in typed})
    try:  # compare resolved values: --method SSDFA is the saved ssdfa
        a = resolve(replace(merged), check_init_from=False)
        b = resolve(replace(saved), check_init_from=False)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    refused = sorted(k for k in typed if k not in RESUME_MAY_CHANGE and getattr(a, k) != getattr(b, k))
    if refused:
        raise UserError(
            f"cannot change {', '.join(refused)} when resuming (only "
            f"{', '.join(k for k in RESUME_MAY_CHANGE if k != 'out_dir')} may change); "
            "start a new run instead"
        )
    merged.out_dir = str(run_dir)
    return merged


def _describe(s: dict) -> str:
    if s["final_test_acc"] is None:
        return (
            f"{s['method']} on {s['dataset']} ({s['model']}): final test loss "
            f"{s['final_test_loss']:.4f} after {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, {s['seconds']:.1f} s; "
            f"run in {s['out_dir']}"
        )
    return (
        f"{s['method']} on {s['dataset']} ({s['model']}): final test accuracy "
        f"{100 * s['final_test_acc']:.2f}% (best {100 * s['best_test_acc']:.2f}% at epoch "
        f"{s['best_epoch']}) after {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, {s['seconds']:.1f} s; run in {s['out_dir']}"
    )
