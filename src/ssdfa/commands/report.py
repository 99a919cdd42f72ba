"""``ssdfa report``: one markdown page with the tables and figures of some runs."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser(
        "report",
        help="one markdown page embedding the plots, with summary, angle, sweep and cost tables",
        description="Write a markdown report (and its PNGs) for run and sweep directories.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or sweep directories")
    p.add_argument("--out", default=None,
                   help="markdown file (default: RUN_DIR/report.md of the first); figures go to "
                        "<name>_figures/ beside it")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..report import write_report
    from .plot import check_dirs

    check_dirs(args.runs)
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report.md"
    print(write_report(args.runs, out))
    return 0
