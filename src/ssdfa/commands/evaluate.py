"""``ssdfa evaluate RUN_DIR``: test accuracy and loss of a run's last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import CHECKPOINT, load_checkpoint
from ..cli import UserError
from ..data import DatasetError, load_dataset
from ..training import TrainConfig, build_model, evaluate, make_loss, pick_device


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
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    if cfg.model and cfg.model.startswith("custom:"):
        raise UserError(f"{run_dir} trained a custom model; evaluate it from Python")
    if args.data_dir:
        cfg.data_dir = args.data_dir
    device = pick_device(args.device)
    try:
        data = load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size)
    except DatasetError as exc:
        raise UserError(str(exc)) from exc
    model = build_model(cfg, data).to(device)
    ckpt = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    model.load_state_dict(ckpt["model"])
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
