"""The blocks of a report, one function per section: results tables, angles, settings, the
commands that rebuild a directory, the cost section, a sweep, and the machine that made it."""

from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
import sys

import matplotlib
import numpy
import torch

from .. import plots
from .._version import __version__
from ..rundata import Source
from ..training import TrainConfig
from .page import Page


# -- numbers -------------------------------------------------------------------------------------
def _fmt(v, spec=".1f"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(float(v), spec)


def _fmt_acc(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    v = float(v)
    return f"{100 * v:.2f}" if v <= 1 else f"{v:.2f}"


def _mean_std(vals, scale=1.0, digits=2) -> str:
    vals = [scale * float(v) for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.{digits}f} ± {sd:.{digits}f}"


def _last(run: dict, key: str):
    s = run["summary"]
    skey = {"test_acc": "final_test_acc", "test_loss": "final_test_loss"}.get(key, key)
    if s.get(skey) is not None:
        return s[skey]
    rows = [r for r in run["metrics"] if r.get(key) is not None]
    return rows[-1][key] if rows else None


def _acc_scale(runs) -> float:
    vals = [_last(r, "test_acc") for r in runs]
    vals = [v for v in vals if v is not None]
    return 100.0 if vals and max(vals) <= 1 else 1.0


# -- sections ------------------------------------------------------------------------------------
def _loose_runs(page: Page, src: Source, fig_names: dict) -> None:
    rows = []
    for g in src.groups:
        for r in g.runs + [r for r, _ in g.left_out]:
            c, s = r["config"], r["summary"]
            last = r["metrics"][-1] if r["metrics"] else {}
            rows.append(
                [
                    r["dir"].name,
                    g.label,
                    c.get("dataset", "–"),
                    c.get("model", "–"),
                    str(s.get("epochs", len(r["metrics"]))),
                    _fmt_acc(s.get("final_test_acc", last.get("test_acc"))),
                    _fmt_acc(s.get("best_test_acc")),
                    _fmt(s.get("train_loss", last.get("train_loss")), ".4f"),
                    _fmt(s.get("seconds"), ".1f"),
                ]
            )
    page.add("h2", "Runs")
    page.add(
        "table",
        [
            "run",
            "method",
            "dataset",
            "model",
            "epochs",
            "final test acc (%)",
            "best test acc (%)",
            "final train loss",
            "seconds",
        ],
        rows,
    )


def _groups_table(page: Page, src: Source) -> None:
    rows = []
    for g in src.groups:
        scale = _acc_scale(g.runs)
        left = ", ".join(f"{r['dir'].name}: {why}" for r, why in g.left_out) or "–"
        rows.append(
            [
                g.label,
                str(g.seeds),
                _mean_std([_last(r, "test_acc") for r in g.runs], scale),
                _mean_std([r["summary"].get("best_test_acc") for r in g.runs], scale),
                _mean_std([_last(r, "train_loss") for r in g.runs], digits=4),
                _mean_std([r["summary"].get("seconds") for r in g.runs], digits=1),
                left,
            ]
        )
    page.add(
        "p",
        "Mean ± sample standard deviation over the seeds of each row; diverged runs are "
        "left out of every number and figure and listed.",
    )
    page.add(
        "table",
        [
            "row",
            "seeds",
            "final test acc (%)",
            "best test acc (%)",
            "final train loss",
            "seconds / run",
            "left out",
        ],
        rows,
    )


def _reproduction_table(page: Page, res: dict) -> None:
    rows = res["rows"]
    if "quantity" in rows[0]:
        page.add(
            "table",
            ["quantity", "paper", "ours"],
            [[r.get("quantity", r.get("method")), _fmt(r.get("paper")), _fmt(r.get("ours"))] for r in rows],
        )
        return
    digits = 4 if res.get("metric") == "loss" else 2
    what, unit = plots._metric_words(res.get("metric", "accuracy"))
    out = []
    for r in rows:
        ours = (
            "–"
            if r.get("ours_mean") is None
            else f"{r['ours_mean']:.{digits}f} ± {(r.get('ours_std') or 0.0):.{digits}f}"
        )
        n, runs = r.get("ours_runs"), r.get("runs")
        if n is not None and runs is not None and n < runs:
            ours += f" ({runs - n}/{runs} diverged)"
        out.append(
            [
                r["method"],
                _fmt(r.get("paper"), ".2f"),
                ours,
                "–" if r.get("gap_paper") is None else f"{r['gap_paper']:+.2f}",
                "–" if r.get("gap_ours") is None else f"{r['gap_ours']:+.{digits}f}",
            ]
        )
    page.add(
        "table",
        ["row", f"paper: {unit}", f"ours: {unit}, mean ± std", "gap to BP: paper", "gap to BP: ours"],
        out,
    )


def _angles(page: Page, src: Source, fig_names: dict, pre: str) -> None:
    keyed = [(g, [k for r in g.runs for k in plots.angle_keys(r["metrics"])]) for g in src.groups]
    keyed = [(g, list(dict.fromkeys(ks))) for g, ks in keyed if ks]
    if not keyed:
        return
    page.add("h3", "Alignment with backprop")
    page.add(
        "p",
        "Angles in degrees at the last epoch (0° = the BP direction, 90° = orthogonal), "
        "mean ± std over seeds. `dz/` is the signal at each hidden layer's "
        "pre-activation (the DRTP paper's δz, Figs. 2-3), `delta/` the signal arriving "
        "at each feedback point and `dW/` each weight's update, all against exact BP "
        "on the same batch and weights; `eq14/` is ∠(B_l, W_n⋯W_{l+1}) (SSDFA paper, "
        "Eq. 14); `dkp/` is ∠(h_l·B_lᵀ, output pre-activation) (DKP paper, Fig. 2).",
    )
    for g, ks in keyed:
        ks = [k for k in ks if not k.endswith(".bias")]
        page.add("p", f"**{g.label}** ({', '.join(r['dir'].name for r in g.runs)})")
        page.add(
            "table",
            ["angle", "degrees"],
            [
                [
                    k[len("angle/") :],
                    _mean_std([(r["metrics"][-1] if r["metrics"] else {}).get(k) for r in g.runs], digits=1),
                ]
                for k in ks
            ],
        )
        if f"{pre}angles_{g.tag}" in fig_names:
            page.add("fig", f"{pre}angles_{g.tag}", f"angles {g.label}")


_HIDDEN = ("out_dir", "seed", "init_from", "threads", "device", "data_dir", "download")


def _settings(page: Page, src: Source) -> None:
    """The settings each row ran with: those that differ between rows in a table, the rest once."""
    per_row = {}
    for g in src.groups:
        cfgs = [r["config"] for r in g.runs + [r for r, _ in g.left_out] if r["config"]]
        if not cfgs:
            continue
        same = {k: v for k, v in cfgs[0].items() if all(c.get(k) == v for c in cfgs) and k not in _HIDDEN}
        seeds = sorted({c.get("seed") for c in cfgs if isinstance(c.get("seed"), int)})
        same["seeds"] = ", ".join(map(str, seeds)) if seeds else "–"
        per_row[g.label] = same
    if not per_row:
        return
    keys = list(dict.fromkeys(k for s in per_row.values() for k in s))
    differ = [k for k in keys if len({repr(s.get(k)) for s in per_row.values()}) > 1]
    common = [k for k in keys if k not in differ and next(iter(per_row.values())).get(k) is not None]
    page.add("h3", "Settings")
    if differ:
        page.add(
            "table",
            ["row", *differ],
            [[label, *[_show(s.get(k)) for k in differ]] for label, s in per_row.items()],
        )
    first = next(iter(per_row.values()))
    page.add("p", "Every row: " + "; ".join(f"{k} = {_show(first[k])}" for k in common) + ".")


def _show(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _flags(cfg: dict, skip=()) -> list[str]:
    """Command-line flags for the settings of ``cfg`` that differ from TrainConfig's defaults."""
    defaults = TrainConfig().__dict__
    out = []
    for k, v in cfg.items():
        if k in skip or k not in defaults or v is None or v == defaults[k]:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out += [flag] if v else []
        else:
            out += [flag, _show(v)]
    return out


def _q(args) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def rebuild_commands(src: Source) -> list[str]:
    """Commands that write this input again (each finished run is read back, not retrained)."""
    res = src.results or {}
    if res.get("experiment"):
        b = res.get("budget") or {}
        cmd = ["ssdfa", "reproduce", res["experiment"]]
        if b.get("quick"):
            cmd.append("--quick")
        for flag, key in (
            ("--seeds", "seeds"),
            ("--seed", "first_seed"),
            ("--epochs", "epochs"),
            ("--limit-train", "limit_train"),
        ):
            if b.get(key) is not None:
                cmd += [flag, b[key]]
        return [_q(cmd + ["--out-dir", src.path])]
    if src.kind == "sweep":
        sw = src.sweep
        base = dict(sw.get("base") or {})
        cmd = [
            "ssdfa",
            "sweep",
            "--method",
            base.pop("method", "sdfa"),
            "--dataset",
            base.pop("dataset", "mnist"),
            "--rank",
            ",".join(str(r) for r in sw.get("ranks", [])),
            "--sparsity",
            ",".join(f"{s:g}" for s in sw.get("sparsities", [])),
            "--seeds",
            len(sw.get("seeds", [])),
        ]
        for k, v in base.items():
            if v is not None and k in (
                "model",
                "epochs",
                "batch_size",
                "lr",
                "optimizer",
                "alignment",
                "limit_train",
                "device",
                "data_dir",
            ):
                cmd += ["--" + k.replace("_", "-"), _show(v)]
        return [_q(cmd + ["--out", src.path])]
    if src.kind == "compare":
        cfg = dict(res.get("config") or next((r["config"] for g in src.groups for r in g.runs), {}))
        methods = list(res.get("methods") or {}) or [g.method for g in src.groups]
        seeds = max((g.seeds + len(g.left_out) for g in src.groups), default=1)
        cmd = ["ssdfa", "compare", "--methods", ",".join(methods), "--seeds", seeds]
        if cfg.get("seed"):
            cmd += ["--seed", cfg["seed"]]
        cmd += _flags(cfg, skip=("method", "seed", "out_dir"))
        return [_q(cmd + ["--out-dir", src.path])]
    out = []
    for g in src.groups:
        for r in g.runs + [r for r, _ in g.left_out]:
            cmd = ["ssdfa", "train", "--method", r["config"].get("method", "ssdfa")]
            cmd += _flags(r["config"], skip=("method", "out_dir"))
            out.append(_q(cmd + ["--out-dir", r["dir"]]))
    return out


def _machine() -> list[list[str]]:
    return [
        ["ssdfa", __version__],
        ["python", sys.version.split()[0]],
        ["torch", torch.__version__],
        ["numpy", numpy.__version__],
        ["matplotlib", matplotlib.__version__],
        ["platform", platform.platform()],
        ["machine", platform.machine() or "–"],
        ["CPU cores", str(os.cpu_count())],
        ["CUDA", torch.version.cuda or "none (CPU build)"],
    ]


def _cost(page: Page, fig_names: dict) -> None:
    costs = plots.paper_costs()
    page.add("h2", "Hardware cost (SSDFA paper, Table I and Fig. 8)")
    page.add(
        "p",
        "One training example's backward pass; only the FC layers train (the paper's "
        "Fig. 8 scope); words of 32 bits. Conventions and differences from the paper: "
        "`docs/cost-model.md`; any model: `ssdfa cost --model NAME --dataset NAME`.",
    )
    rows = []
    for title, res in costs.items():
        for m, v in res.items():
            t = v["totals"]
            rows.append(
                [
                    title,
                    m,
                    f"{t['macs'] / 1e6:.2f}",
                    f"{t['reads'] / 1e6:.2f}",
                    f"{t['writes'] / 1e6:.2f}",
                    f"{t['movement']:,}",
                    f"{t['feedback']:,}",
                ]
            )
    page.add(
        "table",
        [
            "network",
            "method",
            "MACs (M)",
            "reads (M words)",
            "writes (M words)",
            "movement (words)",
            "feedback (words)",
        ],
        rows,
    )
    for title, res in costs.items():
        t = {m: v["totals"] for m, v in res.items()}
        page.add(
            "p",
            f"- {title}: movement BP/SSDFA {t['bp']['movement'] / t['ssdfa']['movement']:,.0f}×, "
            f"DFA/SSDFA {t['dfa']['movement'] / t['ssdfa']['movement']:,.0f}×; "
            f"MACs BP/SSDFA {t['bp']['macs'] / t['ssdfa']['macs']:.2f}×",
        )
    if "cost_fig8" in fig_names:
        page.add("fig", "cost_fig8", "cost bars (Fig. 8)")


def _sweep(page: Page, src: Source, figs: dict) -> None:
    sw = src.sweep
    base = sw.get("base") or {}
    page.add("h2", f"Sweep: {base.get('method', '')} on {base.get('dataset', '')} (`{src.path}`)")
    page.add("p", f"{len(sw.get('seeds', []))} seeds per cell; mean ± std.")
    rows = []
    for c in sw.get("cells", []):
        acc_m, acc_s = c.get("test_acc_mean"), c.get("test_acc_std")
        scale = 100 if acc_m is not None and acc_m <= 1 else 1
        acc = "–" if acc_m is None else f"{scale * acc_m:.2f} ± {scale * (acc_s or 0):.2f}"
        rows.append(
            [
                str(c["rank"]),
                f"{c['sparsity']:g}",
                str(c["n"]),
                acc,
                f"{_fmt(c.get('angle_eq14_mean'))} ± {_fmt(c.get('angle_eq14_std'))}",
                f"{_fmt(c.get('angle_delta_mean'))} ± {_fmt(c.get('angle_delta_std'))}",
            ]
        )
    page.add(
        "table", ["rank", "sparsity", "runs", "test acc (%)", "angle Eq. 14 (°)", "angle δ vs BP (°)"], rows
    )
    for s in sw.get("skipped", []):
        page.add("p", f"Skipped rank {s['rank']}, sparsity {s['sparsity']:g}: {s.get('reason', '')}.")
    if f"sweep_{src.tag}" in figs:
        page.add("fig", f"sweep_{src.tag}", "sweep")
    base_settings = "; ".join(f"{k} = {_show(v)}" for k, v in base.items() if v is not None)
    page.add("h3", "Settings")
    page.add("p", f"Every cell: {base_settings}.")
