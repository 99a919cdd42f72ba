"""What every figure shares: one colour per rule, the fixed sizes and fonts, and saving."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .. import rundir  # noqa: E402  (rundir.open_atomic looked up per call)
from ..rundata import Group  # noqa: E402

DPI = 100
FIGSIZE = {  # inches; pixels = inches × DPI
    "curves": (11, 7),
    "angles": (11, 7),
    "sweep": (11, 8),
    "cost": (11, 7),
    "filters": (11, 6),
    "reproduction": (11, 6),
}
FORMATS = ("png", "svg", "pdf")

# one colour per rule in every figure (colour-blind-safe where possible; BP is the black reference)
RULE_COLORS = {
    "bp": "#1a1a1a",
    "fa": "#0072b2",
    "kp": "#56b4e9",
    "dfa": "#d55e00",
    "sdfa": "#e69f00",
    "ssdfa": "#009e73",
    "dkp": "#cc79a7",
    "drtp": "#8c564b",
    "sign_dfa": "#9467bd",
    "shallow": "#999999",
}
_SPARE = ["#17becf", "#bcbd22", "#7f0000", "#004d40", "#f0e442", "#393b79"]
_STYLES = ["-", "--", ":", "-."]
_POINT_COLORS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#8c564b", "#1a1a1a"]

STYLE = {  # readable at the size a paper prints a full-width figure
    "font.size": 12,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "legend.fontsize": 10,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
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


def _figure(kind: str, rows: int = 1, cols: int = 1, **kw):
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=FIGSIZE[kind], squeeze=False, **kw)
    return fig, axes


# -- saving ---------------------------------------------------------------------------------------
def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


def figure_bytes(fig, fmt: str = "png") -> bytes:
    """The figure as PNG, SVG or PDF bytes, without a creation date (same data, same bytes)."""
    buf = io.BytesIO()
    meta = (
        {"Software": None} if fmt == "png" else ({"Date": None} if fmt == "svg" else {"CreationDate": None})
    )
    with plt.rc_context(STYLE):
        fig.savefig(buf, format=_check_format(fmt), dpi=DPI, metadata=meta)  # fixed size, no "tight"
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path, fmt: str | None = None) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a file) and close it."""
    path = Path(path)
    data = figure_bytes(fig, fmt or path.suffix.lstrip(".") or "png")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rundir.open_atomic(path, "wb") as f:
        f.write(data)
    return path
