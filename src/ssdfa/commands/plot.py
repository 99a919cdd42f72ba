"""``ssdfa plot``: figures from run, compare, reproduce and sweep directories."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..plots import nothing_to_draw, plot_runs
from ..rundata import RunFileError, read_inputs
from ..rundir import LOCK_NAME, RUN_FILES


def register(subparsers):
    p = subparsers.add_parser(
        "plot",
        help="figures: curves with seed bands, angles, paper vs ours, sweeps (PNG, SVG or PDF)",
        description=(
            "Write the figures the given directories call for: a run (config.json, "
            "metrics.json, summary.json, checkpoint.pt), a compare or reproduce "
            "directory (runs in <row>/seed<k>, results.json) or a sweep (sweep.json). "
            "Training curves per row as the mean over seeds with a ±1 std band, "
            "alignment angles per feedback point where logged, the paper's numbers "
            "beside ours for a reproduction, accuracy and angle against rank and "
            "sparsity for a sweep, the first conv layer's filters (Fig. 7); the cost "
            "bars of Fig. 8 with --cost. Example: ssdfa plot runs/compare --format svg"
        ),
    )
    p.add_argument("runs", nargs="+", metavar="DIR", help="run, compare, reproduce or sweep directories")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: DIR/plots of the first); it may not be inside "
        "a run directory other than the inputs",
    )
    p.add_argument(
        "--format",
        default="png",
        choices=("png", "svg", "pdf"),
        help="png (default), or svg/pdf for papers (text stays text)",
    )
    p.add_argument(
        "--cost",
        action="store_true",
        help="also draw the SSDFA paper's Fig. 8 cost bars (they do not depend on the runs)",
    )
    p.add_argument("--no-cost", action="store_true", help=argparse_suppress())
    p.set_defaults(func=run)


def argparse_suppress():
    return argparse.SUPPRESS  # the default now: kept so that old scripts keep working


def check_dirs(paths):
    """Every path an existing directory, or a UserError naming the one that is not."""
    for p in paths:
        if not str(p).strip():
            raise UserError(
                "an empty directory name ('') was given; name run, compare, reproduce or sweep directories"
            )
        d = Path(p)
        if not d.is_dir():
            raise UserError(
                f"{p} is not a directory; give run directories written by `ssdfa train`, "
                "compare or reproduce directories, or sweep directories"
            )


def _run_like(d: Path) -> bool:
    """Whether ``d`` holds files an ssdfa command owns (a run, compare, reproduce or sweep)."""
    return d.is_dir() and any((d / f).exists() for f in (*RUN_FILES, LOCK_NAME))


def owner_of(target: Path) -> Path | None:
    """The nearest run-like directory at or above ``target`` (which need not exist yet)."""
    t = Path(os.path.abspath(target))
    for p in [t, *t.parents]:
        if _run_like(p):
            return p
    return None


def check_writable_here(target: Path, inputs, what: str) -> None:
    """Refuse to write into a run directory that is neither an input nor holds one.

    ``ssdfa plot`` and ``report`` may write into (or under) the directories they read, never
    into another run's: ``ssdfa report R1 --out R2/report.md`` is refused.
    """

    owner = owner_of(target)
    if owner is None:
        return
    real = Path(os.path.realpath(owner))
    for p in inputs:
        rp = Path(os.path.realpath(p))
        if rp == real or real in rp.parents:
            return
    raise UserError(
        f"{target} is inside {owner}, a run directory this command did not read; "
        f"ssdfa never writes into another run's directory: pick another {what}"
    )


def disk_full(command: str, exc: OSError) -> int:
    """One line for a full disk (no --resume hint: the command has none; nothing was lost)."""
    where = f" ({exc.filename})" if exc.filename else ""
    print(
        f"ssdfa {command}: error: the disk is full{where}; free some space and run the same "
        "command again (files written before are unchanged)",
        file=sys.stderr,
    )
    return 1


def read_checked(paths, costs: bool = False):
    """Every input read and validated, and something to draw, or a UserError in one line."""
    try:
        sources = read_inputs(paths)
    except (RunFileError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    why = None if costs else nothing_to_draw(sources)
    if why:
        raise UserError(why + "; train first, or wait for the first epoch")
    return sources


def run(args) -> int:
    check_dirs(args.runs)
    out = Path(args.out) if args.out else Path(args.runs[0]) / "plots"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; pick a folder for the figures")
    check_writable_here(out, args.runs, "--out folder")
    sources = read_checked(args.runs, args.cost)
    try:
        files = plot_runs(
            sources, out, costs=args.cost, fmt=args.format, log=lambda m: print(f"note: {m}", file=sys.stderr)
        )
    except (RunFileError, FileNotFoundError) as exc:  # a checkpoint, read as the figures are drawn
        raise UserError(str(exc)) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return disk_full("plot", exc)
        raise
    for f in files:
        print(f)
    return 0
