"""Options shared by ``ssdfa train`` and ``ssdfa compare``, and how they become a TrainConfig.

Precedence: TrainConfig defaults < ``--config FILE`` (TOML) < flags given on the command line.
Every flag defaults to ``argparse.SUPPRESS`` so that only flags the user typed override the file.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from .. import distributed
from ..errors import UserError
from ..training import LOSSES, OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig, check_types

S = argparse.SUPPRESS


def add_training_options(p: argparse.ArgumentParser, *, method: bool = True) -> None:
    g = p.add_argument_group("what to train")
    if method:
        g.add_argument("--method", default=S, help="learning rule (see `ssdfa info`); default ssdfa")
    g.add_argument("--dataset", default=S, help="dataset name (see `ssdfa info`); default digits")
    g.add_argument("--model", default=S, help="model name (see `ssdfa info`); default: the dataset's")
    g.add_argument("--data-dir", default=S, help="folder searched first for dataset files")
    g.add_argument(
        "--download",
        action="store_true",
        default=S,
        help="download a missing dataset into the user cache (needs the internet)",
    )
    g.add_argument("--image-size", type=int, default=S, help="imagefolder: square side in pixels")
    g.add_argument(
        "--limit-train",
        type=int,
        default=S,
        metavar="N",
        help="train on the first N examples only (quick runs)",
    )
    g.add_argument("--loss", choices=LOSSES, default=S, help="default auto: ce (mse for regression)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=S, help="default 10")
    g.add_argument(
        "--batch-size",
        type=int,
        default=S,
        help="default 64; with --nproc N (or torchrun) the batch of each process: "
        "the global batch is N times larger",
    )
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=S, help="default sgd")
    g.add_argument("--lr", type=float, default=S, help="learning rate, default 0.01")
    g.add_argument("--momentum", type=float, default=S, help="sgd/nesterov momentum, default 0.9")
    g.add_argument("--weight-decay", type=float, default=S, help="default 0")
    g.add_argument("--schedule", choices=SCHEDULES, default=S, help="per-epoch lr schedule")
    g.add_argument("--step-size", type=int, default=S, help="schedule step: epochs per decay")
    g.add_argument("--gamma", type=float, default=S, help="schedule step: decay factor")
    if method:
        g.add_argument("--seed", type=int, default=S, help="seed of weights, feedback and data order")
    add_setup_options(p)

    g = p.add_argument_group("feedback (rule options)")
    g.add_argument("--sparsity", type=float, default=S, help="fraction of zeros per row of B (sdfa)")
    g.add_argument("--connections", type=int, default=S, help="non-zeros per neuron of B (sdfa)")
    g.add_argument("--rank", type=int, default=S, help="rank of B (sdfa)")
    g.add_argument("--feedback-lr", type=float, default=S, help="learning rate of learned B (dkp)")
    g.add_argument(
        "--feedback-scale",
        type=float,
        default=S,
        metavar="X",
        help="multiply the std of every direct B_l by X (default 1; e.g. 0.3 for "
        "DFA on a deep ReLU CNN at lr 0.01)",
    )
    g.add_argument(
        "--unlocked",
        action="store_const",
        const=True,
        default=S,
        help="drtp: update each block during the forward pass (memory flat in depth)",
    )
    g.add_argument(
        "--train-only", default=S, metavar="LAYERS", help="e.g. fc: train only the fully connected layers"
    )
    g.add_argument(
        "--init-from",
        default=S,
        metavar="RUN_DIR",
        help="start from a finished run's weights; with --train-only fc only the "
        "frozen layers are taken (transfer learning, SSDFA Table V)",
    )
    g.add_argument(
        "--alignment",
        type=int,
        default=S,
        metavar="K",
        help="log alignment angles with BP every K epochs (0 = off)",
    )

    g = p.add_argument_group("output")
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--threads",
        type=int,
        default=S,
        help="CPU threads for torch (1 is fastest for small models on a busy machine)",
    )
    g.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data parallel: train in N local processes through torch.distributed.run "
        "(gloo on CPU, NCCL on GPUs: one GPU each), each on --batch-size examples "
        "of a global batch of N·batch-size; default 1",
    )
    g.add_argument("--out-dir", default=S, help="run directory (default runs/<time>-...)")
    g.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML file of options (keys as the flags, with _ or -); flags override it",
    )
    g.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def add_setup_options(p: argparse.ArgumentParser) -> None:
    """The settings the papers' own code used (``ssdfa reproduce`` sets them per method row)."""
    g = p.add_argument_group("the papers' setups (see ../shared/papers/authors-code-setups.md)")
    g.add_argument(
        "--adam-eps",
        type=float,
        default=S,
        help="Adam's epsilon, default 1e-8 (the SSDFA code: 1.0 on MNIST)",
    )
    g.add_argument("--adam-beta1", type=float, default=S, help="Adam's beta1, default 0.9")
    g.add_argument("--adam-beta2", type=float, default=S, help="Adam's beta2, default 0.999")
    g.add_argument(
        "--weight-init",
        default=S,
        metavar="INIT",
        help="default (torch's), zero, glorot, sqrt-fan-in or normal:STD",
    )
    g.add_argument(
        "--bias-init",
        type=float,
        default=S,
        metavar="C",
        help="every bias starts at C (default: as --weight-init leaves it)",
    )
    g.add_argument(
        "--activation",
        default=S,
        choices=("relu", "tanh"),
        help="the named model's hidden activations (default: its own)",
    )
    g.add_argument(
        "--dropout",
        type=float,
        default=S,
        metavar="P",
        help="dropout P before every hidden weight layer (default: the model's own)",
    )
    g.add_argument(
        "--normalization",
        default=S,
        metavar="MODE",
        help="inputs: mean-std (default, train-set per channel), none, per-image, "
        "per-pixel, or mean-std:M,S (fixed, on [0, 1] pixels)",
    )
    g.add_argument(
        "--feedback-init",
        default=S,
        metavar="INIT",
        help="how B_l is drawn: ours (default), uniform:1/sqrt(n), kaiming-uniform",
    )
    g.add_argument(
        "--feedback-gamma",
        type=float,
        default=S,
        metavar="G",
        help="learned B's lr times G after every epoch (DKP's StepLR 0.8); default off",
    )


def read_toml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} not found")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(
            f"config file {path} is not valid TOML: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc


def _check_types(values: dict, where: str) -> None:
    try:
        check_types(values, where)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def config_from_args(args: argparse.Namespace, extra_keys: tuple[str, ...] = ()) -> tuple[TrainConfig, dict]:
    """TrainConfig from defaults < TOML file < flags; ``extra_keys`` (e.g. ``methods``) returned apart."""
    names = set(TrainConfig.field_names())
    values: dict = {}
    extras: dict = {}
    if getattr(args, "config", None):
        raw = {str(k).replace("-", "_"): v for k, v in read_toml(args.config).items()}
        for key in list(raw):
            if key in extra_keys:
                extras[key] = raw.pop(key)
        unknown = sorted(set(raw) - names)
        if unknown:
            raise UserError(
                f"config file {args.config}: unknown key(s) {', '.join(unknown)}; "
                f"valid keys: {', '.join(sorted(names | set(extra_keys)))}"
            )
        _check_types(raw, f"config file {args.config}")
        values.update(raw)
    for key, value in vars(args).items():
        if key in names:
            values[key] = value
        elif key in extra_keys and value is not None:
            extras[key] = value
    try:
        return TrainConfig.from_dict(values), extras
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def logger(args):
    if getattr(args, "quiet", False):

        def quiet(msg):
            return None

        quiet.quiet = True  # the workers of --nproc are told to be quiet too
        return quiet
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def show_progress(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def given_keys(args) -> list[str]:
    """The TrainConfig fields the user set: flags typed and every key of ``--config``'s file
    (a key there equal to the default counts too: it was asked for)."""
    names = TrainConfig.field_names()
    typed = [k for k in names if k in vars(args)]
    if getattr(args, "config", None):
        raw = {str(k).replace("-", "_") for k in read_toml(args.config)}
        typed += [k for k in names if k in raw and k not in typed]
    return typed


def check_nproc(args) -> int:
    """``--nproc``: a positive number, at most one process per usable CPU core, and not
    inside a torchrun worker (that is one already)."""
    nproc = getattr(args, "nproc", 1)
    if not isinstance(nproc, int) or nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {nproc}")
    cores = distributed.usable_cores()
    if nproc > cores:
        raise UserError(
            f"--nproc {nproc} is more than the {cores} CPU core(s) this process may "
            f"use (each worker needs one); give --nproc 1..{cores}"
        )
    if nproc > 1 and distributed.in_worker():
        raise UserError(
            "--nproc asks for workers, but this process is one already (torchrun set "
            "WORLD_SIZE); use either torchrun or --nproc"
        )
    return nproc
