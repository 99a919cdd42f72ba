"""Training curves and alignment angles over epochs: mean over seeds with a ±1 std band."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..rundata import Group, series
from .style import _POINT_COLORS, STYLE, _figure, _styles, plt


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
    (line,) = ax.plot(x, mean, color=color, ls=ls, lw=1.8, marker="o", ms=3.5, label=label)
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
    return {"ce": "cross-entropy (nats)", "bce": "binary cross-entropy (nats)", "mse": "mean squared error"}[
        names.pop()
    ]


def figure_curves(groups: list[Group], title: str = "", *, loose: bool = False, log=None):
    """Train/test loss and accuracy per epoch: mean over seeds, ±1 std band, per group."""
    groups = [g for g in groups if g.runs]
    if not groups:
        return None
    has_acc = any(_band(g.runs, "test_acc") or _band(g.runs, "train_acc") for g in groups)
    loss_unit = _loss_label(groups)
    panels = [("train_loss", "train loss", loss_unit, False), ("test_loss", "test loss", loss_unit, False)]
    if has_acc:
        panels += [
            ("train_acc", "train accuracy", "accuracy (%)", True),
            ("test_acc", "test accuracy", "accuracy (%)", True),
        ]
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
                    log(
                        f"{g.label}: not every seed has reached the last epoch yet; the curve "
                        f"stops at epoch {int(x[-1])}, the last one all {n} seeds have"
                    )
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
                ax.text(
                    0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey"
                )
        order = [g.label for g in groups if g.label in handles]
        ncol = min(len(order), 4) or 1
        legend_rows = math.ceil(len(order) / ncol) if order else 0
        y = 0.99
        if title:
            fig.suptitle(title, y=y, va="top")
            y -= 0.05
        if order:
            fig.legend(
                [handles[k] for k in order],
                [handles[k].get_label() for k in order],
                loc="upper center",
                bbox_to_anchor=(0.5, y),
                ncol=ncol,
                frameon=False,
            )
            y -= 0.045 * legend_rows
        if any(g.seeds > 1 for g in groups):
            fig.text(
                0.005,
                0.005,
                "line: mean over seeds; band: ±1 sample std",
                ha="left",
                va="bottom",
                fontsize=9,
                color="grey",
            )
        fig.subplots_adjust(left=0.08, right=0.985, bottom=0.1, top=y - 0.045, hspace=0.45, wspace=0.22)
    return fig


_ANGLE_GROUPS = [
    ("dz/", r"$\delta z$ (pre-activation) vs BP (DRTP Figs. 2-3)"),
    ("delta/", r"$\delta$ at feedback points vs BP"),
    ("dW/", r"$\partial W$ vs BP"),
    ("eq14/", r"$\angle(B_l,\ W_n \cdots W_{l+1})$ (SSDFA Eq. 14)"),
    ("dkp/", r"$\angle(h_l B_l^T,\ z_{out})$ (DKP Fig. 2)"),
    ("fa/", r"$\angle(B, W)$ (FA/KP)"),
]


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
    panels = [
        (p, t, [k for k in keys if k.startswith("angle/" + p) and not (p == "dW/" and k.endswith(".bias"))])
        for p, t in _ANGLE_GROUPS
    ]
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
                _draw(
                    ax,
                    x,
                    mean,
                    std,
                    n,
                    _POINT_COLORS[i % len(_POINT_COLORS)],
                    "-",
                    k[len("angle/" + prefix) :],
                )
            ax.axhline(90, color="grey", lw=0.8, ls="--")
            ax.set_title(title, fontsize=11)
            ax.set_xlabel("epoch")
            ax.set_ylabel("angle (degrees)")
            ax.set_ylim(0, 180)
            ax.set_yticks([0, 45, 90, 135, 180])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=9, title="point", title_fontsize=9)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        seeds = (
            ""
            if loose and group.seeds <= 1
            else f", mean ± std over {group.seeds} seed{'s' if group.seeds != 1 else ''}"
        )
        fig.suptitle(f"alignment with backprop: {group.label}{seeds}")
        fig.tight_layout()
    return fig
