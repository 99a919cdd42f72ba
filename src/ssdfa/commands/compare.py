"""``ssdfa compare``: train several methods over several seeds; a table of mean ± std.

The table has the form of the papers' tables (e.g. SSDFA Table III): one row per method, test
accuracy as mean ± sample standard deviation over the seeds.  It is printed and written to
``results.md`` (and ``results.json``) in the run directory; each run keeps its own folder
``<out>/<method>/seed<k>``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..campaign import aggregate, check_methods, markdown_table, train_all
from ..data import DatasetError
from ..data import canonical_name as canonical_dataset
from ..errors import UserError
from ..models import default_model
from ..rundir import locked, refuse_foreign, write_text_atomic
from ..training import pick_device
from ._options import add_training_options, check_nproc, config_from_args, logger, show_progress


def register(sub):
    p = sub.add_parser(
        "compare",
        help="train several methods over several seeds and tabulate test accuracy",
        description="Train each method over several seeds and print a markdown table of test "
        "accuracy (mean ± std). Example: ssdfa compare --methods bp,dfa,ssdfa "
        "--seeds 3 --dataset digits --epochs 20",
    )
    p.add_argument("--methods", default=None, help="comma-separated rules, default bp,dfa,ssdfa")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds per method, default 3")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="first seed (default 0)")
    add_training_options(p, method=False)
    p.set_defaults(func=run)


def _methods(value) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise UserError(
            f'methods = {value!r} should be a comma-separated string or a list of names, e.g. "bp,dfa,ssdfa"'
        )
    methods = [m.strip() for m in value if m.strip()]
    if not methods:
        raise UserError("--methods needs at least one method, e.g. bp,dfa,ssdfa")
    seen: dict[str, str] = {}
    for m in methods:  # BP and bp are one rule: trained twice it would be two rows of one
        key = m.lower().replace("-", "_")
        if key in seen:
            raise UserError(f"--methods names one rule twice ({seen[key]} and {m}); give each method once")
        seen[key] = m
    return methods


def run(args) -> int:
    nproc = check_nproc(args)
    base, extras = config_from_args(args, extra_keys=("methods", "seeds"))
    methods = _methods(extras["methods"] if extras.get("methods") is not None else "bp,dfa,ssdfa")
    seeds = extras["seeds"] if extras.get("seeds") is not None else 3
    first = base.seed
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UserError(f"--seeds must be a positive number of seeds, got {seeds!r}")
    if isinstance(first, int) and first + seeds - 1 > 2**63 - 1:
        raise UserError(f"seeds {first}..{first + seeds - 1} go past 2**63 - 1; give a smaller --seed")
    try:
        base.dataset = canonical_dataset(base.dataset)
    except DatasetError as exc:
        raise UserError(str(exc)) from exc
    check_methods(base, methods)
    pick_device(base.device)
    if base.out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model = base.model or default_model(base.dataset, ())
        base.out_dir = str(Path("runs") / f"{stamp}-compare-{base.dataset}-{model}")
    log = logger(args)
    with locked(base.out_dir) as out:  # one compare per directory
        refuse_foreign(out, ("table", "train"), inside=False)  # not into a sweep's directory
        return _compare(args, base, methods, seeds, first, out, log, nproc)


def _compare(args, base, methods, seeds, first, out: Path, log, nproc: int = 1) -> int:
    results, seconds = train_all(base, methods, seeds, first, out, log, show_progress(args), nproc)
    first_run = next(iter(results.values()))[0]
    title = (
        f"{first_run['dataset']}, {first_run['model']}, {base.epochs} epochs, {seeds} seed(s) from {first}"
    )
    table = markdown_table(results)
    write_text_atomic(out / "results.md", f"# ssdfa compare: {title}\n\n{table}\n")
    payload = {
        "title": title,
        "seconds": round(seconds, 2),
        "config": asdict(base),
        "methods": {m: aggregate(rs) | {"runs": rs} for m, rs in results.items()},
    }
    write_text_atomic(out / "results.json", json.dumps(payload, indent=1))
    if args.json:
        print(
            json.dumps(
                {
                    "seconds": payload["seconds"],
                    "out_dir": str(out),
                    "methods": {m: aggregate(rs) for m, rs in results.items()},
                }
            )
        )
    else:
        print(f"\n{title} — {seconds:.0f} s\n\n{table}\n\nwritten to {out / 'results.md'}")
    diverged = any(r["status"] != "finished" for rs in results.values() for r in rs)
    return 3 if diverged else 0
