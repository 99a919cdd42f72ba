"""``ssdfa reproduce``: run one of the papers' experiments and set ours beside the paper's numbers.

The experiments are data (:mod:`ssdfa.experiments`); training goes through ``ssdfa compare``'s
machinery (:func:`ssdfa.campaign.train_all`): one folder per method and seed under the
output directory, finished runs read back instead of retrained, interrupted ones continued, one
writer per directory.  The table is **paper | ours at the best and at the last epoch (mean ± std over seeds) | gap
to BP, paper vs ours**, and says which of the two the paper reports; below it, the settings each
row ran with.  It is printed and written to ``results.md`` and ``results.json``.

``--setup`` (:data:`ssdfa.experiments.SETUPS`): ``authors`` runs each row as the authors' code
did; ``authors-default-init`` the same from torch's default init where they start from zero
weights; ``uniform`` this project's one setup for every row.  Left out, it is ``authors``, or
``authors-default-init`` when the epochs asked for are fewer than the authors' and their zero
init would sit at chance for most of them (the table says so).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..campaign import check_methods, train_all
from ..cost import count_costs, layer_shapes
from ..data import dataset_info, dataset_shape
from ..errors import UserError
from ..experiments import SETUP_KEYS, SETUPS, Experiment, get, names
from ..paper_tables import PRETRAIN_ROW, markdown, rows_for, show_num, sweep_markdown, sweep_trend
from ..rundir import locked, refuse_foreign, write_text_atomic
from ..sweep import run_sweep
from ..training import TrainConfig, pick_device
from ._options import logger, show_progress
from .cost import _build

# the tables live in ssdfa.paper_tables; rows_for, markdown and PRETRAIN_ROW are kept here too
__all__ = ["register", "run", "rows_for", "markdown", "row_configs", "pick_setup", "PRETRAIN_ROW"]


def register(sub):
    p = sub.add_parser(
        "reproduce",
        help="run one paper experiment; table of paper vs ours",
        description="Run a registered paper experiment (see --list) with the paper's setup and "
        "print paper | ours (mean ± std over seeds) | gap to BP, paper vs ours. "
        "Example: ssdfa reproduce drtp-classification --quick --seeds 1",
    )
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("--list", action="store_true", help="name the experiments and exit")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny budget (1 epoch on a few hundred examples) for CI and smoke tests",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per method, default 3")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="override the experiment's epochs")
    p.add_argument(
        "--limit-train",
        type=int,
        default=None,
        metavar="N",
        help="override the training-set size (first N examples)",
    )
    p.add_argument(
        "--setup",
        choices=SETUPS,
        default=None,
        help="authors: each row as the authors' code ran it (default); "
        "authors-default-init: the same from torch's default init instead of "
        "zero weights (the default when --epochs/--quick cut the authors' epochs "
        "and they start from zero); uniform: SGD lr 0.01 momentum 0.9 for every row",
    )
    p.add_argument(
        "--out-dir",
        default=None,
        help="output directory (default runs/reproduce/NAME-SETUP, or ...-quick); "
        "giving the same one again reuses finished runs",
    )
    p.add_argument("--data-dir", default=None, help="folder searched first for dataset files")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=run)


def _experiment(name: str | None) -> Experiment:
    if not name:
        raise UserError(f"name an experiment; choose one of: {', '.join(names())} (or --list)")
    try:
        return get(name)
    except KeyError as exc:
        raise UserError(exc.args[0]) from None


def run(args) -> int:
    if args.list:
        for n in names():
            exp = get(n)
            print(f"{n:24} {exp.title} [{exp.source}]")
        return 0
    exp = _experiment(args.name)
    if args.seeds < 1:
        raise UserError(f"--seeds must be a positive number of seeds, got {args.seeds}")
    for flag, value in (("--epochs", args.epochs), ("--limit-train", args.limit_train)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    last = args.seed + args.seeds - 1  # every seed checked before the first run trains
    if args.seed < 0 or last > 2**63 - 1:
        raise UserError(
            f"seeds {args.seed}..{last} must lie in [0, 2**63 - 1]; give a smaller --seed or fewer --seeds"
        )
    if exp.kind == "cost":
        return _cost(exp, args)
    return _train(exp, args)


# -- training experiments ---------------------------------------------------------------------


def _dataset(exp: Experiment, data_dir) -> tuple[str, str | None]:
    """(dataset to use, a note when a stand-in replaces the paper's)."""
    present = {name for name, _, where in dataset_info(data_dir) if where != "not found"}
    if exp.dataset in present:
        return exp.dataset, None
    for missing, instead in exp.stand_ins:
        if missing == exp.dataset and instead in present:
            return instead, (
                f"{exp.dataset} is not on this machine: {instead} stands in for it, "
                f"so the absolute numbers are not the paper's; compare the gaps to BP"
            )
    return exp.dataset, None  # the run reports the missing dataset, with how to get it


def pick_setup(exp: Experiment, args) -> tuple[str, str | None]:
    """(setup to run, why it was chosen when the user did not name one)."""
    if args.setup is not None:
        return args.setup, None
    if not exp.authors:
        return "authors", None
    short = args.quick or args.epochs is not None
    paper = min((dict(o).get("epochs", exp.full.epochs) for _, o in exp.authors), default=0)
    epochs = exp.quick.epochs if args.quick else args.epochs
    if exp.zero_init() and short and epochs < paper:
        return "authors-default-init", (
            f"{epochs} epoch(s) instead of the authors' {paper}: their zero initial weights stay "
            "at chance for the first epochs, so this runs their setup from torch's default init "
            "(--setup authors keeps zero)"
        )
    return "authors", None


def row_configs(exp: Experiment, base, setup: str, epochs: int | None) -> dict:
    """TrainConfig of every row label in ``setup``; ``epochs`` (a user's override) or each
    row's own (the authors' epochs, else the experiment's full budget)."""
    out = {}
    for label, _, _ in exp.rows():
        opts = exp.setup(label, setup)
        row_epochs = epochs if epochs is not None else opts.get("epochs", exp.full.epochs)
        out[label] = replace(base, **(opts | {"epochs": row_epochs}))
    return out


def settings_of(cfg) -> dict:
    """The setup a row ran with, for --json and the settings table."""
    return {k: getattr(cfg, k) for k in SETUP_KEYS}


def _train(exp: Experiment, args) -> int:
    budget = exp.quick if args.quick else exp.full
    override = args.epochs if args.epochs is not None else (budget.epochs if args.quick else None)
    limit = args.limit_train if args.limit_train is not None else budget.limit_train
    setup, why = pick_setup(exp, args)
    dataset, note = _dataset(exp, args.data_dir)
    out_dir = args.out_dir or str(
        Path("runs") / "reproduce" / (f"{exp.name}-{setup}" + ("-quick" if args.quick else ""))
    )
    base = TrainConfig(
        **(exp.train_options() | {"dataset": dataset}),
        epochs=budget.epochs,
        limit_train=limit,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        data_dir=args.data_dir,
    )
    configs = row_configs(exp, base, setup, override)
    for (_, method, _), cfg in zip(exp.rows(), configs.values()):
        check_methods(cfg, [method])
    pick_device(base.device)
    log = logger(args)
    if note:
        log(f"note: {note}")
    if why:
        log(f"setup: {why}")
    epochs = sorted({c.epochs for c in configs.values()})
    paper_epochs = sorted(
        {dict(o).get("epochs", exp.full.epochs) for _, o in exp.authors} or {exp.full.epochs}
    )
    budget_text = (
        f"{'/'.join(map(str, epochs))} epoch(s) (authors: "
        f"{'/'.join(map(str, paper_epochs))}), {args.seeds} seed(s) from "
        f"{args.seed}, training set {'first ' + str(limit) if limit else 'full'}"
        f"{', quick budget' if args.quick else ''}"
    )
    payload = {
        "experiment": exp.name,
        "title": exp.title,
        "citation": exp.citation,
        "source": exp.source,
        "metric": exp.metric,
        "dataset": dataset,
        "setup": setup,
        "setup_why": why,
        "reported": exp.reported,
        "stand_in": note,
        "budget": {
            "epochs": epochs,
            "seeds": args.seeds,
            "first_seed": args.seed,
            "limit_train": limit,
            "quick": bool(args.quick),
        },
        "notes": exp.notes,
        "authors_notes": exp.authors_notes,
        "claims": exp.claims,
        "settings": {label: settings_of(c) for label, c in configs.items()},
    }
    with locked(out_dir) as out:
        refuse_foreign(out, ("table", "sweep", "train"), inside=False)
        if exp.kind == "sweep":
            payload, text, seconds, failed = _sweep(
                exp, configs[exp.methods[0]], args, out, log, payload, budget_text
            )
        else:
            results, seconds = _train_rows(exp, configs, args, out, log, show_progress(args))
            rows = rows_for(exp, results)
            for r in rows:
                r["settings"] = payload["settings"].get(r["method"], payload["settings"].get("bp"))
            payload |= {"seconds": round(seconds, 2), "rows": rows}
            text = markdown(exp, rows, dataset, note, budget_text, setup, why)
            failed = any(r["status"] != "finished" for rs in results.values() for r in rs)
        _publish(out, text, payload)
    _report(args, out, text, payload, seconds)
    return 3 if failed else 0


def _train_rows(exp: Experiment, configs: dict, args, out: Path, log, progress: bool):
    """Every row's runs: ``out/<method>/seed<k>`` for a plain row, ``out/<label>/...`` for a
    variant; kind="transfer" first trains ``out/pretrain/<pretrain>/seed<k>`` (in the BP row's
    setup) and starts each row from its seed's pretrained conv layers, frozen."""
    results: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    seeds = range(args.seed, args.seed + args.seeds)
    pre = {}
    if exp.kind == "transfer":
        log(f"== pretraining every layer with {exp.pretrain} ==")
        got, _ = train_all(
            configs[exp.pretrain], [exp.pretrain], args.seeds, args.seed, out / "pretrain", log, progress
        )
        results[PRETRAIN_ROW] = got[exp.pretrain]
        pre = {s: str(out / "pretrain" / exp.pretrain / f"seed{s}") for s in seeds}
    for label, method, _ in exp.rows():
        where = out if label == method else out / label
        row_base = configs[label]
        if exp.kind == "transfer":
            results[label] = []
            for s in seeds:
                cfg = replace(row_base, train_only="fc", init_from=pre[s])
                results[label] += train_all(
                    cfg, [method], 1, s, where, log, progress, retrain_changed_init=True
                )[0][method]
        else:
            results[label] = train_all(row_base, [method], args.seeds, args.seed, where, log, progress)[0][
                method
            ]
    return results, time.perf_counter() - t0


def _sweep(exp: Experiment, base, args, out: Path, log, payload: dict, budget_text: str):
    """kind="sweep": the rank × sparsity grid (``ssdfa sweep``), cells under ``out/cells``."""
    t0 = time.perf_counter()
    fields = {
        k: v
        for k, v in asdict(base).items()
        if k
        in ("dataset", "model", "epochs", "batch_size", "limit_train", "device", "threads", "data_dir")
        + SETUP_KEYS
        and v is not None
    }
    fields |= {"method": exp.methods[0], "alignment": base.epochs}  # angle after the last epoch
    classes = dataset_shape(base.dataset)[1]
    res = run_sweep(
        out, fields, exp.ranks, exp.sparsities, range(args.seed, args.seed + args.seeds), classes, log=log
    )
    seconds = time.perf_counter() - t0
    cells = res["cells"]
    failed = bool(res["diverged"]) or any(not math.isfinite(c["test_acc_mean"]) for c in cells)
    payload = payload | {
        "seconds": round(seconds, 2),
        "cells": cells,
        "skipped": res["skipped"],
        "trend": sweep_trend(cells),
    }
    return (
        payload,
        sweep_markdown(
            exp,
            cells,
            res["skipped"],
            payload["trend"],
            base.dataset,
            payload["stand_in"],
            budget_text,
            classes,
        ),
        seconds,
        failed,
    )


# -- cost experiments -------------------------------------------------------------------------


def _cost(exp: Experiment, args) -> int:
    t0 = time.perf_counter()
    measured: dict[str, dict] = {}
    for label, model, dataset in exp.cost_setups:
        shape, classes = dataset_shape(dataset)
        net, _ = _build(model, shape, classes, reference=True)
        res = count_costs(
            layer_shapes(net, shape), list(exp.methods), num_classes=classes, train="fc", connections=1
        )
        measured[label] = {m: res[m]["totals"] for m in exp.methods}
    rows = []
    for label, totals in measured.items():
        bp, ss = totals["bp"], totals["ssdfa"]
        for quantity, key in (("movement", "movement"), ("MACs", "macs")):
            name = f"{quantity} bp/ssdfa, {label}"
            rows.append(
                {
                    "quantity": name,
                    "paper": exp.paper().get(name),
                    "ours": bp[key] / ss[key] if ss[key] else None,
                    "bp": bp[key],
                    "dfa": totals["dfa"][key],
                    "ssdfa": ss[key],
                }
            )
    lines = [
        f"# ssdfa reproduce {exp.name}: {exp.title}",
        "",
        f"Paper: {exp.citation}, {exp.source}. One training example, backward pass.",
        "",
        "| quantity | paper | ours | bp | dfa | ssdfa |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['quantity']} | {show_num(r['paper'], 1)} | {show_num(r['ours'], 1)} | "
            f"{r['bp']:,} | {r['dfa']:,} | {r['ssdfa']:,} |"
        )
    lines += ["", f"Setup: {exp.notes}"]
    text = "\n".join(lines)
    out_dir = args.out_dir or str(Path("runs") / "reproduce" / exp.name)
    payload = {
        "experiment": exp.name,
        "title": exp.title,
        "citation": exp.citation,
        "source": exp.source,
        "rows": rows,
        "totals": measured,
    }
    with locked(out_dir) as out:
        _publish(out, text, payload)
    _report(args, out, text, payload, time.perf_counter() - t0)
    return 0


def _publish(out: Path, text: str, payload: dict) -> None:
    """results.md and results.json in the out dir (atomic writes; the caller holds its lock)."""
    write_text_atomic(out / "results.md", text + "\n")
    write_text_atomic(out / "results.json", json.dumps(payload, indent=1) + "\n")


def _report(args, out: Path, text: str, payload: dict, seconds: float) -> None:
    if args.json:
        print(json.dumps(payload | {"out_dir": str(out)}))
    else:
        print(f"\n{text}\n\n{seconds:.0f} s; written to {out / 'results.md'}")
