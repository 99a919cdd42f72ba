"""``ssdfa compare``: train several methods over several seeds; a table of mean ± std.

The table has the form of the papers' tables (e.g. SSDFA Table III): one row per method, test
accuracy as mean ± sample standard deviation over the seeds.  It is printed and written to
``results.md`` (and ``results.json``) in the run directory; each run keeps its own folder
``<out>/<method>/seed<k>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..errors import UserError
from ..convert import check_feedback_scale
from ..data import DatasetError
from ..data import canonical_name as canonical_dataset
from ..models import default_model
from ..rules import make_rule
from ..rundir import locked, refuse_foreign, write_text_atomic
from ..training import (ConfigError, Diverged, pick_device, read_run_config, resolve, rule_options,
                        settings_differ)
from ._options import (add_training_options, check_nproc, config_from_args, logger, show_progress,
                       train_or_explain)


def register(sub):
    p = sub.add_parser(
        "compare", help="train several methods over several seeds and tabulate test accuracy",
        description="Train each method over several seeds and print a markdown table of test "
                    "accuracy (mean ± std). Example: ssdfa compare --methods bp,dfa,ssdfa "
                    "--seeds 3 --dataset digits --epochs 20")
    p.add_argument("--methods", default=None, help="comma-separated rules, default bp,dfa,ssdfa")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds per method, default 3")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="first seed (default 0)")
    add_training_options(p, method=False)
    p.set_defaults(func=run)


def _methods(value) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise UserError(f"methods = {value!r} should be a comma-separated string or a list of "
                        "names, e.g. \"bp,dfa,ssdfa\"")
    methods = [m.strip() for m in value if m.strip()]
    if not methods:
        raise UserError("--methods needs at least one method, e.g. bp,dfa,ssdfa")
    seen: dict[str, str] = {}
    for m in methods:  # BP and bp are one rule: trained twice it would be two rows of one
        key = m.lower().replace("-", "_")
        if key in seen:
            raise UserError(f"--methods names one rule twice ({seen[key]} and {m}); give each "
                            "method once")
        seen[key] = m
    return methods


def run(args) -> int:
    nproc = check_nproc(args)
    base, extras = config_from_args(args, extra_keys=("methods", "seeds"))
    methods = _methods(extras["methods"] if extras.get("methods") is not None else "bp,dfa,ssdfa")
    seeds = extras["seeds"] if extras.get("seeds") is not None else 3
    first = base.seed
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UserError(f"--seeds must be a positive number of seeds, got {seeds!r}")
    if isinstance(first, int) and first + seeds - 1 > 2**63 - 1:
        raise UserError(f"seeds {first}..{first + seeds - 1} go past 2**63 - 1; give a smaller --seed")
    try:
        base.dataset = canonical_dataset(base.dataset)
    except DatasetError as exc:
        raise UserError(str(exc)) from exc
    check_methods(base, methods)
    pick_device(base.device)
    if base.out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model = base.model or default_model(base.dataset, ())
        base.out_dir = str(Path("runs") / f"{stamp}-compare-{base.dataset}-{model}")
    log = logger(args)
    with locked(base.out_dir) as out:  # one compare per directory
        refuse_foreign(out, ("table", "train"), inside=False)  # not into a sweep's directory
        return _compare(args, base, methods, seeds, first, out, log, nproc)


def check_methods(base, methods: list[str]) -> None:
    """Reject a bad method name or rule option before any training starts."""
    for m in methods:
        try:
            cfg = resolve(replace(base, method=m))
            opts = {k: v for k, v in rule_options(cfg).items()
                    if k not in ("train_only", "feedback_scale")}  # convert's, not the rule's
            check_feedback_scale(cfg.feedback_scale, make_rule(cfg.method, **opts))
        except (ValueError, KeyError) as exc:
            raise UserError(f"{m}: {exc}") from exc


def train_all(base, methods: list[str], seeds: int, first: int, out: Path, log,
              progress: bool = False, nproc: int = 1, *, retrain_changed_init: bool = False
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
        for k in range(seeds):
            seed = first + k
            cfg = replace(base, method=method, seed=seed, out_dir=str(out / method / f"seed{seed}"))
            resume = _earlier_run(cfg)
            if resume and _init_changed(cfg):
                if not retrain_changed_init:
                    raise UserError(f"{cfg.out_dir} started from other weights of init_from "
                                    f"{cfg.init_from} than it holds now; give a new --out-dir")
                log(f"== {method}, seed {seed}: its init_from run changed; training it again "
                    "from the start ==")
                resume = False
            done = _finished_summary(cfg, nproc) if resume else None
            if done is not None:  # a finished run is read back: its files are never rewritten
                log(f"== {method}, seed {seed}: finished already, read from {cfg.out_dir} ==")
                results[method].append(done)
                continue
            log(f"== {method}, seed {seed}{' (continuing the run already there)' if resume else ''} ==")
            try:
                summary = train_or_explain(cfg, nproc=nproc, resume=resume, progress=progress,
                                           log=log)
            except Diverged as exc:
                log(f"{method} seed {seed}: {exc}")
                summary = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
            except KeyboardInterrupt:
                log(f"interrupted during {method} seed {seed}; run the same command again to "
                    "continue: finished runs are kept")
                raise
            results[method].append(summary)
    return results, time.perf_counter() - t0


def _compare(args, base, methods, seeds, first, out: Path, log, nproc: int = 1) -> int:
    results, seconds = train_all(base, methods, seeds, first, out, log, show_progress(args), nproc)
    first_run = next(iter(results.values()))[0]
    title = (f"{first_run['dataset']}, {first_run['model']}, {base.epochs} epochs, "
             f"{seeds} seed(s) from {first}")
    table = markdown_table(results)
    write_text_atomic(out / "results.md", f"# ssdfa compare: {title}\n\n{table}\n")
    payload = {"title": title, "seconds": round(seconds, 2), "config": asdict(base),
               "methods": {m: aggregate(rs) | {"runs": rs} for m, rs in results.items()}}
    write_text_atomic(out / "results.json", json.dumps(payload, indent=1))
    if args.json:
        print(json.dumps({"seconds": payload["seconds"], "out_dir": str(out),
                          "methods": {m: aggregate(rs) for m, rs in results.items()}}))
    else:
        print(f"\n{title} — {seconds:.0f} s\n\n{table}\n\nwritten to {out / 'results.md'}")
    diverged = any(r["status"] != "finished" for rs in results.values() for r in rs)
    return 3 if diverged else 0


def _earlier_run(cfg) -> bool:
    """True when ``cfg.out_dir`` holds a run of this very config: it is continued, not redone.

    So an interrupted ``ssdfa compare`` given the same ``--out-dir`` picks up where it stopped,
    and adding seeds trains only the new ones.  A run of another config there is an error.
    """
    run_dir = Path(cfg.out_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        return False
    try:
        saved = asdict(read_run_config(run_dir))
    except FileNotFoundError:
        raise UserError(f"{run_dir} holds a checkpoint without config.json; delete {run_dir} "
                        "to train it again") from None
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    differ = settings_differ(saved, cfg)
    if differ:
        raise UserError(f"{run_dir} holds a run with other settings ({', '.join(differ)}); "
                        "give a new --out-dir")
    return True


def _init_changed(cfg) -> bool:
    """Whether the run in ``cfg.out_dir`` started from other ``init_from`` weights than
    ``cfg.init_from`` gives now (False when it cannot tell: no init_from, source gone)."""
    if cfg.init_from is None:
        return False
    from ..checkpoint import CHECKPOINT, load_checkpoint
    from ..data import load_dataset
    from ..training import init_from_digest

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
    from ..checkpoint import CHECKPOINT, load_checkpoint

    run_dir = Path(cfg.out_dir)
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); delete {run_dir} to train it again") from None
    if not isinstance(summary, dict) or summary.get("status") != "finished" \
            or summary.get("epochs") != cfg.epochs:
        return None
    for key in ("final_test_acc", "best_test_acc"):
        v = summary.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not 0 <= v <= 1):
            raise UserError(f"{path}: {key} = {v!r} is not an accuracy; delete {run_dir} to "
                            "train it again")
    for key in ("final_test_loss", "train_loss", "seconds"):
        v = summary.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise UserError(f"{path}: {key} = {v!r} is not a number; delete {run_dir} to train "
                            "it again")
    try:
        ckpt = load_checkpoint(run_dir / CHECKPOINT, required=("epoch",))
    except (OSError, ValueError):
        return None  # the resume names what is wrong with it
    if ckpt["epoch"] != cfg.epochs:
        return None
    world = ckpt.get("world_size", 1)
    if world != nproc:
        raise UserError(f"{run_dir} was trained in {world} process(es) (global batch "
                        f"{cfg.batch_size * world}), this command asks for {nproc} (global batch "
                        f"{cfg.batch_size * nproc}); give the same --nproc or a new --out-dir")
    return summary


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
    rows = ["| method | test accuracy (%) | best test accuracy (%) | train loss | seconds / run |",
            "|---|---|---|---|---|"]
    for method, runs in results.items():
        agg = aggregate(runs)

        def cell(key, digits=2):
            v = agg[key]
            return "—" if v is None else f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"

        note = "" if agg["runs_finished"] == agg["runs"] else \
            f" ({agg['runs'] - agg['runs_finished']}/{agg['runs']} diverged)"
        rows.append(f"| {method}{note} | {cell('final_test_acc')} | {cell('best_test_acc')} | "
                    f"{cell('train_loss', 4)} | {agg['seconds']['mean']:.2f} |"
                    if agg["seconds"] else f"| {method}{note} | — | — | — | — |")
    return "\n".join(rows)


