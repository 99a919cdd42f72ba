"""``ssdfa evaluate RUN_DIR``: test accuracy and loss of a run's last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import CHECKPOINT, load_checkpoint
from ..data import load_dataset, set_normalization
from ..errors import UserError
from ..robustness import adversarial_accuracy
from ..training import (
    build_model,
    check_checkpoint_config,
    check_model_state,
    evaluate,
    load_state,
    make_loss,
    pick_device,
    read_run_config,
    resolve,
)


def register(sub):
    p = sub.add_parser(
        "evaluate",
        help="evaluate a run's checkpoint on its test set",
        description="Evaluate the last checkpoint of a run on its dataset's test "
        "split, optionally under an adversarial attack whose gradient "
        "is exact BP through the trained weights. Examples: ssdfa "
        "evaluate runs/my-run; ssdfa evaluate runs/my-run --attack pgd "
        "--epsilon 0.1 --steps 10",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data-dir", default=None, help="where to look for the dataset first")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--attack",
        choices=("fgsm", "pgd"),
        default=None,
        help="also report accuracy under this L-inf attack (FGSM or PGD)",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="the attack's L-inf radius, in the units of the network's input",
    )
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10; step 2.5*eps/steps)")
    p.set_defaults(func=run)


def run(args) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / CHECKPOINT).is_file():
        raise UserError(
            f"{run_dir} is not a run directory (expected config.json and "
            f"{CHECKPOINT}, written by `ssdfa train`)"
        )
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.attack is None and args.epsilon is not None:
        raise UserError("--epsilon needs --attack fgsm or --attack pgd")
    if args.attack is not None:
        if args.epsilon is None or not args.epsilon >= 0 or args.epsilon == float("inf"):
            raise UserError(f"--attack {args.attack} needs --epsilon E, a finite number >= 0")
        if args.steps < 1:
            raise UserError(f"--steps must be >= 1, got {args.steps}")
    device = pick_device(args.device)
    cfg = read_run_config(run_dir)
    if cfg.model and cfg.model.startswith("custom:"):
        raise UserError(f"{run_dir} trained a custom model; evaluate it from Python")
    if args.data_dir:
        cfg.data_dir = args.data_dir
    ckpt = load_checkpoint(run_dir / CHECKPOINT, map_location=device, required=("epoch", "model", "config"))
    data = load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size)
    set_normalization(data, cfg.normalization)  # the inputs the run was trained on
    cfg = resolve(cfg, data, check_init_from=False)  # the checkpoint holds the init_from weights
    check_checkpoint_config(ckpt["config"], cfg, run_dir / CHECKPOINT)
    classes = ckpt.get("num_classes")
    if classes is not None and classes != data.num_classes:
        raise UserError(
            f"{run_dir} was trained on {classes} classes, {data.name} now has "
            f"{data.num_classes}; evaluate it on the data it was trained on"
        )
    model = build_model(cfg, data, pretrained=False).to(device)
    load_state(model, ckpt["model"], "model", run_dir / CHECKPOINT)
    check_model_state(model, run_dir / CHECKPOINT)
    with torch.no_grad():
        loss, acc = evaluate(
            model, data.test, make_loss(cfg, data), args.batch_size, device, data.task == "classification"
        )
    result = {
        "run_dir": str(run_dir),
        "epoch": int(ckpt["epoch"]),
        "dataset": data.name,
        "model": cfg.model,
        "method": cfg.method,
        "test_loss": loss,
        "test_acc": acc,
        "test_examples": len(data.test),
    }
    if args.attack is not None:
        if data.task != "classification":
            raise UserError(f"--attack measures accuracy; {data.name} is a {data.task} task")
        rob = adversarial_accuracy(
            model,
            data.test,
            args.attack,
            args.epsilon,
            steps=args.steps,
            batch_size=args.batch_size,
            device=device,
            loss_fn=make_loss(cfg, data),
        )
        result.update(
            {
                "attack": args.attack,
                "epsilon": args.epsilon,
                "steps": args.steps if args.attack == "pgd" else 1,
                "clean_acc": rob["clean_acc"],
                "adv_acc": rob["adv_acc"],
                "input_range": rob["input_range"],
            }
        )
    if args.json:
        print(json.dumps(result))
    else:
        acc_txt = f"test accuracy {100 * acc:.2f}%, " if acc is not None else ""
        print(
            f"{run_dir} (epoch {result['epoch']}, {cfg.method} on {data.name}, {cfg.model}): "
            f"{acc_txt}test loss {loss:.4f} over {len(data.test)} examples"
        )
        if args.attack is not None:
            steps = f", {args.steps} steps" if args.attack == "pgd" else ""
            print(
                f"  {args.attack} (epsilon {args.epsilon:g}{steps}, exact BP on the trained "
                f"weights): clean accuracy {100 * result['clean_acc']:.2f}%, adversarial "
                f"accuracy {100 * result['adv_acc']:.2f}%"
            )
    return 0
