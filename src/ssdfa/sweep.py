"""Rank × sparsity sweeps (SSDFA paper, Figs. 5-6): accuracy and angle, mean ± std over seeds.

Each cell (rank R, sparsity s, seed) is one training run in ``<out>/cells/r<R>_s<s>_seed<n>/``.
A cell whose ``summary.json`` exists is complete and is read, not re-run, so an interrupted
sweep resumes where it stopped.  Cells that cannot feed every error back — S·R < M with
S = round((1 − s)·M) connections per neuron, the paper's "rank × connectivity < 1" — or whose
rank exceeds the M errors are skipped, and each skip is reported with its reason.

Results: ``sweep.csv`` (one row per run) and ``sweep.json`` (the grid, the skipped cells, and
mean ± std per (rank, sparsity)), rewritten after every cell.

A cell that diverged is never a result: it is kept with ``status`` "diverged" (its row has no
accuracy, the means are over the finished cells only, ``n`` counts those, ``diverged`` the
others) and :func:`run_sweep` says so in ``result["diverged"]``; ``ssdfa sweep`` then exits 3
every time, not only the first.  Every cell already on disk is read and checked (its
``summary.json``, ``metrics.json`` and settings) before anything is trained or written, so a
tampered cell is refused in one line and the sweep's files stay as they were.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

from .errors import Diverged, SweepError
from .rundata import read_json
from .rundir import locked, write_text_atomic
from .training import RESUME_MAY_CHANGE, TrainConfig, run, settings_differ

__all__ = ["SweepError", "cell_problem", "run_sweep", "aggregate", "final_angles", "cell_dir"]

CSV_FIELDS = (
    "rank",
    "sparsity",
    "connections",
    "seed",
    "status",
    "test_acc",
    "best_test_acc",
    "angle_eq14",
    "angle_delta",
    "run_dir",
)


def cell_problem(rank: int, sparsity: float, num_classes: int) -> str | None:
    """Why (rank, sparsity) cannot be run with ``num_classes`` errors, or None if it can."""
    if rank < 1:
        return f"rank {rank} < 1"
    if rank > num_classes:
        return f"rank {rank} > {num_classes} errors (B has at most rank M)"
    if not 0.0 <= sparsity < 1.0:
        return f"sparsity {sparsity} is outside [0, 1)"
    s = round((1.0 - sparsity) * num_classes)
    if s < 1:
        return f"sparsity {sparsity} leaves no connection per neuron with {num_classes} errors"
    if s * rank < num_classes:
        return (
            f"rank·connectivity = {rank}·{1 - sparsity:g} = {rank * (1 - sparsity):g} < 1: "
            f"{s} connections × rank {rank} cannot reach all {num_classes} errors"
        )
    return None


def cell_dir(out: Path, rank: int, sparsity: float, seed: int) -> Path:
    return Path(out) / "cells" / f"r{rank}_s{sparsity:g}_seed{seed}"


def final_angles(metrics: list[dict]) -> dict[str, float]:
    """Mean over points of the last epoch's ``angle/eq14/*`` and ``angle/delta/*`` columns."""
    out = {"angle_eq14": math.nan, "angle_delta": math.nan}
    if not metrics:
        return out
    last = metrics[-1]
    for key, prefix in (("angle_eq14", "angle/eq14/"), ("angle_delta", "angle/delta/")):
        vals = [float(v) for k, v in last.items() if k.startswith(prefix) and v not in (None, "")]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


def _train_with_api(fields: dict) -> dict:
    """Run one cell through the training API (``ssdfa.training``)."""
    names = set(TrainConfig.field_names())
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"TrainConfig has no field(s) {', '.join(unknown)}")
    return run(TrainConfig(**fields))


def _check_same_settings(cell: Path, fields: dict) -> None:
    """A finished cell is reused only if it was trained with these settings (epochs included:
    a cell is not continued): a sweep never mixes runs of different setups under one table."""
    saved = _read_json(cell / "config.json", None)
    if not isinstance(saved, dict):
        return  # made by a custom trainer without config.json: nothing to compare
    cfg = TrainConfig(**fields)
    differ = settings_differ(saved, cfg, tuple(k for k in RESUME_MAY_CHANGE if k != "epochs"))
    if differ:
        both = "; ".join(f"{k}: {saved.get(k)!r} there, {getattr(cfg, k)!r} now" for k in differ[:3])
        raise SweepError(
            f"{cell} was trained with other settings ({both}); "
            "give the sweep another directory, or delete that cell to retrain it"
        )


def _read_json(path: Path, default):
    try:
        return read_json(
            path,
            lambda exc: SweepError(
                f"{path} is not valid JSON ({exc}); the cell is damaged — delete {path.parent} to retrain it"
            ),
        )
    except FileNotFoundError:
        return default


def _fraction(value, key: str, path: Path):
    """An accuracy read back from a cell: None, or a finite number in [0, 100] (not a bool)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= 100
    ):
        raise SweepError(
            f"{path}: {key} = {value!r} is not an accuracy; the cell is damaged — "
            f"delete {path.parent} to retrain it"
        )
    return float(value)


def read_cell(d: Path, epochs=None) -> dict:
    """A finished or diverged cell's summary and angles, checked: a file read back is
    validated before use.  Returns {"status", "test_acc", "best_test_acc", angles...}."""
    path = d / "summary.json"
    summary = _read_json(path, None)
    if not isinstance(summary, dict):
        raise SweepError(
            f"{path} holds a {type(summary).__name__}, not a run summary; delete {d} to retrain the cell"
        )
    status = summary.get("status", "finished")  # a custom trainer may write no status
    if status not in ("finished", "diverged"):
        raise SweepError(
            f"{path}: status {status!r} is neither finished nor diverged; delete {d} to retrain the cell"
        )
    done = summary.get("epochs")
    if status == "finished" and epochs is not None and done is not None and done != epochs:
        raise SweepError(
            f"{path}: the cell finished {done!r} epochs, the sweep asks for "
            f"{epochs}; delete {d} to retrain it"
        )
    metrics = _read_json(d / "metrics.json", [])
    if not isinstance(metrics, list) or not all(isinstance(r, dict) for r in metrics):
        raise SweepError(f"{d / 'metrics.json'} is not a list of epoch rows; delete {d} to retrain the cell")
    try:
        angles = final_angles(metrics)
    except (TypeError, ValueError):
        raise SweepError(
            f"{d / 'metrics.json'}: an angle of the last epoch is not a number; "
            f"delete {d} to retrain the cell"
        ) from None
    if status == "diverged":
        return {
            "status": status,
            "test_acc": math.nan,
            "best_test_acc": math.nan,
            "angle_eq14": math.nan,
            "angle_delta": math.nan,
        }
    acc = _fraction(summary.get("final_test_acc"), "final_test_acc", path)
    best = _fraction(summary.get("best_test_acc"), "best_test_acc", path)
    return {
        "status": status,
        "test_acc": math.nan if acc is None else acc,
        "best_test_acc": math.nan if best is None else best,
        **angles,
    }


def run_sweep(
    out_dir,
    base: dict,
    ranks,
    sparsities,
    seeds,
    num_classes: int,
    *,
    train: Callable[[dict], dict] | None = None,
    log=print,
) -> dict:
    """Run every valid (rank, sparsity, seed) cell not yet complete; return ``sweep.json``'s dict.

    ``base`` holds the TrainConfig fields shared by all cells (method, dataset, model, epochs…);
    each cell adds ``rank``, ``sparsity``, ``seed`` and ``out_dir``.  ``train`` runs one cell
    (default: ``ssdfa.training.run``) and returns its summary.  A cell that diverges is
    recorded as such and the sweep goes on; ``result["diverged"]`` lists them.
    """
    train = train or _train_with_api
    with locked(out_dir) as out:  # one sweep per directory
        return _sweep(out, base, ranks, sparsities, seeds, num_classes, train, log)


def _cells(out: Path, base, ranks, sparsities, seeds, num_classes):
    """(rank, sparsity, seed, dir, fields) of every valid cell, and the skipped (rank, sparsity)."""
    cells, skipped = [], []
    for r in ranks:
        for s in sparsities:
            why = cell_problem(int(r), float(s), num_classes)
            if why:
                skipped.append({"rank": int(r), "sparsity": float(s), "reason": why})
                continue
            for seed in seeds:
                d = cell_dir(out, int(r), float(s), int(seed))
                cells.append(
                    (
                        int(r),
                        float(s),
                        int(seed),
                        d,
                        dict(base, rank=int(r), seed=int(seed), out_dir=str(d), sparsity=float(s)),
                    )
                )
    return cells, skipped


def _sweep(out: Path, base, ranks, sparsities, seeds, num_classes, train, log) -> dict:
    cells, skipped = _cells(out, base, ranks, sparsities, seeds, num_classes)
    for s in skipped:
        log(f"skipping rank={s['rank']} sparsity={s['sparsity']:g}: {s['reason']}")
    # every cell already there is checked before anything is trained or written
    done = {}
    for _r, _s, _seed, d, fields in cells:
        if (d / "summary.json").exists():
            _check_same_settings(d, fields)
            done[d] = read_cell(d, base.get("epochs"))
    rows, diverged = [], []
    for r, s, seed, d, fields in cells:
        if d in done:
            log(
                f"{'diverged earlier' if done[d]['status'] == 'diverged' else 'done already'}: "
                f"rank={r} sparsity={s:g} seed={seed}"
            )
            got = done[d]
        else:
            log(f"running rank={r} sparsity={s:g} seed={seed} -> {d}")
            try:
                summary = train(fields)
            except Diverged as exc:
                log(f"rank={r} sparsity={s:g} seed={seed}: {exc}")
                summary = {"status": "diverged", "message": str(exc)}
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "summary.json").exists():  # the API writes it; make sure it is there
                write_text_atomic(d / "summary.json", json.dumps(summary, indent=1))
            got = read_cell(d, base.get("epochs"))
        if got["status"] == "diverged":
            diverged.append({"rank": r, "sparsity": s, "seed": seed, "run_dir": str(d.relative_to(out))})
        rows.append(
            {
                "rank": r,
                "sparsity": s,
                "connections": round((1 - s) * num_classes),
                "seed": seed,
                **got,
                "run_dir": str(d.relative_to(out)),
            }
        )
        _write(out, base, ranks, sparsities, seeds, num_classes, rows, skipped, diverged)
    return _write(out, base, ranks, sparsities, seeds, num_classes, rows, skipped, diverged)


def _write(out, base, ranks, sparsities, seeds, num_classes, rows, skipped, diverged) -> dict:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "sweep.csv", buf.getvalue())
    result = {
        "kind": "sweep",
        "base": base,
        "num_classes": num_classes,
        "ranks": [int(r) for r in ranks],
        "sparsities": [float(s) for s in sparsities],
        "seeds": [int(s) for s in seeds],
        "skipped": skipped,
        "diverged": diverged,
        "runs": rows,
        "cells": aggregate(rows),
    }
    write_text_atomic(out / "sweep.json", json.dumps(_clean(result), indent=1))
    return result


def _clean(obj):
    """NaN -> null, so sweep.json is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _mean_std(vals):
    vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± sample std over the finished seeds per (rank, sparsity); ``n`` counts those,
    ``diverged`` the seeds that diverged (never part of a mean)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["rank"], row["sparsity"]), []).append(row)
    cells = []
    for (r, s), every in sorted(groups.items()):
        rs = [r_ for r_ in every if r_.get("status", "finished") == "finished"]
        cell = {"rank": r, "sparsity": s, "n": len(rs), "diverged": len(every) - len(rs)}
        for key in ("test_acc", "best_test_acc", "angle_eq14", "angle_delta"):
            cell[f"{key}_mean"], cell[f"{key}_std"] = _mean_std(r_[key] for r_ in rs)
        cells.append(cell)
    return cells
