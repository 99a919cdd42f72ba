"""The tables of ``ssdfa reproduce``: the paper's number beside ours (mean ± std over seeds,
at the last and the best epoch), the gap to BP of each, and the rank × sparsity sweep's trend.

The rows are computed from the run summaries :func:`ssdfa.campaign.train_all` returns and the
per-epoch curves in each run's ``metrics.json``, read by :mod:`ssdfa.rundata`."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .errors import RunFileError
from .experiments import Experiment
from .rundata import read_metrics

PRETRAIN_ROW = "pretrain (bp, all layers)"


def sweep_trend(cells: list[dict]) -> dict:
    """What Figs. 5-6 claim, measured: accuracy against rank (dense B) and against sparsity
    (full rank), and the correlation of accuracy with angle over all cells."""

    def acc(c):
        return 100.0 * c["test_acc_mean"]

    dense = sorted((c for c in cells if c["sparsity"] == 0), key=lambda c: c["rank"])
    full = max((c["rank"] for c in cells), default=None)
    at_full = sorted((c for c in cells if c["rank"] == full), key=lambda c: c["sparsity"])
    pairs = [
        (acc(c), c["angle_eq14_mean"])
        for c in cells
        if math.isfinite(c["test_acc_mean"]) and math.isfinite(c["angle_eq14_mean"])
    ]
    return {
        "accuracy_by_rank_dense": {c["rank"]: acc(c) for c in dense},
        "rank_gain_dense": (acc(dense[-1]) - acc(dense[0])) if len(dense) > 1 else None,
        "accuracy_by_sparsity_full_rank": {c["sparsity"]: acc(c) for c in at_full},
        "sparsity_spread_full_rank": (max(map(acc, at_full)) - min(map(acc, at_full)) if at_full else None),
        "corr_accuracy_angle": _pearson(pairs),
    }


def _pearson(pairs):
    """Pearson's r of (x, y) pairs; None for fewer than 3 pairs or a constant coordinate."""
    if len(pairs) < 3:
        return None
    try:
        return statistics.correlation(*zip(*pairs))
    except statistics.StatisticsError:
        return None


def sweep_markdown(exp: Experiment, cells, skipped, trend, dataset, note, budget, classes: int = 10) -> str:
    lines = [
        f"# ssdfa reproduce {exp.name}: {exp.title}",
        "",
        f"Paper: {exp.citation}, {exp.source}.",
        f"Paper reports: {exp.claims}",
        f"Ran: {dataset}; {budget}.",
    ]
    if note:
        lines.append(f"Note: {note}.")
    lines += [
        "",
        "| rank | sparsity | connections | runs | test accuracy (%), mean ± std | "
        "angle Eq. 14 (deg), mean ± std |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        runs = f"{c['n']}" + (f" ({c['diverged']} diverged)" if c.get("diverged") else "")
        lines.append(
            f"| {c['rank']} | {c['sparsity']:g} | {round((1 - c['sparsity']) * classes)} | {runs} | "
            f"{show_num(_pct(c['test_acc_mean']))} ± {show_num(_pct(c['test_acc_std']))} | "
            f"{show_num(c['angle_eq14_mean'], 1)} ± {show_num(c['angle_eq14_std'], 1)} |"
        )
    if skipped:
        lines += [
            "",
            "Not run (as in the paper): "
            + "; ".join(f"rank {s['rank']} sparsity {s['sparsity']:g}" for s in skipped)
            + ".",
        ]
    gain, spread, corr = (
        trend["rank_gain_dense"],
        trend["sparsity_spread_full_rank"],
        trend["corr_accuracy_angle"],
    )
    lines += [
        "",
        f"Measured: accuracy gain from the lowest to the highest rank (dense B) "
        f"{show_num(gain, sign=True)} points; spread over sparsity at full rank "
        f"{show_num(spread)} points; correlation of accuracy with angle over cells "
        f"{show_num(corr)}.",
        "",
        f"Setup: {exp.notes}",
    ]
    return "\n".join(lines)


def _pct(v):
    return None if v is None or not math.isfinite(v) else 100.0 * v


def curve(run: dict, metric: str) -> list[float]:
    """A run's test metric after every epoch (accuracy/error in %, or loss), from metrics.json."""
    try:
        history = read_metrics(Path(run["out_dir"]))
    except (KeyError, TypeError, OSError, RunFileError):
        return []
    key = "test_loss" if metric == "loss" else "test_acc"
    vals = [r.get(key) for r in history if r.get(key) is not None]
    if metric == "loss":
        return vals
    return [100.0 * v if metric == "accuracy" else 100.0 - 100.0 * v for v in vals]


def _best(values: list[float], metric: str) -> float:
    return max(values) if metric == "accuracy" else min(values)


def _ours(runs: list[dict], metric: str, which: str = "last"):
    """Mean and sample std over finished runs of test accuracy or error (in %), or test loss, at
    the last epoch or the best one (the SSDFA code's max(test_acc)); and how many runs."""
    vals = []
    for r in runs:
        if r.get("status") != "finished":
            continue
        c = curve(r, metric)
        if c:
            vals.append(_best(c, metric) if which == "best" else c[-1])
        else:  # no metrics file: the summary's numbers
            key = {"loss": "final_test_loss"}.get(
                metric, "final_test_acc" if which == "last" else "best_test_acc"
            )
            if r.get(key) is None:
                continue
            v = r[key] if metric == "loss" else 100.0 * r[key]
            vals.append(100.0 - v if metric == "error" else v)
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def _worst_drop(runs: list[dict], metric: str) -> float | None:
    """The largest fall of the test metric from one epoch to the next over the runs (points of
    accuracy; for error and loss a rise counts as the fall)."""
    drops = []
    for r in runs:
        c = curve(r, metric)
        sign = 1.0 if metric == "accuracy" else -1.0
        drops += [sign * (a - b) for a, b in zip(c, c[1:])]
    return max([0.0] + drops) if drops else None  # 0: it never fell


def rows_for(exp: Experiment, results: dict[str, list[dict]]) -> list[dict]:
    """One row per label: paper, ours at the last and best epoch (mean, std, n), gap to BP
    (label - BP) of each, per-seed curves and the largest epoch-to-epoch fall."""
    paper = exp.paper()
    last = {m: _ours(rs, exp.metric, "last") for m, rs in results.items()}
    best = {m: _ours(rs, exp.metric, "best") for m, rs in results.items()}
    bp_paper = paper.get("bp")
    bp_last, bp_best = last.get("bp", (None,))[0], best.get("bp", (None,))[0]
    rows = []
    labels = ([PRETRAIN_ROW] if PRETRAIN_ROW in results else []) + exp.labels()
    for m in labels:
        mean, std, n = last.get(m, (None, None, 0))
        bmean, bstd, _ = best.get(m, (None, None, 0))
        p = paper.get(m)
        rows.append(
            {
                "method": m,
                "paper": p,
                "ours_mean": mean,
                "ours_std": std,
                "ours_runs": n,
                "ours_best_mean": bmean,
                "ours_best_std": bstd,
                "runs": len(results.get(m, [])),
                "gap_paper": None if p is None or bp_paper is None or m == "bp" else p - bp_paper,
                "gap_ours": None if mean is None or bp_last is None or m == "bp" else mean - bp_last,
                "gap_ours_best": (None if bmean is None or bp_best is None or m == "bp" else bmean - bp_best),
                "curves": [curve(r, exp.metric) for r in results.get(m, [])],
                "worst_drop": _worst_drop(results.get(m, []), exp.metric),
            }
        )
    return rows


def show_num(v, digits=2, sign=False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _setting(v) -> str:
    if v is None:
        return "—"
    return f"{v:g}" if isinstance(v, float) else str(v)


def settings_table(settings: dict[str, dict]) -> list[str]:
    cols = [k for k in next(iter(settings.values()))] if settings else []
    lines = ["| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, opts in settings.items():
        lines.append(f"| {label} | " + " | ".join(_setting(opts[k]) for k in cols) + " |")
    return lines


def markdown(
    exp: Experiment,
    rows: list[dict],
    dataset: str,
    note: str | None,
    budget: str,
    setup: str = "uniform",
    why: str | None = None,
) -> str:
    what, unit = {
        "accuracy": ("test accuracy", " (%)"),
        "error": ("test error", " (%)"),
        "loss": ("test loss", ""),
    }[exp.metric]
    lines = [
        f"# ssdfa reproduce {exp.name}: {exp.title}",
        "",
        f"Paper: {exp.citation}, {exp.source}. Metric: {what}{unit}; gap = method − BP. "
        f"The paper reports the **{exp.reported} epoch**'s number"
        + (" (the SSDFA code's max(test_acc))." if exp.reported == "best" else "."),
        f"Ran: {dataset}; {budget}; setup **{setup}**.",
    ]
    if why:
        lines.append(f"Setup chosen: {why}.")
    if exp.claims:
        lines.append(f"Paper reports: {exp.claims}")
    if note:
        lines.append(f"Note: {note}.")
    digits = 4 if exp.metric == "loss" else 2

    def cell(mean, std):
        return "—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"

    lines += [
        "",
        f"| method | paper {what}{unit} ({exp.reported} epoch) | ours {what}, best epoch | "
        f"ours {what}, last epoch | gap to BP: paper | gap to BP: ours best | "
        "gap to BP: ours last | worst fall between epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        last = cell(r["ours_mean"], r["ours_std"])
        if r["ours_runs"] < r["runs"]:
            last += f" ({r['runs'] - r['ours_runs']}/{r['runs']} diverged)"
        lines.append(
            f"| {r['method']} | {show_num(r['paper'])} | "
            f"{cell(r['ours_best_mean'], r['ours_best_std'])} | {last} | "
            f"{show_num(r['gap_paper'], sign=True)} | "
            f"{show_num(r['gap_ours_best'], digits, sign=True)} | "
            f"{show_num(r['gap_ours'], digits, sign=True)} | {show_num(r['worst_drop'], digits)} |"
        )
    lines += [
        "",
        "Per epoch, per seed: "
        + "; ".join(
            f"{r['method']} "
            + " / ".join(
                ", ".join(f"{v:.{min(digits, 2) if exp.metric != 'loss' else 4}f}" for v in c)
                for c in r["curves"]
            )
            for r in rows
            if r["curves"]
        )
        + ".",
    ]
    settings = {r["method"]: r["settings"] for r in rows if r.get("settings")}
    if settings:
        lines += ["", "Settings per row:", ""] + settings_table(settings)
    lines += ["", f"Setup: {exp.notes}"]
    if exp.authors_notes:
        lines += ["", f"Authors' code: {exp.authors_notes}"]
    return "\n".join(lines)
