"""``ssdfa cost``: MACs, memory traffic and data movement of one training example (Table I)."""

from __future__ import annotations

import json
import math
import sys

import torch

from ..cost import COST_RULES, count_costs, layer_shapes
from ..data import dataset_shape, dataset_shapes
from ..errors import UserError
from ..models import PAPER_NETWORKS, create_model, list_models, paper_network


def register(subparsers):
    p = subparsers.add_parser(
        "cost",
        help="per-layer MACs, reads, writes, data movement and feedback storage per method",
        description=(
            "Count the backward-pass cost of one training example for each method, per layer, "
            "following the SSDFA paper's Table I (docs/cost-model.md states every convention). "
            "Defaults follow the paper's Fig. 8: only FC layers train (--train fc) and BP's "
            "error at the first trained layer's input is counted (Table I's 2|W|)."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="model name (ssdfa.models registry, or one of "
        "the paper's networks as its cost figures count them: alexnet, cifar-cnn, "
        "cifar-fc, mnist-fc)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="sets input shape and classes from the dataset registry: mnist, cifar10, "
        "cifar100, imagenet, digits, ...",
    )
    p.add_argument("--input-shape", default=None, help="C,H,W (or F) without batch; overrides --dataset")
    p.add_argument("--num-classes", type=int, default=None, help="classes; overrides --dataset")
    p.add_argument("--methods", default="bp,dfa,ssdfa", help="comma-separated (default bp,dfa,ssdfa)")
    p.add_argument(
        "--train",
        choices=("fc", "all"),
        default="fc",
        help="fc: only Linear layers train, as in the paper's Fig. 8 and transfer "
        "learning (default); all: conv layers train too",
    )
    p.add_argument(
        "--no-input-error",
        action="store_true",
        help="do not count BP/FA's Wᵀ·δ at the first trained layer's input "
        "(nothing uses it; Table I counts it)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=None,
        help="errors per neuron S for sdfa (default: 10%% of the classes, at least 1)",
    )
    p.add_argument("--bits", type=int, default=32, help="bits per word for the byte totals (32)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="use the paper's network (ssdfa.models.paper_network) even if the model registry has the name",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object keyed by method")
    p.set_defaults(func=run)


def _resolve(args):
    shape, classes = None, None
    if args.dataset is not None:
        known = dataset_shape(args.dataset)
        if known is None:
            raise UserError(
                f"unknown dataset {args.dataset!r} for the cost model; choose one of "
                f"{', '.join(dataset_shapes())} or give --input-shape and --num-classes"
            )
        shape, classes = known
    if args.input_shape is not None:
        try:
            shape = tuple(int(s) for s in args.input_shape.split(","))
        except ValueError as exc:
            raise UserError(f"--input-shape must be integers like 3,32,32, got {args.input_shape!r}") from exc
    if args.num_classes is not None:
        classes = args.num_classes
    if shape is None or classes is None:
        raise UserError("give --dataset, or both --input-shape and --num-classes")
    if not 1 <= len(shape) <= 3 or any(d < 1 or d > MAX_DIM for d in shape) or math.prod(shape) > MAX_INPUT:
        raise UserError(
            f"--input-shape {','.join(map(str, shape))}: give 1 to 3 sizes (F, or "
            f"C,H,W), each in 1..{MAX_DIM}, at most {MAX_INPUT} numbers in all"
        )
    if not 1 <= classes <= MAX_DIM:
        raise UserError(f"--num-classes must be in 1..{MAX_DIM}, got {classes}")
    return shape, classes


MAX_DIM = 2**20  # one size of an input, and the number of classes
MAX_INPUT = 2**28  # numbers in one input example (a 3x9000x9000 image)


def _build(name, shape, classes, reference=False):
    """(model, where it came from): the registry's if it has the name, else the paper's net."""
    builders = []
    known = list(list_models())
    if name in known and not reference:
        builders.append(("ssdfa.models", lambda: create_model(name, shape, classes)))
    if name in PAPER_NETWORKS:
        builders.append(("the cost model's paper nets", lambda: paper_network(name, shape, classes)))
    if not builders:
        raise UserError(
            f"unknown model {name!r}; choose one of {', '.join(sorted(set(known) | set(PAPER_NETWORKS)))}"
        )
    where, build = builders[0]
    try:
        with torch.device("meta"):  # shapes only: no memory, no arithmetic
            return build(), where
    except (RuntimeError, NotImplementedError, TypeError):
        return build(), where


def run(args) -> int:
    methods = [m.strip().lower().replace("-", "_") for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in COST_RULES]
    if bad or not methods:
        raise UserError(
            f"no cost model for {', '.join(bad) or 'an empty --methods'}; choose from "
            f"{', '.join(sorted(COST_RULES))}"
        )
    if args.bits < 1:
        raise UserError(f"--bits must be a positive number of bits per word, got {args.bits}")
    shape, classes = _resolve(args)
    if args.reference and args.model not in PAPER_NETWORKS:
        raise UserError(
            f"--reference: the cost model has no {args.model!r}; it has {', '.join(PAPER_NETWORKS)}"
        )
    try:
        net, where = _build(args.model, shape, classes, args.reference)
    except (RuntimeError, ValueError) as exc:  # a net that cannot be built on this input
        raise UserError(
            f"model {args.model!r} cannot be built for input {shape} with {classes} "
            f"classes: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    try:
        layers = layer_shapes(net, shape)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"model {args.model!r} does not accept inputs of shape {shape}: {exc}") from exc
    conn = args.connections if args.connections is not None else max(1, round(0.1 * classes))
    try:
        res = count_costs(
            layers,
            methods,
            num_classes=classes,
            train=args.train,
            connections=conn,
            input_error=not args.no_input_error,
            bits=args.bits,
        )
    except (ValueError, KeyError) as exc:
        raise UserError(str(exc)) from exc
    if all(lay.kind == "linear" for lay in layers):
        scope = "all layers (no conv layer)"
    else:
        scope = "FC layers only (transfer, Fig. 8 scope)" if args.train == "fc" else "all layers"
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return 0
    print(
        f"{args.model} (from {where}) on input {shape} with {classes} classes; trained: "
        f"{scope}; "
        f"BP error at first layer input {'not ' if args.no_input_error else ''}counted; "
        f"one training example, backward pass; words of {args.bits} bits"
    )
    hdr = f"{'layer':>10} {'kind':>6} {'MACs':>14} {'reads':>14} {'writes':>14} {'movement':>14} {'feedback':>12}"
    for m in methods:
        print(f"\n[{m}]\n{hdr}")
        for r in res[m]["layers"]:
            tag = r["kind"] if r["trained"] else "frozen"
            print(
                f"{r['name']:>10} {tag:>6} {r['macs']:>14,} {r['reads']:>14,} {r['writes']:>14,} "
                f"{r['movement']:>14,} {r['feedback']:>12,}"
            )
        t = res[m]["totals"]
        print(
            f"{'total':>10} {'':>6} {t['macs']:>14,} {t['reads']:>14,} {t['writes']:>14,} "
            f"{t['movement']:>14,} {t['feedback']:>12,}   "
            f"({t['movement_bytes'] / 1e6:.3f} MB moved)"
        )
    if len(methods) > 1:
        print("\nratios (row / column), movement and MACs:")
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                ta, tb = res[a]["totals"], res[b]["totals"]
                mv = ta["movement"] / tb["movement"] if tb["movement"] else float("inf")
                mc = ta["macs"] / tb["macs"] if tb["macs"] else float("inf")
                print(f"  {a}/{b}: movement {mv:,.1f}x  MACs {mc:.3f}x")
    return 0
