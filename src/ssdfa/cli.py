"""The ``ssdfa`` command line. Each subcommand lives in ``ssdfa/commands/<name>.py``.

A command module defines ``register(subparsers)`` which adds its parser and sets
``func=run`` where ``run(args) -> int``.  Modules are discovered, so adding a command is adding
a file.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import Diverged, InputError, UserError  # noqa: F401  (UserError re-exported)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (not the whole usage) pointing at --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def one_line(message) -> str:
    """A message on one line: its lines joined with '; '."""
    return "; ".join(ln.strip() for ln in str(message).splitlines() if ln.strip())


def _again(args) -> str:
    """How to carry on after a full disk, for the command that met it."""
    if args.command == "train":
        return (
            f"continue with `ssdfa train --resume {args.resume or getattr(args, 'out_dir', 'RUN_DIR')}`"
            " (the last checkpoint is kept)"
        )
    if args.command in ("compare", "reproduce", "sweep"):
        return "run the same command again (finished runs are kept and not retrained)"
    return "run the same command again"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ssdfa",
        description="Train and compare networks with direct feedback credit assignment.",
    )
    parser.add_argument("--version", action="version", version=f"ssdfa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"ssdfa {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Diverged as exc:
        print(f"ssdfa {args.command}: {one_line(exc)}", file=sys.stderr)
        return 3
    except OSError as exc:  # the machine, not ssdfa: a full disk, a vanished file, permissions
        where = f" ({exc.filename})" if exc.filename else ""
        what = (
            ("the disk is full" + where + "; free some space, then " + _again(args))
            if exc.errno == errno.ENOSPC
            else f"{exc.strerror or one_line(exc)}{where}"
        )
        print(f"ssdfa {args.command}: error: {what}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ssdfa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
