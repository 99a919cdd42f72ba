"""``ssdfa plot``: PNG figures from run and sweep directories."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser(
        "plot",
        help="training curves, alignment angles, sweep results, cost bars and filters as PNGs",
        description=("Write PNGs (matplotlib, Agg) for the given run directories (config.json, "
                     "metrics.json, summary.json, checkpoint.pt) and sweep directories "
                     "(sweep.json): training curves per method, angle per layer over training, "
                     "accuracy and angle vs rank and sparsity, the cost bars of the SSDFA paper's "
                     "Fig. 8, and the first conv layer's filters (Fig. 7)."),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or sweep directories")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/plots of the first)")
    p.add_argument("--no-cost", action="store_true", help="skip the Fig. 8 cost bars")
    p.set_defaults(func=run)


def check_dirs(paths):
    """Every path a run or sweep directory, or a UserError naming what is missing."""
    from pathlib import Path

    from ..cli import UserError

    for p in paths:
        d = Path(p)
        if not d.is_dir():
            raise UserError(f"{p} is not a directory; give run directories written by `ssdfa train` "
                            "or sweep directories written by `ssdfa sweep`")
        if not any((d / f).exists() for f in ("metrics.json", "metrics.csv", "sweep.json")):
            raise UserError(f"{p} has no metrics.json, metrics.csv or sweep.json: not a run or "
                            "sweep directory")


def run(args) -> int:
    from pathlib import Path

    from ..plots import plot_runs

    check_dirs(args.runs)
    out = Path(args.out) if args.out else Path(args.runs[0]) / "plots"
    for f in plot_runs(args.runs, out, costs=not args.no_cost):
        print(f)
    return 0
