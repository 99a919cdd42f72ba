"""``ssdfa sweep``: accuracy and angle over a rank × sparsity grid (SSDFA paper, Figs. 5-6)."""

from __future__ import annotations

import sys
from dataclasses import replace

from ..campaign import check_methods
from ..data import dataset_shape
from ..errors import ConfigError, UserError
from ..rules import RULES
from ..rundir import refuse_foreign
from ..sweep import cell_problem, run_sweep
from ..training import TrainConfig, pick_device, resolve


def _ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text):
    return [float(v) for v in text.split(",") if v.strip()]


def _pct(v):
    """Accuracy in percent, whether the summary holds a fraction (test_acc <= 1) or percent."""
    return float("nan") if v is None else (100 * v if v <= 1 else v)


def register(subparsers):
    p = subparsers.add_parser(
        "sweep",
        help="train over a rank × sparsity grid with several seeds (Figs. 5-6), resumable",
        description=(
            "Train one run per (rank, sparsity, seed), skipping cells with rank·connectivity < 1 "
            "(some error would never be fed back), and write sweep.csv and sweep.json (mean ± std "
            "over seeds) to --out-dir. Completed cells are not re-run. Plot with `ssdfa plot OUT_DIR`."
        ),
    )
    p.add_argument("--rank", default="1,2,5,10", help="comma-separated ranks (default 1,2,5,10)")
    p.add_argument("--sparsity", default="0,0.5,0.9", help="comma-separated sparsities in [0, 1)")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per cell (default 10)")
    p.add_argument("--method", default="sdfa", help="rule taking rank and sparsity (default sdfa)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--model", default=None, help="model name (training default when omitted)")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes M (needed only for a dataset the sweep does not know)",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", default=None)
    p.add_argument(
        "--alignment",
        type=int,
        default=1,
        help="log alignment angles every k epochs (default 1; 0 = no angles)",
    )
    p.add_argument("--limit-train", type=int, default=None, help="cap on training examples")
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--out-dir",
        "--out",
        dest="out",
        default="runs/sweep",
        metavar="OUT_DIR",
        help="sweep directory (default runs/sweep); --out is its old name, still accepted",
    )
    p.set_defaults(func=run)


def _num_classes(args):
    if args.num_classes is not None:
        return args.num_classes
    known = dataset_shape(args.dataset)
    if known is not None:
        return known[1]
    raise UserError(f"the sweep does not know how many classes {args.dataset!r} has; give --num-classes")


def run(args) -> int:
    try:
        ranks, sparsities = _ints(args.rank), _floats(args.sparsity)
    except ValueError as exc:
        raise UserError(f"--rank takes integers and --sparsity numbers, comma-separated ({exc})") from exc
    if not ranks or not sparsities or args.seeds < 1:
        raise UserError("need at least one rank, one sparsity and --seeds >= 1")
    method = args.method.strip().lower().replace("-", "_")
    takes = [m for m, rule in sorted(RULES.items()) if {"rank", "sparsity"} <= set(rule.options)]
    if method not in takes:
        raise UserError(
            f"method {args.method!r} does not take rank and sparsity; sweep one of: {', '.join(takes)}"
        )
    base = {"method": method, "dataset": args.dataset, "alignment": args.alignment}
    for key in ("model", "epochs", "batch_size", "lr", "optimizer", "limit_train", "device", "data_dir"):
        val = getattr(args, key)
        if val is not None:
            base[key] = val
    classes = _num_classes(args)
    check_cells(base, ranks, sparsities, range(args.seeds), classes)  # before --out-dir is made
    refuse_foreign(args.out, ("sweep", "train"), "--out-dir", inside=False)  # not a compare's
    try:
        res = run_sweep(args.out, base, ranks, sparsities, range(args.seeds), classes)
    except ImportError as exc:
        raise UserError(f"the training API is not available ({exc}); install the full ssdfa") from exc
    print(f"{'rank':>5} {'sparsity':>9} {'n':>3} {'test acc':>16} {'angle (Eq. 14)':>18}")
    for c in res["cells"]:
        note = f"  ({c['diverged']} diverged)" if c.get("diverged") else ""
        print(
            f"{c['rank']:>5} {c['sparsity']:>9g} {c['n']:>3} "
            f"{_pct(c['test_acc_mean']):>8.2f} ± {_pct(c['test_acc_std']):<5.2f} "
            f"{c['angle_eq14_mean']:>9.1f} ± {c['angle_eq14_std']:<5.1f}{note}"
        )
    for s in res["skipped"]:
        print(f"skipped rank={s['rank']} sparsity={s['sparsity']:g}: {s['reason']}")
    print(f"wrote {args.out}/sweep.csv and {args.out}/sweep.json")
    if res["diverged"]:
        print(
            f"ssdfa sweep: {len(res['diverged'])} run(s) diverged and are not in the means "
            f"(first: {res['diverged'][0]['run_dir']}); lower --lr, or delete those cells to "
            "retrain them",
            file=sys.stderr,
        )
        return 3
    return 0


def check_cells(base: dict, ranks, sparsities, seeds, num_classes: int) -> None:
    """Every option of every cell the sweep would train, checked at once before anything is
    created: the training settings (resolve), each rule's rank and sparsity, the seeds."""
    try:
        cfg = TrainConfig(**base)
        resolve(
            replace(cfg, seed=seeds[-1])
        )  # a range: its last seed is the largest  # epochs, lr, optimizer, batch size, seeds...
        pick_device(cfg.device)
    except (ConfigError, TypeError) as exc:
        raise UserError(str(exc)) from exc
    for r in ranks:
        for s in sparsities:
            if cell_problem(int(r), float(s), num_classes) is None:
                check_methods(replace(cfg, rank=int(r), sparsity=float(s)), [cfg.method])
