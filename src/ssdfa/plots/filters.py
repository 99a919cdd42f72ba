"""Fig. 7: the first convolutional layer's filters, as a grid per run."""

from __future__ import annotations

import math

import numpy as np

from .style import STYLE, _figure, plt


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
        grid[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw] = f
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
