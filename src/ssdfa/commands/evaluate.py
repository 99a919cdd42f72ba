"""``ssdfa evaluate RUN_DIR``: test accuracy and loss of a run's last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import CHECKPOINT, load_checkpoint
from ..cli import UserError
from ..data import load_dataset, set_normalization
from ..training import (build_model, check_checkpoint_config, evaluate, load_state, make_loss,
                        pick_device, read_run_config, resolve)


def register(sub):
    p = sub.add_parser("evaluate", help="evaluate a run's checkpoint on its test set",
                       description="Evaluate the last checkpoint of a run on its dataset's test "
                                   "split. Example: ssdfa evaluate runs/my-run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data-dir", default=None, help="where to look for the dataset first")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / CHECKPOINT).is_file():
        raise UserError(f"{run_dir} is not a run directory (expected config.json and "
                        f"{CHECKPOINT}, written by `ssdfa train`)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = pick_device(args.device)
    cfg = read_run_config(run_dir)
    if cfg.model and cfg.model.startswith("custom:"):
        raise UserError(f"{run_dir} trained a custom model; evaluate it from Python")
    if args.data_dir:
        cfg.data_dir = args.data_dir
    ckpt = load_checkpoint(run_dir / CHECKPOINT, map_location=device,
                           required=("epoch", "model", "config"))
    data = load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size)
    set_normalization(data, cfg.normalization)  # the inputs the run was trained on
    cfg = resolve(cfg, data)
    check_checkpoint_config(ckpt["config"], cfg, run_dir / CHECKPOINT)
    model = build_model(cfg, data).to(device)
    load_state(model, ckpt["model"], "model", run_dir / CHECKPOINT)
    with torch.no_grad():
        loss, acc = evaluate(model, data.test, make_loss(cfg, data), args.batch_size, device,
                             data.task == "classification")
    result = {"run_dir": str(run_dir), "epoch": int(ckpt["epoch"]), "dataset": data.name,
              "model": cfg.model, "method": cfg.method, "test_loss": loss, "test_acc": acc,
              "test_examples": len(data.test)}
    if args.json:
        print(json.dumps(result))
    else:
        acc_txt = f"test accuracy {100 * acc:.2f}%, " if acc is not None else ""
        print(f"{run_dir} (epoch {result['epoch']}, {cfg.method} on {data.name}, {cfg.model}): "
              f"{acc_txt}test loss {loss:.4f} over {len(data.test)} examples")
    return 0
