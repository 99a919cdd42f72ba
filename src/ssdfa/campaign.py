"""Campaigns: many runs of one base config, shared by ``ssdfa compare``, ``reproduce`` and ``sweep``.

:func:`train_all` trains (or continues, or reads back) every method and seed under
``<out>/<method>/seed<k>``; :func:`aggregate` and :func:`markdown_table` turn the summaries into
the papers' "mean ± std over seeds" rows.  :func:`train_or_explain` is one run, in this process
or in ``nproc`` local processes, with the user's mistakes as one-line errors (exit status 2).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT, load_checkpoint
from .convert import check_feedback_scale
from .data import load_dataset
from .distributed import _backend, launch
from .errors import ConfigError, DatasetError, Diverged, FeedbackConfigError, RuleOptionError, UserError
from .rules import make_rule
from .rundata import read_json
from .rundir import holds_lock, locked
from .training import (
    TrainConfig,
    default_out_dir,
    init_from_digest,
    preflight,
    read_run_config,
    resolve,
    rule_options,
    run,
    settings_differ,
)


def check_methods(base: TrainConfig, methods: list[str]) -> None:
    """Reject a bad method name or rule option before any training starts."""
    for m in methods:
        try:
            cfg = resolve(replace(base, method=m))
            opts = {
                k: v for k, v in rule_options(cfg).items() if k not in ("train_only", "feedback_scale")
            }  # convert's, not the rule's
            check_feedback_scale(cfg.feedback_scale, make_rule(cfg.method, **opts))
        except (ValueError, KeyError) as exc:
            raise UserError(f"{m}: {exc}") from exc


# -- one run --------------------------------------------------------------------------------
_MISTAKES = (ConfigError, DatasetError, RuleOptionError, FeedbackConfigError)  # the user's input


def train_or_explain(cfg: TrainConfig, nproc: int = 1, **kwargs) -> dict:
    """``training.run`` with the user's mistakes turned into one-line errors (exit status 2);
    with ``nproc`` > 1 in that many local processes through ``torch.distributed.run``."""
    if nproc > 1:
        return _train_parallel(cfg, nproc, **kwargs)
    try:
        return run(cfg, **kwargs)
    except (*_MISTAKES, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc


def _train_parallel(
    cfg: TrainConfig, nproc: int, *, resume: bool = False, progress: bool = False, log=None
) -> dict:
    try:
        resolve(replace(cfg), check_init_from=not resume)  # refused here, before any worker starts
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    if _backend(cfg.device) == "nccl" and nproc > torch.cuda.device_count():
        raise UserError(
            f"--nproc {nproc} on CUDA needs {nproc} GPUs (one per process); this "
            f"machine has {torch.cuda.device_count()}; use --device cpu for gloo "
            "processes on the CPU"
        )
    if cfg.out_dir is None:
        cfg = replace(cfg, out_dir=default_out_dir(cfg))
    quiet = getattr(log, "quiet", False)
    if holds_lock(cfg.out_dir):  # rank 0 must be able to take it
        raise RuntimeError("_train_parallel called with the run directory's lock held")
    # everything the workers would check, checked here before one starts: the options, the
    # data (enough examples for nproc), the model, a checkpoint to resume (under the lock of a
    # directory that exists; one that does not is not created for a refusal)
    out = Path(cfg.out_dir)
    with locked(out) if out.exists() else contextlib.nullcontext():
        try:
            preflight(cfg, resume=resume, world=nproc)
        except (*_MISTAKES, FileNotFoundError) as exc:
            raise UserError(str(exc)) from exc
    # the lock is let go here and rank 0, the process that writes, takes it
    rc = launch(cfg, nproc, resume=resume, quiet=quiet)
    if rc != 0:
        raise UserError(
            f"the {nproc} workers of torch.distributed.run failed (exit status "
            f"{rc}); their messages are above"
        )
    return _read_summary(Path(out))


# -- every method and seed --------------------------------------------------------------------
def train_all(
    base,
    methods: list[str],
    seeds: int,
    first: int,
    out: Path,
    log,
    progress: bool = False,
    nproc: int = 1,
    *,
    retrain_changed_init: bool = False,
) -> tuple[dict[str, list[dict]], float]:
    """Train (or continue, or reuse) every method and seed under ``out/<method>/seed<k>``.

    Returns each method's run summaries and the seconds taken.  A run already finished in its
    folder with the same settings is read back, not retrained and not rewritten (see
    :func:`_earlier_run`).  A run started from ``init_from`` weights that have changed since
    (a pretrain continued for more epochs) is refused, or with ``retrain_changed_init``
    trained again from the start: a continued row is the row a fresh run would give.
    """
    results: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for method in methods:
        results[method] = []
        for seed in range(first, first + seeds):
            cfg = replace(base, method=method, seed=seed, out_dir=str(out / method / f"seed{seed}"))
            results[method].append(_one_run(cfg, log, progress, nproc, retrain_changed_init))
    return results, time.perf_counter() - t0


def _one_run(cfg: TrainConfig, log, progress: bool, nproc: int, retrain_changed_init: bool) -> dict:
    """The summary of the run in ``cfg.out_dir``: read back when it finished, else trained
    (continued when it is a run of this config)."""
    method, seed = cfg.method, cfg.seed
    resume = _earlier_run(cfg)
    if resume and _init_changed(cfg):
        if not retrain_changed_init:
            raise UserError(
                f"{cfg.out_dir} started from other weights of init_from "
                f"{cfg.init_from} than it holds now; give a new --out-dir"
            )
        log(f"== {method}, seed {seed}: its init_from run changed; training it again from the start ==")
        resume = False
    done = _finished_summary(cfg, nproc) if resume else None
    if done is not None:  # a finished run is read back: its files are never rewritten
        log(f"== {method}, seed {seed}: finished already, read from {cfg.out_dir} ==")
        return done
    log(f"== {method}, seed {seed}{' (continuing the run already there)' if resume else ''} ==")
    try:
        return train_or_explain(cfg, nproc=nproc, resume=resume, progress=progress, log=log)
    except Diverged as exc:
        log(f"{method} seed {seed}: {exc}")
        return _read_summary(Path(cfg.out_dir))
    except KeyboardInterrupt:
        log(
            f"interrupted during {method} seed {seed}; run the same command again to "
            "continue: finished runs are kept"
        )
        raise


def _earlier_run(cfg) -> bool:
    """True when ``cfg.out_dir`` holds a run of this very config: it is continued, not redone.

    So an interrupted ``ssdfa compare`` given the same ``--out-dir`` picks up where it stopped,
    and adding seeds trains only the new ones.  A run of another config there is an error.
    """
    run_dir = Path(cfg.out_dir)
    if not (run_dir / CHECKPOINT).is_file():
        return False
    try:
        saved = asdict(read_run_config(run_dir))
    except FileNotFoundError:
        raise UserError(
            f"{run_dir} holds a checkpoint without config.json; delete {run_dir} to train it again"
        ) from None
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    differ = settings_differ(saved, cfg)
    if differ:
        raise UserError(
            f"{run_dir} holds a run with other settings ({', '.join(differ)}); give a new --out-dir"
        )
    return True


def _init_changed(cfg) -> bool:
    """Whether the run in ``cfg.out_dir`` started from other ``init_from`` weights than
    ``cfg.init_from`` gives now (False when it cannot tell: no init_from, source gone)."""
    if cfg.init_from is None:
        return False
    try:
        saved = load_checkpoint(Path(cfg.out_dir) / CHECKPOINT).get("init_from_digest")
    except (OSError, ValueError):
        return False  # the resume reports a damaged checkpoint in one line
    if saved is None:
        return False
    c = resolve(replace(cfg), check_init_from=False)
    data = load_dataset(c.dataset, c.data_dir, image_size=c.image_size, limit_train=c.limit_train)
    c = resolve(c, data, check_init_from=False)
    now = init_from_digest(c, data, missing_ok=True)
    return now is not None and now != saved


def _finished_summary(cfg, nproc: int = 1) -> dict | None:
    """The validated summary.json of a run in ``cfg.out_dir`` that finished all ``cfg.epochs``
    with a checkpoint of that epoch, or None (the run is then continued).  A run trained in
    another number of processes (another global batch) is refused, not mixed in."""
    run_dir = Path(cfg.out_dir)
    path = run_dir / "summary.json"
    try:
        summary = _read_summary(run_dir)
    except FileNotFoundError:
        return None
    if (
        not isinstance(summary, dict)
        or summary.get("status") != "finished"
        or summary.get("epochs") != cfg.epochs
    ):
        return None
    _check_summary_numbers(summary, path, run_dir)
    try:
        ckpt = load_checkpoint(run_dir / CHECKPOINT, required=("epoch",))
    except (OSError, ValueError):
        return None  # the resume names what is wrong with it
    if ckpt["epoch"] != cfg.epochs:
        return None
    world = ckpt.get("world_size", 1)
    if world != nproc:
        raise UserError(
            f"{run_dir} was trained in {world} process(es) (global batch "
            f"{cfg.batch_size * world}), this command asks for {nproc} (global batch "
            f"{cfg.batch_size * nproc}); give the same --nproc or a new --out-dir"
        )
    return summary


def _check_summary_numbers(summary: dict, path: Path, run_dir: Path) -> None:
    """Accuracies in [0, 1] and losses and seconds numbers (or absent)."""
    for key in ("final_test_acc", "best_test_acc"):
        v = summary.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
            raise UserError(f"{path}: {key} = {v!r} is not an accuracy; delete {run_dir} to train it again")
    for key in ("final_test_loss", "train_loss", "seconds"):
        v = summary.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise UserError(f"{path}: {key} = {v!r} is not a number; delete {run_dir} to train it again")


# -- the table --------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample std of the final and best test accuracy (in %) over finished runs."""
    done = [r for r in runs if r["status"] == "finished"]
    out = {"runs_finished": len(done), "runs": len(runs)}
    for key in ("final_test_acc", "best_test_acc", "train_loss", "final_test_loss", "seconds"):
        vals = [r[key] for r in done if r.get(key) is not None]
        scale = 100.0 if key.endswith("acc") else 1.0
        mean, std = _mean_std([scale * v for v in vals])
        out[key] = {"mean": mean, "std": std} if vals else None
    return out


def markdown_table(results: dict[str, list[dict]]) -> str:
    """One row per method: test accuracy, best test accuracy and train loss as mean ± std."""
    rows = [
        "| method | test accuracy (%) | best test accuracy (%) | train loss | seconds / run |",
        "|---|---|---|---|---|",
    ]
    for method, runs in results.items():
        agg = aggregate(runs)

        def cell(key, digits=2, agg=agg):
            v = agg[key]
            return "—" if v is None else f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"

        note = (
            ""
            if agg["runs_finished"] == agg["runs"]
            else f" ({agg['runs'] - agg['runs_finished']}/{agg['runs']} diverged)"
        )
        rows.append(
            f"| {method}{note} | {cell('final_test_acc')} | {cell('best_test_acc')} | "
            f"{cell('train_loss', 4)} | {agg['seconds']['mean']:.2f} |"
            if agg["seconds"]
            else f"| {method}{note} | — | — | — | — |"
        )
    return "\n".join(rows)


def _read_summary(run_dir: Path) -> dict:
    """A run's summary.json; damaged, one clear error naming it (FileNotFoundError if absent)."""
    path = run_dir / "summary.json"
    return read_json(
        path, lambda exc: UserError(f"{path} is not valid JSON ({exc}); delete {run_dir} to train it again")
    )
