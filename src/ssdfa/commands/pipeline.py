"""``ssdfa pipeline``: train a network split into K stages, one process each; bytes and waits.

Each method trains for ``--steps`` steps over ``--stages`` processes (gloo on 127.0.0.1) with
GPipe micro-batches (see :mod:`ssdfa.pipeline`), then the same training runs in one process
(``ssdfa.convert(net, method, seed)``, SGD, the same batches) and the weights, B_l and the loss
of every step are compared.
"""

from __future__ import annotations

import json
import math

from ..data import DatasetError, load_dataset
from ..errors import PipelineError, UserError
from ..pipeline import PIPELINE_METHODS, PipelineConfig, compare, train_one_process, train_pipelines
from ..training import _F32_MAX, _SEED_MAX, MAX_THREADS


def register(sub):
    p = sub.add_parser(
        "pipeline",
        help="model parallel: K stages, one process each; bp against the direct rules",
        description="Split the model into K stages at its weight layers, one process each, and "
        "train each method; report bytes sent per step (checked against the "
        "formula), seconds per step, each stage's wait in recv, test accuracy and "
        "whether the weights (and the B_l, which dkp learns) and every step's loss match "
        "one-process training. Example: ssdfa pipeline "
        "--stages 2 --methods bp,dfa,drtp --dataset digits --steps 20",
    )
    p.add_argument("--stages", type=int, default=2, help="number of stages/processes (default 2)")
    p.add_argument(
        "--methods",
        default="bp,dfa,drtp",
        help=f"comma-separated, from {','.join(PIPELINE_METHODS)} (default bp,dfa,drtp)",
    )
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default=None, help="an FC or CNN nn.Sequential (ssdfa info)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--micro-batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument(
        "--feedback-lr",
        type=float,
        default=None,
        help="dkp: learning rate of the learned B_l (default: --lr, as ssdfa train)",
    )
    p.add_argument(
        "--feedback-weight-decay",
        type=float,
        default=0.0,
        help="dkp: SGD weight decay of the learned B_l (default 0, as ssdfa train)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="largest weight (and loss) difference from one-process training that still matches",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per method")
    p.set_defaults(func=run)


def check_options(args) -> None:
    """Every option checked before a stage starts, with the limits ``ssdfa train`` uses."""
    if not (math.isfinite(args.lr) and 0 < args.lr <= _F32_MAX):
        raise UserError(f"--lr must be a number in (0, 3.4e38], got {args.lr}")
    if args.threads > MAX_THREADS:
        raise UserError(f"--threads must be in [1, {MAX_THREADS}], got {args.threads}")
    if not 0 <= args.seed <= _SEED_MAX:
        raise UserError(f"--seed must be an integer in [0, 2**63 - 1], got {args.seed}")
    try:
        data = load_dataset(args.dataset)
    except DatasetError as exc:
        raise UserError(str(exc)) from exc
    if data.task != "classification":
        raise UserError(
            f"--dataset {data.name} is a {data.task} task; the pipeline trains "
            "classifiers (cross entropy): choose a classification dataset"
        )


def run(args) -> int:
    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    bad = [m for m in methods if m not in PIPELINE_METHODS]
    if not methods or bad:
        raise UserError(f"--methods {args.methods!r}: choose from {', '.join(PIPELINE_METHODS)}")
    for name in ("stages", "steps", "micro_batches", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.tolerance >= 0:
        raise UserError(f"--tolerance must be >= 0, got {args.tolerance}")
    for name in ("feedback_lr", "feedback_weight_decay"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < float("inf"):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    check_options(args)
    cfgs = [
        PipelineConfig(
            dataset=args.dataset,
            model=args.model,
            stages=args.stages,
            method=method,
            steps=args.steps,
            micro_batches=args.micro_batches,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            threads=args.threads,
            feedback_lr=args.feedback_lr,
            feedback_weight_decay=args.feedback_weight_decay,
        )
        for method in methods
    ]
    try:  # every method checked, then trained in one set of processes (they start once)
        runs = train_pipelines(cfgs)
    except (PipelineError, KeyError) as exc:
        raise UserError(str(exc).strip("'\"")) from exc
    reports = []
    for cfg, done in zip(cfgs, runs):
        report = {**done.report, **compare(done, train_one_process(cfg), args.tolerance)}
        reports.append(report)
        if args.json:
            print(json.dumps(report), flush=True)
    if not args.json:
        print(
            f"{reports[0]['model']} on {reports[0]['dataset']}, {args.stages} stages, "
            f"batch {args.batch_size} in {args.micro_batches} micro-batches, {args.steps} steps"
        )
        print(
            "| method | bytes/step | formula | s/step | recv wait per stage (s) | test acc "
            "| max abs Δ(W, B) vs 1 process |"
        )
        print("|---|---:|---:|---:|---|---:|---:|")
        for r in reports:
            waits = ", ".join(f"{w:.3f}" for w in r["recv_wait_seconds"])
            print(
                f"| {r['method']} | {r['bytes_per_step']} | {r['expected_bytes_per_step']} | "
                f"{r['seconds_per_step']:.4f} | {waits} | {r['test_accuracy']:.4f} | "
                f"{r['max_weight_difference']:.2e} |"
            )
    return 0
