"""Figures from run directories (matplotlib, Agg): curves, angles, sweeps, cost bars, filters.

A run directory holds ``config.json``, ``metrics.json`` (or ``metrics.csv``; one row per epoch
with ``angle/<key>`` columns when alignment was logged), ``summary.json`` and optionally
``checkpoint.pt``; a sweep directory holds ``sweep.json`` (:mod:`ssdfa.sweep`).  Every figure
has a fixed size in pixels (``FIGSIZE`` × ``DPI``) so the report's layout does not depend on the
data.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = [
    "DPI", "FIGSIZE", "load_run", "is_sweep", "plot_training_curves", "plot_angles",
    "plot_sweep", "plot_cost_bars", "plot_filters", "first_conv_weight", "paper_costs",
    "plot_runs",
]

DPI = 100
FIGSIZE = {  # inches; pixels = inches × DPI
    "curves": (11, 7), "angles": (11, 7), "sweep": (11, 8), "cost": (11, 7), "filters": (11, 6),
}


# -- reading run directories ---------------------------------------------------------------------
def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def load_run(path) -> dict:
    """``{"dir", "label", "config", "metrics", "summary"}`` of one run directory."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a directory")
    config = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
    if (d / "metrics.json").exists():
        metrics = json.loads((d / "metrics.json").read_text())
    elif (d / "metrics.csv").exists():
        with open(d / "metrics.csv", newline="") as fh:
            metrics = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    else:
        raise FileNotFoundError(f"{d} has neither metrics.json nor metrics.csv: not a run directory")
    label = config.get("method") or d.name
    opts = [f"{k}={config[k]}" for k in ("sparsity", "connections", "rank") if config.get(k) is not None]
    if opts:
        label += " (" + ", ".join(opts) + ")"
    return {"dir": d, "label": label, "config": config, "metrics": metrics, "summary": summary}


def is_sweep(path) -> bool:
    return (Path(path) / "sweep.json").exists()


def _series(metrics, key):
    xs, ys = [], []
    for i, row in enumerate(metrics):
        v = row.get(key)
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            continue
        xs.append(row.get("epoch", i + 1))
        ys.append(float(v))
    return xs, ys


def _pct(values):
    """Accuracies in percent whether stored as fractions or already as percent."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    scale = 100.0 if vals and max(vals) <= 1.0 else 1.0
    return [v * scale if v is not None else v for v in values]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": keep the size fixed
    plt.close(fig)
    return path


# -- figures -------------------------------------------------------------------------------------
def plot_training_curves(runs: list[dict], path) -> Path:
    """Train/test loss and accuracy per epoch, one line per run (method)."""
    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE["curves"])
    panels = [("train_loss", "train loss", False), ("test_loss", "test loss", False),
              ("train_acc", "train accuracy (%)", True), ("test_acc", "test accuracy (%)", True)]
    for ax, (key, title, pct) in zip(axes.flat, panels):
        seen = []
        for run in runs:
            xs, ys = _series(run["metrics"], key)
            if xs:
                ax.plot(xs, _pct(ys) if pct else ys, marker="o", ms=3, label=run["label"])
                seen += ys
        if not pct and seen and min(seen) > 0 and max(seen) / min(seen) > 100:
            ax.set_yscale("log")  # a diverging run would flatten everyone else's curve
            title += " (log scale)"
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes.flat[3].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(fig, path)


_ANGLE_GROUPS = [("dz/", r"$\delta z$ (pre-activation) vs BP (DRTP)"),
                 ("delta/", r"$\delta$ at feedback points vs BP"), ("dW/", r"$\partial W$ vs BP"),
                 ("eq14/", r"$\angle(B_l,\ W_n \cdots W_{l+1})$ (Eq. 14)"),
                 ("dkp/", r"$\angle(h_l B_l^T,\ z_{out})$ (DKP Fig. 2)"),
                 ("fa/", r"$\angle(B, W)$ (FA/KP)")]


def angle_keys(metrics: list[dict]) -> list[str]:
    keys = []
    for row in metrics:
        for k in row:
            if k.startswith("angle/") and k not in keys:
                keys.append(k)
    return keys


def plot_angles(run: dict, path) -> Path | None:
    """Alignment angles per layer over training (None when the run logged none)."""
    keys = angle_keys(run["metrics"])
    groups = [(p, t, [k for k in keys if k.startswith("angle/" + p)]) for p, t in _ANGLE_GROUPS]
    groups = [g for g in groups if g[2]]
    if not groups:
        return None
    cols = 3 if len(groups) > 4 else (2 if len(groups) > 1 else 1)
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE["angles"], squeeze=False)
    for ax, (prefix, title, ks) in zip(axes.flat, groups):
        for k in ks:
            xs, ys = _series(run["metrics"], k)
            if prefix == "dW/" and k.endswith(".bias"):
                continue
            ax.plot(xs, ys, marker="o", ms=3, label=k[len("angle/" + prefix):])
        ax.axhline(90, color="grey", lw=0.8, ls="--")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("degrees")
        ax.set_ylim(0, 180)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(f"alignment with backprop: {run['label']}")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(sweep: dict, path) -> Path:
    """Figs. 5-6: accuracy and angle against rank (per sparsity) and against sparsity (per rank)."""
    cells = sweep["cells"]
    fig, axes = plt.subplots(2, 2, figsize=FIGSIZE["sweep"])
    angle_key = "angle_eq14" if any(c.get("angle_eq14_mean") is not None for c in cells) else "angle_delta"

    def val(c, k):
        v = c.get(k)
        return math.nan if v is None else float(v)

    def panel(ax, group_key, x_key, y_key, pct, xlabel, fmt):
        for g in sorted({c[group_key] for c in cells}):
            cs = sorted((c for c in cells if c[group_key] == g), key=lambda c: c[x_key])
            xs = [c[x_key] for c in cs]
            ys = [val(c, f"{y_key}_mean") for c in cs]
            es = [val(c, f"{y_key}_std") for c in cs]
            if pct:
                scale = 100.0 if max((y for y in ys if not math.isnan(y)), default=0) <= 1 else 1.0
                ys, es = [y * scale for y in ys], [e * scale for e in es]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=fmt(g))
        ax.set_xlabel(xlabel)
        ax.set_xticks(sorted({c[x_key] for c in cells}))  # the grid's own values
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    panel(axes[0, 0], "sparsity", "rank", "test_acc", True, "rank", lambda g: f"sparsity {g:g}")
    axes[0, 0].set_ylabel("test accuracy (%)")
    panel(axes[0, 1], "sparsity", "rank", angle_key, False, "rank", lambda g: f"sparsity {g:g}")
    axes[0, 1].set_ylabel("angle (degrees)")
    panel(axes[1, 0], "rank", "sparsity", "test_acc", True, "sparsity", lambda g: f"rank {g}")
    axes[1, 0].set_ylabel("test accuracy (%)")
    panel(axes[1, 1], "rank", "sparsity", angle_key, False, "sparsity", lambda g: f"rank {g}")
    axes[1, 1].set_ylabel("angle (degrees)")
    base = sweep.get("base", {})
    what = "Eq. 14 angle" if angle_key == "angle_eq14" else "δ angle to BP"
    fig.suptitle(f"{base.get('method', '')} on {base.get('dataset', '')}: accuracy and {what}, "
                 f"mean ± std over {len(sweep.get('seeds', []))} seeds")
    fig.tight_layout()
    return _save(fig, path)


def plot_cost_bars(results: dict, path, scope: str = "only FC layers train, as in Fig. 8") -> Path:
    """Fig. 8: MACs and data movement (MB) per method, one row of panels per network.

    ``results`` maps a title to :func:`ssdfa.cost.count_costs` output.
    """
    n = len(results)
    fig, axes = plt.subplots(n, 2, figsize=FIGSIZE["cost"], squeeze=False)
    for row, (title, res) in zip(axes, results.items()):
        methods = list(res)
        colors = plt.cm.tab10(np.arange(len(methods)) % 10)
        macs = [res[m]["totals"]["macs"] / 1e6 for m in methods]
        mb = [res[m]["totals"]["movement_bytes"] / 1e6 for m in methods]
        for ax, vals, ylabel, log in ((row[0], macs, "MACs (millions)", False),
                                      (row[1], mb, "data movement (MB)", True)):
            bars = ax.bar(methods, vals, color=colors)
            if log:  # movement spans orders of magnitude; MACs differ by about 2x
                ax.set_yscale("log")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}: {ylabel.split(' (')[0]}")
            for b, v in zip(bars, vals):
                ax.annotate(f"{v:,.3g}", (b.get_x() + b.get_width() / 2, v), ha="center",
                            va="bottom", fontsize=8)
            ax.margins(y=0.2)
    fig.suptitle(f"backward-pass cost of one training example, Table I counting ({scope})")
    fig.tight_layout()
    return _save(fig, path)


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


def plot_filters(weights: dict, path) -> Path:
    """Fig. 7: the first conv layer's filters as a grid, side by side per run (BP vs DFA)."""
    fig, axes = plt.subplots(1, len(weights), figsize=FIGSIZE["filters"], squeeze=False)
    for ax, (label, w) in zip(axes.flat, weights.items()):
        w = np.asarray(w, dtype=np.float64)
        img = _filter_grid(w)
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
        ax.set_title(f"{label}: {w.shape[0]} filters {w.shape[2]}×{w.shape[3]}")
        ax.axis("off")
    fig.suptitle("first convolutional layer")
    fig.tight_layout()
    return _save(fig, path)


def first_conv_weight(run_dir) -> np.ndarray | None:
    """The first 4-D ``weight`` tensor in ``checkpoint.pt`` (searched recursively), or None."""
    import torch

    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)

    def search(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, torch.Tensor) and v.dim() == 4 and str(k).endswith("weight"):
                    return v
            for v in obj.values():
                if isinstance(v, (dict, list, tuple)):
                    found = search(v)
                    if found is not None:
                        return found
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                found = search(v)
                if found is not None:
                    return found
        return None

    w = search(ckpt)
    return None if w is None else w.detach().float().numpy()


def paper_costs(methods=("bp", "dfa", "ssdfa"), train="fc") -> dict:
    """Costs of the paper's Fig. 8 networks: AlexNet/ImageNet and the CIFAR-100 CNN."""
    import torch

    from .cost import DATASET_SHAPES, count_costs, layer_shapes, reference_architecture

    out = {}
    for title, name, ds in (("CIFAR-100 CNN", "cifar-cnn", "cifar100"),
                            ("ImageNet AlexNet", "alexnet", "imagenet")):
        shape, m = DATASET_SHAPES[ds]
        with torch.device("meta"):
            net = reference_architecture(name, shape, m)
        out[title] = count_costs(layer_shapes(net, shape), methods, num_classes=m, train=train)
    return out


def plot_runs(paths, out_dir, *, costs: bool = True, log=print) -> list[Path]:
    """Every figure the given run and sweep directories allow; returns the PNG paths."""
    out = Path(out_dir)
    written: list[Path] = []
    runs, sweeps = [], []
    for p in paths:
        if is_sweep(p):
            sweeps.append((Path(p), json.loads((Path(p) / "sweep.json").read_text())))
        else:
            runs.append(load_run(p))
    if runs:
        written.append(plot_training_curves(runs, out / "training_curves.png"))
        for run in runs:
            f = plot_angles(run, out / f"angles_{run['dir'].name}.png")
            if f is not None:
                written.append(f)
        filters = {}
        for run in runs:
            w = first_conv_weight(run["dir"])
            if w is not None:
                filters[run["label"]] = w
        if filters:
            written.append(plot_filters(filters, out / "first_conv_filters.png"))
    for d, sw in sweeps:
        if sw.get("cells"):
            written.append(plot_sweep(sw, out / f"sweep_{d.name}.png"))
        else:
            log(f"{d}: the sweep has no completed cell yet; no sweep plot")
    if costs:
        written.append(plot_cost_bars(paper_costs(), out / "cost_fig8.png"))
    return written
