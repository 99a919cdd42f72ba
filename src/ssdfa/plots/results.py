"""A reproduction's table (paper vs ours) and a rank × sparsity sweep (Figs. 5-6) as figures."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.lines import Line2D

from .style import STYLE, _figure, plt, rule_color


def _metric_words(metric: str) -> tuple[str, str]:
    return {
        "accuracy": ("test accuracy", "test accuracy (%)"),
        "error": ("test error", "test error (%)"),
        "loss": ("test loss", "test loss"),
    }.get(metric, (metric, metric))


def figure_reproduction(results: dict, methods: dict[str, str] | None = None):
    """A reproduction's rows: paper vs ours (mean ± std over seeds), and the gap to BP of each."""
    rows = [r for r in results.get("rows") or [] if isinstance(r.get("method"), str)]
    if not rows:
        return None
    if "quantity" in rows[0]:
        return _figure_cost_ratios(results, rows)
    methods = methods or {}
    what, ylabel = _metric_words(results.get("metric", "accuracy"))
    with plt.rc_context(STYLE):
        fig, axes = _figure("reproduction", 1, 2, gridspec_kw={"width_ratios": [3, 2]})
        ax, gx = axes[0]
        xs = np.arange(len(rows))
        for i, r in enumerate(rows):
            color = rule_color(methods.get(r["method"], r["method"]))
            if r.get("paper") is not None:
                ax.plot([i - 0.15], [r["paper"]], marker="D", ms=8, mfc="white", mec=color, mew=2, ls="none")
            if r.get("ours_mean") is not None:
                c = ax.errorbar(
                    [i + 0.15],
                    [r["ours_mean"]],
                    yerr=[r.get("ours_std") or 0.0],
                    marker="o",
                    ms=8,
                    color=color,
                    capsize=5,
                    lw=2,
                    ls="none",
                )
                c.lines[0].set_gid(f"mean:{r['method']}")
                for col in c.lines[2]:
                    col.set_gid(f"band:{r['method']}")
                n = r.get("ours_runs")
                note = f"n={n}" if n is not None else ""
                if r.get("runs") is not None and n is not None and n < r["runs"]:
                    note += f" ({r['runs'] - n} diverged)"
                ax.annotate(
                    note,
                    (i + 0.15, r["ours_mean"] + (r.get("ours_std") or 0.0)),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=9,
                )
            elif r.get("runs"):
                ax.annotate(
                    "all diverged",
                    (i, 0.5),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    fontsize=9,
                    color="grey",
                )
        ax.set_xticks(xs, [r["method"] for r in rows], rotation=20 if len(rows) > 5 else 0)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{what} per row")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
        gaps = [r for r in rows if r["method"] != "bp" and not r["method"].startswith("pretrain")]
        w = 0.38
        for i, r in enumerate(gaps):
            color = rule_color(methods.get(r["method"], r["method"]))
            if r.get("gap_paper") is not None:
                gx.bar(i - w / 2, r["gap_paper"], w, facecolor="white", edgecolor=color, hatch="//", lw=1.5)
            if r.get("gap_ours") is not None:
                gx.bar(i + w / 2, r["gap_ours"], w, color=color)
        gx.axhline(0, color="black", lw=0.8)
        gx.set_xticks(range(len(gaps)), [r["method"] for r in gaps], rotation=20 if len(gaps) > 4 else 0)
        gx.set_xlim(-0.7, len(gaps) - 0.3)
        unit = "points" if results.get("metric") != "loss" else "loss"
        gx.set_ylabel(f"gap to BP ({unit})")
        gx.set_title("gap to BP: method − BP")
        gx.grid(axis="y", alpha=0.3)
        if not gaps:
            gx.text(0.5, 0.5, "no BP row", ha="center", va="center", transform=gx.transAxes)
        fig.legend(
            [
                Line2D([], [], marker="D", mfc="white", mec="black", mew=2, ls="none"),
                Line2D([], [], marker="o", color="black", ls="-", lw=2),
                plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//"),
                plt.Rectangle((0, 0), 1, 1, color="black"),
            ],
            ["paper", "ours: mean ± std over seeds", "paper's gap", "our gap"],
            loc="lower center",
            ncol=4,
            frameon=False,
        )
        budget = results.get("budget") or {}
        ran = results.get("dataset", "")
        if budget.get("epochs") is not None:
            ran += f", {budget['epochs']} epoch(s)"
        if results.get("stand_in"):
            ran += " (a stand-in for the paper's dataset)"
        fig.suptitle(f"{results.get('experiment', '')}: {results.get('title', '')}\nours: {ran}", fontsize=12)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def _figure_cost_ratios(results: dict, rows: list[dict]):
    with plt.rc_context(STYLE):
        fig, axes = _figure("reproduction")
        ax = axes[0, 0]
        w = 0.38
        for i, r in enumerate(rows):
            if r.get("paper") is not None:
                ax.bar(i - w / 2, r["paper"], w, facecolor="white", edgecolor="black", hatch="//")
            if r.get("ours") is not None:
                ax.bar(i + w / 2, r["ours"], w, color=rule_color("ssdfa"))
                ax.annotate(f"{r['ours']:,.3g}", (i + w / 2, r["ours"]), ha="center", va="bottom", fontsize=9)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), [r["method"] if "method" in r else r["quantity"] for r in rows])
        ax.set_ylabel("ratio BP / SSDFA (×, log scale)")
        ax.legend(
            [
                plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//"),
                plt.Rectangle((0, 0), 1, 1, color=rule_color("ssdfa")),
            ],
            ["paper", "ours"],
            frameon=False,
        )
        ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{results.get('experiment', '')}: {results.get('title', '')}")
        fig.tight_layout()
    return fig


def figure_sweep(sweep: dict):
    """Figs. 5-6: accuracy and angle against rank (per sparsity) and sparsity (per rank), bands."""
    cells = sweep.get("cells") or []
    if not cells:
        return None
    angle_key = "angle_eq14" if any(c.get("angle_eq14_mean") is not None for c in cells) else "angle_delta"

    def val(c, k):
        v = c.get(k)
        return math.nan if v is None else float(v)

    acc_scale = (
        100.0
        if max((val(c, "test_acc_mean") for c in cells if not math.isnan(val(c, "test_acc_mean"))), default=0)
        <= 1
        else 1.0
    )

    def panel(ax, group_key, x_key, y_key, scale, xlabel, fmt, what):
        values = sorted({c[group_key] for c in cells})
        cmap = plt.get_cmap("viridis")
        for j, g in enumerate(values):
            cs = sorted((c for c in cells if c[group_key] == g), key=lambda c: c[x_key])
            cs = [c for c in cs if not math.isnan(val(c, f"{y_key}_mean"))]
            if not cs:
                continue
            x = np.array([c[x_key] for c in cs], dtype=np.float64)
            m = np.array([val(c, f"{y_key}_mean") for c in cs]) * scale
            s = np.nan_to_num(np.array([val(c, f"{y_key}_std") for c in cs])) * scale
            color = cmap(0.85 * j / max(len(values) - 1, 1))
            label = fmt(g)
            (line,) = ax.plot(x, m, marker="o", ms=4, color=color, label=label)
            line.set_gid(f"mean:{what}:{label}")
            if any(c["n"] > 1 for c in cs):
                if len(x) > 1:
                    band = ax.fill_between(x, m - s, m + s, color=color, alpha=0.13, lw=0)
                else:  # one cell: no band to draw, an error bar instead
                    band = ax.errorbar(x, m, yerr=s, color=color, capsize=4, ls="none").lines[2][0]
                band.set_gid(f"band:{what}:{label}")
        ax.set_xlabel(xlabel)
        ax.set_xticks(sorted({c[x_key] for c in cells}))  # the grid's own values
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")

    with plt.rc_context(STYLE):
        fig, axes = _figure("sweep", 2, 2)
        rank_label, sp_label = "rank of B", "sparsity of B (fraction of zeros)"
        panel(
            axes[0, 0],
            "sparsity",
            "rank",
            "test_acc",
            acc_scale,
            rank_label,
            lambda g: f"sparsity {g:g}",
            "acc-vs-rank",
        )
        axes[0, 0].set_ylabel("test accuracy (%)")
        panel(
            axes[0, 1],
            "sparsity",
            "rank",
            angle_key,
            1.0,
            rank_label,
            lambda g: f"sparsity {g:g}",
            "angle-vs-rank",
        )
        axes[0, 1].set_ylabel("angle (degrees)")
        panel(
            axes[1, 0],
            "rank",
            "sparsity",
            "test_acc",
            acc_scale,
            sp_label,
            lambda g: f"rank {g}",
            "acc-vs-sparsity",
        )
        axes[1, 0].set_ylabel("test accuracy (%)")
        panel(
            axes[1, 1],
            "rank",
            "sparsity",
            angle_key,
            1.0,
            sp_label,
            lambda g: f"rank {g}",
            "angle-vs-sparsity",
        )
        axes[1, 1].set_ylabel("angle (degrees)")
        base = sweep.get("base") or {}
        ns = sorted({c["n"] for c in cells})
        seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        what = "Eq. 14 angle" if angle_key == "angle_eq14" else "δ angle to BP"
        fig.suptitle(
            f"{base.get('method', '')} on {base.get('dataset', '')}: accuracy and {what}; "
            f"mean ± std over {seeds} seed(s) per cell"
        )
        fig.tight_layout()
    return fig
