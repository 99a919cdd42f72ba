"""Figures from run, compare, reproduce and sweep directories (matplotlib, Agg).

What is drawn is what the inputs hold (:mod:`ssdfa.rundata` reads and validates them):

- ``training_curves``: train/test loss and accuracy per epoch; per row (method) the mean over
  seeds with a ±1 sample-std band, the seeds' count in the legend;
- ``angles_<row>``: alignment with BP per feedback point over epochs, mean ± std over seeds,
  only for rows that logged angles (``--alignment``);
- ``reproduction_<dir>``: a reproduction's table as a figure: the paper's number and ours
  (mean ± std) per row, and the gap to BP, paper vs ours;
- ``sweep_<dir>``: accuracy and angle against rank and sparsity (SSDFA paper, Figs. 5-6), bands;
- ``first_conv_filters``: the first conv layer of each row's first seed (Fig. 7), when there is one;
- ``cost_fig8``: the cost bars of Fig. 8, only when asked for (or for ``reproduce ssdfa-cost``).

Each rule has one colour in every figure (:data:`RULE_COLORS`); two rows of one rule differ in
line style.  Figures have a fixed size (``FIGSIZE`` inches × ``DPI``) so a report's layout does
not depend on the data, and are written as PNG, SVG or PDF (text kept as text).  Every band and
error bar is tagged with ``gid="band:<label>"`` so tests can read it back from the artists.
"""

from __future__ import annotations

import io
import math
import zlib
from pathlib import Path
from typing import Callable, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import rundata  # noqa: E402
from .rundata import Group, Source, first_conv_weight, is_sweep, load_run, series  # noqa: E402

__all__ = [
    "DPI", "FIGSIZE", "FORMATS", "RULE_COLORS", "rule_color", "load_run", "is_sweep",
    "plot_training_curves", "plot_angles", "plot_sweep", "plot_cost_bars", "plot_filters",
    "first_conv_weight", "paper_costs", "plot_runs", "build_figures", "save_figure", "angle_keys",
    "figure_bytes", "nothing_to_draw",
]

DPI = 100
FIGSIZE = {  # inches; pixels = inches × DPI
    "curves": (11, 7), "angles": (11, 7), "sweep": (11, 8), "cost": (11, 7), "filters": (11, 6),
    "reproduction": (11, 6),
}
FORMATS = ("png", "svg", "pdf")

# one colour per rule in every figure (colour-blind-safe where possible; BP is the black reference)
RULE_COLORS = {
    "bp": "#1a1a1a", "fa": "#0072b2", "kp": "#56b4e9", "dfa": "#d55e00", "sdfa": "#e69f00",
    "ssdfa": "#009e73", "dkp": "#cc79a7", "drtp": "#8c564b", "sign_dfa": "#9467bd",
    "shallow": "#999999",
}
_SPARE = ["#17becf", "#bcbd22", "#7f0000", "#004d40", "#f0e442", "#393b79"]
_STYLES = ["-", "--", ":", "-."]
_POINT_COLORS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#8c564b",
                 "#1a1a1a"]

STYLE = {  # readable at the size a paper prints a full-width figure
    "font.size": 12, "axes.titlesize": 12, "axes.labelsize": 12, "legend.fontsize": 10,
    "xtick.labelsize": 11, "ytick.labelsize": 11, "figure.titlesize": 13,
    "axes.spines.top": False, "axes.spines.right": False,
    "svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42,
}


def rule_color(method: str) -> str:
    """The colour of a rule, the same in every figure (unknown names: a fixed spare colour)."""
    m = str(method).strip().lower().replace("-", "_")
    return RULE_COLORS.get(m) or _SPARE[zlib.crc32(m.encode()) % len(_SPARE)]


def _styles(groups: list[Group]) -> dict[str, tuple[str, str]]:
    """(colour, line style) per group label: the rule's colour, a new style per repeat."""
    used: dict[str, int] = {}
    out = {}
    for g in groups:
        k = used.get(g.method, 0)
        used[g.method] = k + 1
        out[g.label] = (rule_color(g.method), _STYLES[k % len(_STYLES)])
    return out


# -- numbers --------------------------------------------------------------------------------------
def _band(runs: list[dict], key: str, pct: bool = False):
    """Epochs every run has, with the mean and sample std over runs: (x, mean, std, n, cut)."""
    per_run = [series(r["metrics"], key) for r in runs]
    per_run = [s for s in per_run if s]
    if not per_run:
        return None
    if pct and all(v <= 1.0 for s in per_run for v in s.values()):
        per_run = [{e: 100.0 * v for e, v in s.items()} for s in per_run]  # fractions -> %
    common = sorted(set.intersection(*(set(s) for s in per_run)))
    cut = max(max(s) for s in per_run) > (common[-1] if common else -1)
    if not common:
        return None
    vals = np.array([[s[e] for e in common] for s in per_run], dtype=np.float64)  # (runs, epochs)
    mean = vals.mean(axis=0)
    std = vals.std(axis=0, ddof=1) if len(per_run) > 1 else np.zeros_like(mean)
    return np.array(common), mean, std, len(per_run), cut


def _legend_label(g: Group, loose: bool) -> str:
    if loose and g.seeds <= 1:
        text = g.label
    else:
        text = f"{g.label} ({g.seeds} seed{'s' if g.seeds != 1 else ''})"
    if g.left_out:
        whys = sorted({why.split(" at ")[0] for _, why in g.left_out})
        text += f", {len(g.left_out)} left out ({'/'.join(whys)})"
    return text


def _draw(ax, x, mean, std, n, color, ls, label):
    line, = ax.plot(x, mean, color=color, ls=ls, lw=1.8, marker="o", ms=3.5, label=label)
    line.set_gid(f"mean:{label}")
    if n > 1:
        band = ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, lw=0)
        band.set_gid(f"band:{label}")
    return line


def _loss_label(groups: list[Group]) -> str:
    names = set()
    for g in groups:
        for r in g.runs:
            loss = r["config"].get("loss") or "auto"
            has_acc = any(row.get("test_acc") is not None for row in r["metrics"])
            names.add({"ce": "ce", "bce": "bce", "mse": "mse"}.get(loss, "ce" if has_acc else "mse"))
    if len(names) != 1:
        return "loss"
    return {"ce": "cross-entropy (nats)", "bce": "binary cross-entropy (nats)",
            "mse": "mean squared error"}[names.pop()]


# -- figures --------------------------------------------------------------------------------------
def _figure(kind: str, rows: int = 1, cols: int = 1, **kw):
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE[kind], squeeze=False, **kw)
    return fig, axes


def figure_curves(groups: list[Group], title: str = "", *, loose: bool = False, log=None):
    """Train/test loss and accuracy per epoch: mean over seeds, ±1 std band, per group."""
    groups = [g for g in groups if g.runs]
    if not groups:
        return None
    has_acc = any(_band(g.runs, "test_acc") or _band(g.runs, "train_acc") for g in groups)
    loss_unit = _loss_label(groups)
    panels = [("train_loss", "train loss", loss_unit, False), ("test_loss", "test loss", loss_unit, False)]
    if has_acc:
        panels += [("train_acc", "train accuracy", "accuracy (%)", True),
                   ("test_acc", "test accuracy", "accuracy (%)", True)]
    with plt.rc_context(STYLE):
        fig, axes = _figure("curves", 2 if has_acc else 1, 2)
        styles = _styles(groups)
        handles = {}
        for ax, (key, title_, ylabel, pct) in zip(axes.flat, panels):
            seen = []
            for g in groups:
                b = _band(g.runs, key, pct)
                if b is None:
                    continue
                x, mean, std, n, cut = b
                if cut and log and key == "test_acc":
                    log(f"{g.label}: not every seed has reached the last epoch yet; the curve "
                        f"stops at epoch {int(x[-1])}, the last one all {n} seeds have")
                color, ls = styles[g.label]
                lab = _legend_label(g, loose)
                handles[g.label] = _draw(ax, x, mean, std, n, color, ls, lab)
                seen += list(mean)
            if not pct and seen and min(seen) > 0 and max(seen) / min(seen) > 100:
                ax.set_yscale("log")  # a diverging run would flatten everyone else's curve
                title_ += " (log scale)"
            ax.set_title(title_)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if not seen:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                        color="grey")
        order = [g.label for g in groups if g.label in handles]
        ncol = min(len(order), 4) or 1
        legend_rows = math.ceil(len(order) / ncol) if order else 0
        y = 0.99
        if title:
            fig.suptitle(title, y=y, va="top")
            y -= 0.05
        if order:
            fig.legend([handles[k] for k in order], [handles[k].get_label() for k in order],
                       loc="upper center", bbox_to_anchor=(0.5, y), ncol=ncol, frameon=False)
            y -= 0.045 * legend_rows
        if any(g.seeds > 1 for g in groups):
            fig.text(0.005, 0.005, "line: mean over seeds; band: ±1 sample std", ha="left",
                     va="bottom", fontsize=9, color="grey")
        fig.subplots_adjust(left=0.08, right=0.985, bottom=0.1, top=y - 0.045, hspace=0.45,
                            wspace=0.22)
    return fig


_ANGLE_GROUPS = [("dz/", r"$\delta z$ (pre-activation) vs BP (DRTP Figs. 2-3)"),
                 ("delta/", r"$\delta$ at feedback points vs BP"), ("dW/", r"$\partial W$ vs BP"),
                 ("eq14/", r"$\angle(B_l,\ W_n \cdots W_{l+1})$ (SSDFA Eq. 14)"),
                 ("dkp/", r"$\angle(h_l B_l^T,\ z_{out})$ (DKP Fig. 2)"),
                 ("fa/", r"$\angle(B, W)$ (FA/KP)")]


def angle_keys(metrics: list[dict]) -> list[str]:
    keys = []
    for row in metrics:
        for k in row:
            if k.startswith("angle/") and k not in keys and row[k] is not None:
                keys.append(k)
    return keys


def figure_angles(group: Group, loose: bool = True):
    """Alignment angles per feedback point over epochs, mean ± std over the group's seeds."""
    keys = []
    for r in group.runs:
        keys += [k for k in angle_keys(r["metrics"]) if k not in keys]
    panels = [(p, t, [k for k in keys if k.startswith("angle/" + p)
                      and not (p == "dW/" and k.endswith(".bias"))]) for p, t in _ANGLE_GROUPS]
    panels = [g for g in panels if g[2]]
    if not panels:
        return None
    cols = 3 if len(panels) > 4 else (2 if len(panels) > 1 else 1)
    rows = math.ceil(len(panels) / cols)
    with plt.rc_context(STYLE):
        fig, axes = _figure("angles", rows, cols)
        for ax, (prefix, title, ks) in zip(axes.flat, panels):
            for i, k in enumerate(ks):
                b = _band(group.runs, k)
                if b is None:
                    continue
                x, mean, std, n, _ = b
                _draw(ax, x, mean, std, n, _POINT_COLORS[i % len(_POINT_COLORS)], "-",
                      k[len("angle/" + prefix):])
            ax.axhline(90, color="grey", lw=0.8, ls="--")
            ax.set_title(title, fontsize=11)
            ax.set_xlabel("epoch")
            ax.set_ylabel("angle (degrees)")
            ax.set_ylim(0, 180)
            ax.set_yticks([0, 45, 90, 135, 180])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=9, title="point", title_fontsize=9)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        seeds = "" if loose and group.seeds <= 1 else \
            f", mean ± std over {group.seeds} seed{'s' if group.seeds != 1 else ''}"
        fig.suptitle(f"alignment with backprop: {group.label}{seeds}")
        fig.tight_layout()
    return fig


def _metric_words(metric: str) -> tuple[str, str]:
    return {"accuracy": ("test accuracy", "test accuracy (%)"),
            "error": ("test error", "test error (%)"),
            "loss": ("test loss", "test loss")}.get(metric, (metric, metric))


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
                ax.plot([i - 0.15], [r["paper"]], marker="D", ms=8, mfc="white", mec=color,
                        mew=2, ls="none")
            if r.get("ours_mean") is not None:
                c = ax.errorbar([i + 0.15], [r["ours_mean"]], yerr=[r.get("ours_std") or 0.0],
                                marker="o", ms=8, color=color, capsize=5, lw=2, ls="none")
                c.lines[0].set_gid(f"mean:{r['method']}")
                for col in c.lines[2]:
                    col.set_gid(f"band:{r['method']}")
                n = r.get("ours_runs")
                note = f"n={n}" if n is not None else ""
                if r.get("runs") is not None and n is not None and n < r["runs"]:
                    note += f" ({r['runs'] - n} diverged)"
                ax.annotate(note, (i + 0.15, r["ours_mean"] + (r.get("ours_std") or 0.0)),
                            textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9)
            elif r.get("runs"):
                ax.annotate("all diverged", (i, 0.5), xycoords=("data", "axes fraction"),
                            ha="center", fontsize=9, color="grey")
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
                gx.bar(i - w / 2, r["gap_paper"], w, facecolor="white", edgecolor=color,
                       hatch="//", lw=1.5)
            if r.get("gap_ours") is not None:
                gx.bar(i + w / 2, r["gap_ours"], w, color=color)
        gx.axhline(0, color="black", lw=0.8)
        gx.set_xticks(range(len(gaps)), [r["method"] for r in gaps],
                      rotation=20 if len(gaps) > 4 else 0)
        gx.set_xlim(-0.7, len(gaps) - 0.3)
        unit = "points" if results.get("metric") != "loss" else "loss"
        gx.set_ylabel(f"gap to BP ({unit})")
        gx.set_title("gap to BP: method − BP")
        gx.grid(axis="y", alpha=0.3)
        if not gaps:
            gx.text(0.5, 0.5, "no BP row", ha="center", va="center", transform=gx.transAxes)
        fig.legend([Line2D([], [], marker="D", mfc="white", mec="black", mew=2, ls="none"),
                    Line2D([], [], marker="o", color="black", ls="-", lw=2),
                    plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//"),
                    plt.Rectangle((0, 0), 1, 1, color="black")],
                   ["paper", "ours: mean ± std over seeds", "paper's gap", "our gap"],
                   loc="lower center", ncol=4, frameon=False)
        budget = results.get("budget") or {}
        ran = results.get("dataset", "")
        if budget.get("epochs") is not None:
            ran += f", {budget['epochs']} epoch(s)"
        if results.get("stand_in"):
            ran += " (a stand-in for the paper's dataset)"
        fig.suptitle(f"{results.get('experiment', '')}: {results.get('title', '')}\nours: {ran}",
                     fontsize=12)
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
                ax.annotate(f"{r['ours']:,.3g}", (i + w / 2, r["ours"]), ha="center", va="bottom",
                            fontsize=9)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), [r["method"] if "method" in r else r["quantity"]
                                         for r in rows])
        ax.set_ylabel("ratio BP / SSDFA (×, log scale)")
        ax.legend([plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//"),
                   plt.Rectangle((0, 0), 1, 1, color=rule_color("ssdfa"))], ["paper", "ours"],
                  frameon=False)
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

    acc_scale = 100.0 if max((val(c, "test_acc_mean") for c in cells
                              if not math.isnan(val(c, "test_acc_mean"))), default=0) <= 1 else 1.0

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
            line, = ax.plot(x, m, marker="o", ms=4, color=color, label=label)
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
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                    color="grey")

    with plt.rc_context(STYLE):
        fig, axes = _figure("sweep", 2, 2)
        rank_label, sp_label = "rank of B", "sparsity of B (fraction of zeros)"
        panel(axes[0, 0], "sparsity", "rank", "test_acc", acc_scale, rank_label,
              lambda g: f"sparsity {g:g}", "acc-vs-rank")
        axes[0, 0].set_ylabel("test accuracy (%)")
        panel(axes[0, 1], "sparsity", "rank", angle_key, 1.0, rank_label,
              lambda g: f"sparsity {g:g}", "angle-vs-rank")
        axes[0, 1].set_ylabel("angle (degrees)")
        panel(axes[1, 0], "rank", "sparsity", "test_acc", acc_scale, sp_label,
              lambda g: f"rank {g}", "acc-vs-sparsity")
        axes[1, 0].set_ylabel("test accuracy (%)")
        panel(axes[1, 1], "rank", "sparsity", angle_key, 1.0, sp_label,
              lambda g: f"rank {g}", "angle-vs-sparsity")
        axes[1, 1].set_ylabel("angle (degrees)")
        base = sweep.get("base") or {}
        ns = sorted({c["n"] for c in cells})
        seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        what = "Eq. 14 angle" if angle_key == "angle_eq14" else "δ angle to BP"
        fig.suptitle(f"{base.get('method', '')} on {base.get('dataset', '')}: accuracy and {what}; "
                     f"mean ± std over {seeds} seed(s) per cell")
        fig.tight_layout()
    return fig


def figure_cost_bars(results: dict, scope: str = "only FC layers train, as in Fig. 8"):
    """Fig. 8: MACs and data movement (MB) per method, one row of panels per network.

    ``results`` maps a title to :func:`ssdfa.cost.count_costs` output.
    """
    with plt.rc_context(STYLE):
        fig, axes = _figure("cost", len(results), 2)
        for row, (title, res) in zip(axes, results.items()):
            methods = list(res)
            colors = [rule_color(m) for m in methods]
            macs = [res[m]["totals"]["macs"] / 1e6 for m in methods]
            mb = [res[m]["totals"]["movement_bytes"] / 1e6 for m in methods]
            for ax, vals, ylabel, log in ((row[0], macs, "MACs (millions)", False),
                                          (row[1], mb, "data movement (MB)", True)):
                bars = ax.bar(methods, vals, color=colors)
                if log:  # movement spans orders of magnitude; MACs differ by about 2x
                    ax.set_yscale("log")
                ax.set_ylabel(ylabel + (", log scale" if log else ""))
                ax.set_title(f"{title}: {ylabel.split(' (')[0]}")
                for b, v in zip(bars, vals):
                    ax.annotate(f"{v:,.3g}", (b.get_x() + b.get_width() / 2, v), ha="center",
                                va="bottom", fontsize=9)
                ax.margins(y=0.2)
        fig.suptitle(f"backward-pass cost of one training example, Table I counting ({scope})")
        fig.tight_layout()
    return fig


def _filter_grid(w: np.ndarray) -> np.ndarray:
    """(C_out, C_in, k, k) -> one image tiling every filter, each scaled to [0, 1]."""
    c_out, c_in, kh, kw = w.shape
    cols = math.ceil(math.sqrt(c_out))
    rows = math.ceil(c_out / cols)
    rgb = c_in == 3
    grid = np.ones((rows * (kh + 1) - 1, cols * (kw + 1) - 1, 3 if rgb else 1))
    for i in range(c_out):
        f = w[i].transpose(1, 2, 0) if rgb else w[i, :1].transpose(1, 2, 0)
        lo, hi = f.min(), f.max()
        f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f) + 0.5
        r, c = divmod(i, cols)
        grid[r * (kh + 1): r * (kh + 1) + kh, c * (kw + 1): c * (kw + 1) + kw] = f
    return grid if rgb else grid[..., 0]


def figure_filters(weights: dict):
    """Fig. 7: the first conv layer's filters as a grid, side by side per run (BP vs DFA)."""
    with plt.rc_context(STYLE):
        fig, axes = _figure("filters", 1, len(weights))
        for ax, (label, w) in zip(axes.flat, weights.items()):
            w = np.asarray(w, dtype=np.float64)
            img = _filter_grid(w)
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
            ax.set_title(f"{label}: {w.shape[0]} filters {w.shape[2]}×{w.shape[3]}")
            ax.axis("off")
        fig.suptitle("first convolutional layer (each filter scaled to its own range)")
        fig.tight_layout()
    return fig


def paper_costs(methods=("bp", "dfa", "ssdfa"), train="fc") -> dict:
    """Costs of the paper's Fig. 8 networks: AlexNet/ImageNet and the CIFAR-100 CNN."""
    import torch

    from .cost import count_costs, layer_shapes
    from .data import dataset_shape
    from .models import paper_network

    out = {}
    for title, name, ds in (("CIFAR-100 CNN", "cifar-cnn", "cifar100"),
                            ("ImageNet AlexNet", "alexnet", "imagenet")):
        shape, m = dataset_shape(ds)
        with torch.device("meta"):
            net = paper_network(name, shape, m)
        out[title] = count_costs(layer_shapes(net, shape), methods, num_classes=m, train=train)
    return out


# -- saving ---------------------------------------------------------------------------------------
def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


def figure_bytes(fig, fmt: str = "png") -> bytes:
    """The figure as PNG, SVG or PDF bytes, without a creation date (same data, same bytes)."""
    buf = io.BytesIO()
    meta = {"Software": None} if fmt == "png" else ({"Date": None} if fmt == "svg" else
                                                    {"CreationDate": None})
    with plt.rc_context(STYLE):
        fig.savefig(buf, format=_check_format(fmt), dpi=DPI, metadata=meta)  # fixed size, no "tight"
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path, fmt: str | None = None) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a file) and close it."""
    from .rundir import open_atomic

    path = Path(path)
    data = figure_bytes(fig, fmt or path.suffix.lstrip(".") or "png")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path, "wb") as f:
        f.write(data)
    return path


# -- the old one-figure API (a path in, the path out) ----------------------------------------------
def _loose(runs: list[dict]) -> list[Group]:
    return rundata._loose_groups(runs)


def plot_training_curves(runs: list[dict], path) -> Path:
    """Train/test loss and accuracy per epoch, one line per run."""
    return save_figure(figure_curves(_loose(runs), loose=True), path)


def plot_angles(run: dict, path) -> Path | None:
    """Alignment angles per layer over training (None when the run logged none)."""
    fig = figure_angles(_loose([run])[0])
    return None if fig is None else save_figure(fig, path)


def plot_sweep(sweep: dict, path) -> Path:
    return save_figure(figure_sweep(sweep), path)


def plot_cost_bars(results: dict, path, scope: str = "only FC layers train, as in Fig. 8") -> Path:
    return save_figure(figure_cost_bars(results, scope), path)


def plot_filters(weights: dict, path) -> Path:
    return save_figure(figure_filters(weights), path)


# -- every figure the inputs call for -------------------------------------------------------------
def build_figures(sources: list[Source], *, costs: bool = False,
                  log: Callable[[str], None] | None = None) -> Iterator[tuple[str, object]]:
    """``(name, figure)`` for every figure the sources call for, one at a time (names unique)."""
    log = log or (lambda m: None)
    several = len(sources) > 1
    names: set[str] = set()

    def name(stem: str) -> str:
        out, k = stem, 2
        while out in names:  # e.g. a source "a_b" with row "c" and a source "a" with row "b_c"
            out, k = f"{stem}-{k}", k + 1
        names.add(out)
        return out

    want_cost = costs
    filters = {}  # every checkpoint read (and checked) before the first figure is handed out
    for src in sources:
        for g in src.groups:
            if g.runs and src.kind != "sweep":
                w = first_conv_weight(g.runs[0]["dir"])
                if w is not None:
                    filters.setdefault(src.tag, {})[g.label] = w
    for src in sources:
        pre = f"{src.tag}_" if several else ""
        loose = src.kind == "runs"
        for g in src.groups:
            for r, why in g.left_out:
                log(f"{r['dir']}: left out of the figures ({why})")
        if src.kind == "sweep":
            fig = figure_sweep(src.sweep)
            if fig is None:
                log(f"{src.path}: the sweep has no completed cell yet; no sweep figure")
            else:
                yield name(f"sweep_{src.tag}"), fig
            continue
        title = "" if loose else f"{src.name}: " + ((src.results or {}).get("title")
                                                     or (src.results or {}).get("experiment")
                                                     or src.kind)
        fig = figure_curves(src.groups, title if not loose else "", loose=loose, log=log)
        if fig is not None:
            yield name(f"{pre}training_curves"), fig
        for g in src.groups:
            fig = figure_angles(g, loose=loose) if g.runs else None
            if fig is not None:
                yield name(f"{pre}angles_{g.tag}"), fig
        if src.tag in filters:
            yield name(f"{pre}first_conv_filters"), figure_filters(filters[src.tag])
        if src.kind == "reproduce" and src.results.get("rows"):
            methods = {g.label: g.method for g in src.groups}
            fig = figure_reproduction(src.results, methods)
            if fig is not None:
                yield name(f"reproduction_{src.tag}"), fig
            if "quantity" in src.results["rows"][0]:
                want_cost = True  # reproduce ssdfa-cost: Fig. 8 is what it reproduces
        if not loose and not src.groups and src.kind != "reproduce":
            log(f"{src.path}: no run has logged an epoch yet; nothing to draw")
    if want_cost:
        yield name("cost_fig8"), figure_cost_bars(paper_costs())


def nothing_to_draw(sources: list[Source]) -> str | None:
    """Why the sources give no figure at all (every run without an epoch, no sweep cell), or None."""
    if any(g.runs for src in sources for g in src.groups):
        return None
    if any(src.kind == "sweep" and (src.sweep or {}).get("cells") for src in sources):
        return None
    if any(src.kind == "reproduce" and (src.results or {}).get("rows") for src in sources):
        return None
    why = [f"{r['dir']}: {w}" for src in sources for g in src.groups for r, w in g.left_out]
    why += [f"{src.path}: the sweep has no finished cell" for src in sources if src.kind == "sweep"]
    return "nothing to draw (" + "; ".join(why[:3]) + (", ..." if len(why) > 3 else "") + ")"


def plot_runs(paths, out_dir, *, costs: bool = True, log=print, fmt: str = "png") -> list[Path]:
    """Write every figure the given directories call for into ``out_dir``; return the paths.

    Every input is read and validated before the first file is written.
    """
    _check_format(fmt)
    sources = paths if all(isinstance(p, Source) for p in paths) else rundata.read_inputs(paths)
    out = Path(out_dir)
    return [save_figure(fig, out / f"{stem}.{fmt}", fmt)
            for stem, fig in build_figures(sources, costs=costs, log=log)]
