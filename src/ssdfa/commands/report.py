"""``ssdfa report``: one page (markdown, or self-contained HTML) with the tables and figures."""

from __future__ import annotations

import errno
import shlex
import sys
from pathlib import Path

from ..errors import UserError
from ..report import MARKER_HTML, MARKER_MD, write_report
from ..rundata import RunFileError
from ..rundir import RUN_FILES
from .plot import check_dirs, check_writable_here, disk_full, read_checked


def register(subparsers):
    p = subparsers.add_parser(
        "report",
        help="one page (markdown, or self-contained HTML with --html): tables, figures, settings, "
        "the commands that rebuild it",
        description=(
            "Write a report for run, compare, reproduce and sweep directories: results "
            "tables, the figures of `ssdfa plot`, the settings each row ran with, the "
            "commands that rebuild each directory, and the machine and versions. "
            "Markdown by default (figures in <name>_figures/ beside it); --html writes "
            "one HTML file with every figure embedded, readable offline."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="DIR", help="run, compare, reproduce or sweep directories")
    p.add_argument(
        "--out",
        default=None,
        help="the report file (default: DIR/report.md, or report.html with --html, in "
        "the first DIR); an existing file is replaced only if it is an ssdfa report",
    )
    p.add_argument("--html", action="store_true", help="one self-contained HTML page")
    p.add_argument(
        "--format",
        default="png",
        choices=("png", "svg", "pdf"),
        help="figure format (png default; the HTML page takes png or svg)",
    )
    p.add_argument("--cost", action="store_true", help="add the SSDFA paper's Table I / Fig. 8 costs")
    p.set_defaults(func=run)


def _is_our_report(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.startswith(MARKER_MD) or MARKER_HTML in head


def check_out_file(out: Path, inputs, html: bool) -> None:
    """The report may replace only a report: never a run's file, another run's folder, a device."""
    suffixes = (".html", ".htm") if html else (".md", ".markdown")
    if out.suffix.lower() not in suffixes:
        raise UserError(
            f"--out {out}: a{'n HTML' if html else ' markdown'} report's name ends in {' or '.join(suffixes)}"
        )
    if out.name in RUN_FILES:
        raise UserError(
            f"--out {out}: {out.name} is a file ssdfa's commands write into run "
            "directories; pick another name, e.g. report.md"
        )
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise UserError(f"--out {out} exists and is not a regular file; pick another name")
        if not _is_our_report(out):
            raise UserError(
                f"--out {out} exists and is not an ssdfa report; it is kept: pick "
                "another name, or move that file away"
            )
    check_writable_here(out.parent, inputs, "--out")
    figs = out.parent / f"{out.stem}_figures"
    if not html and figs.exists() and not figs.is_dir():
        raise UserError(f"{figs} is a file, but the report's figures go there; pick another --out")


def run(args) -> int:
    check_dirs(args.runs)
    if args.html and args.format == "pdf":
        raise UserError("an HTML page shows png or svg figures; use --format png or svg with --html")
    default = "report.html" if args.html else "report.md"
    out = Path(args.out) if args.out else Path(args.runs[0]) / default
    check_out_file(out, args.runs, args.html)
    command = " ".join(
        [
            "ssdfa",
            "report",
            *map(shlex.quote, args.runs),
            *(["--html"] if args.html else []),
            *(["--format", args.format] if args.format != "png" else []),
            *(["--cost"] if args.cost else []),
            "--out",
            shlex.quote(str(out)),
        ]
    )
    sources = read_checked(args.runs, args.cost)
    try:
        path = write_report(
            sources,
            out,
            html_page=args.html,
            fmt=args.format,
            costs=args.cost,
            log=lambda m: print(f"note: {m}", file=sys.stderr),
            command=command,
        )
    except (RunFileError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return disk_full("report", exc)
        raise
    print(path)
    return 0
