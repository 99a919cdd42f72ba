"""``ssdfa train``: train one model with one rule; ``--resume RUN_DIR`` continues a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli import UserError
from ..training import Diverged, TrainConfig, default_out_dir
from ._options import add_training_options, config_from_args, logger, show_progress, train_or_explain

# flags that may change when a run is resumed; anything else would make it a different run
RESUME_MAY_CHANGE = ("epochs", "device", "data_dir")


def register(sub):
    p = sub.add_parser(
        "train", help="train a model with a learning rule",
        description="Train a model with a learning rule, writing metrics and checkpoints to a "
                    "run directory. Example: ssdfa train --method ssdfa --dataset fashion-mnist "
                    "--model mnist-fc --epochs 10")
    add_training_options(p)
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="train into an --out-dir that already holds a run, replacing it")
    p.set_defaults(func=run)


def run(args) -> int:
    log = logger(args)
    if args.resume:
        cfg = _resume_config(args)
        resume = True
    else:
        cfg, _ = config_from_args(args)
        resume = False
        if cfg.out_dir is None:
            cfg.out_dir = default_out_dir(cfg)
        if (Path(cfg.out_dir) / "checkpoint.pt").exists() and not args.overwrite:
            raise UserError(f"{cfg.out_dir} already holds a run; continue it with --resume "
                            f"{cfg.out_dir}, pick another --out-dir, or pass --overwrite")
    try:
        summary = train_or_explain(cfg, resume=resume, progress=show_progress(args), log=log)
    except KeyboardInterrupt:
        print(f"ssdfa train: interrupted; the last finished epoch is saved — continue with "
              f"`ssdfa train --resume {cfg.out_dir}`", file=sys.stderr)
        return 130
    except Diverged as exc:
        print(f"ssdfa train: {exc}", file=sys.stderr)
        if args.json:
            out = Path(cfg.out_dir) / "summary.json"
            if out.exists():
                print(json.dumps(json.loads(out.read_text())))
        return 3
    if args.json:
        print(json.dumps(summary))
    else:
        print(_describe(summary))
    return 0


def _resume_config(args) -> TrainConfig:
    run_dir = Path(args.resume)
    cfg_file = run_dir / "config.json"
    if not (run_dir / "checkpoint.pt").is_file() or not cfg_file.is_file():
        raise UserError(f"{run_dir} is not a run directory with a checkpoint (expected "
                        "config.json and checkpoint.pt there)")
    saved = json.loads(cfg_file.read_text())
    given, _ = config_from_args(args)
    defaults = TrainConfig()
    changed = [k for k in TrainConfig.field_names() if k in vars(args)]
    if args.config:
        changed += [k for k in TrainConfig.field_names()
                    if getattr(given, k) != getattr(defaults, k) and k not in changed]
    refused = sorted(set(changed) - set(RESUME_MAY_CHANGE))
    if refused:
        raise UserError(f"cannot change {', '.join(refused)} when resuming (only "
                        f"{', '.join(RESUME_MAY_CHANGE)} may change); start a new run instead")
    for key in changed:
        saved[key] = getattr(given, key)
    saved["out_dir"] = str(run_dir)
    return TrainConfig.from_dict(saved, where=str(cfg_file))


def _describe(s: dict) -> str:
    if s["final_test_acc"] is None:
        return (f"{s['method']} on {s['dataset']} ({s['model']}): final test loss "
                f"{s['final_test_loss']:.4f} after {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, {s['seconds']:.1f} s; "
                f"run in {s['out_dir']}")
    return (f"{s['method']} on {s['dataset']} ({s['model']}): final test accuracy "
            f"{100 * s['final_test_acc']:.2f}% (best {100 * s['best_test_acc']:.2f}% at epoch "
            f"{s['best_epoch']}) after {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, {s['seconds']:.1f} s; run in {s['out_dir']}")
