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

The package: ``style`` (colours, sizes, fonts, saving), ``curves`` (training curves, angles),
``results`` (reproduction table, sweep), ``costs`` (Fig. 8), ``filters`` (Fig. 7); this module
picks the figures a set of inputs calls for (:func:`build_figures`) and writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from .. import rundata
from ..rundata import Group, Source, first_conv_weight, is_sweep, load_run  # noqa: F401
from .costs import figure_cost_bars, paper_costs
from .curves import angle_keys, figure_angles, figure_curves
from .filters import figure_filters
from .results import _metric_words, figure_reproduction, figure_sweep  # noqa: F401
from .style import (  # noqa: F401
    DPI,
    FIGSIZE,
    FORMATS,
    RULE_COLORS,
    STYLE,
    _check_format,
    figure_bytes,
    rule_color,
    save_figure,
)

__all__ = [
    "DPI",
    "FIGSIZE",
    "FORMATS",
    "RULE_COLORS",
    "rule_color",
    "load_run",
    "is_sweep",
    "plot_training_curves",
    "plot_angles",
    "plot_sweep",
    "plot_cost_bars",
    "plot_filters",
    "first_conv_weight",
    "paper_costs",
    "plot_runs",
    "build_figures",
    "save_figure",
    "angle_keys",
    "figure_bytes",
    "nothing_to_draw",
]


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
class _UniqueNames:
    """Figure names, each handed out once: a clash gets ``-2``, ``-3``, ..."""

    def __init__(self):
        self.names: set[str] = set()

    def __call__(self, stem: str) -> str:
        out, k = stem, 2
        while out in self.names:  # e.g. a source "a_b" with row "c" and a source "a" with row "b_c"
            out, k = f"{stem}-{k}", k + 1
        self.names.add(out)
        return out


def _first_conv_filters(sources: list[Source]) -> dict[str, dict]:
    """{source tag: {row label: first conv weight}} for every row whose checkpoint has one."""
    filters: dict[str, dict] = {}
    for src in sources:
        for g in src.groups:
            if g.runs and src.kind != "sweep":
                w = first_conv_weight(g.runs[0]["dir"])
                if w is not None:
                    filters.setdefault(src.tag, {})[g.label] = w
    return filters


def _sweep_figures(src: Source, name, log) -> Iterator[tuple[str, object]]:
    fig = figure_sweep(src.sweep)
    if fig is None:
        log(f"{src.path}: the sweep has no completed cell yet; no sweep figure")
    else:
        yield name(f"sweep_{src.tag}"), fig


def _reproduction_figures(src: Source, name) -> Iterator[tuple[str, object]]:
    """The reproduction's table as a figure; returns True when it reproduces costs (Fig. 8)."""
    fig = figure_reproduction(src.results, {g.label: g.method for g in src.groups})
    if fig is not None:
        yield name(f"reproduction_{src.tag}"), fig
    return "quantity" in src.results["rows"][0]  # reproduce ssdfa-cost: Fig. 8 is what it reproduces


def _run_figures(src: Source, pre: str, filters: dict, name, log) -> Iterator[tuple[str, object]]:
    """Curves, angles, filters and the reproduction figure of one non-sweep source; returns
    whether the source calls for the cost figure."""
    loose = src.kind == "runs"
    results = src.results or {}
    title = "" if loose else f"{src.name}: " + (results.get("title") or results.get("experiment") or src.kind)
    fig = figure_curves(src.groups, title, loose=loose, log=log)
    if fig is not None:
        yield name(f"{pre}training_curves"), fig
    for g in src.groups:
        fig = figure_angles(g, loose=loose) if g.runs else None
        if fig is not None:
            yield name(f"{pre}angles_{g.tag}"), fig
    if src.tag in filters:
        yield name(f"{pre}first_conv_filters"), figure_filters(filters[src.tag])
    want_cost = False
    if src.kind == "reproduce" and src.results.get("rows"):
        want_cost = yield from _reproduction_figures(src, name)
    if not loose and not src.groups and src.kind != "reproduce":
        log(f"{src.path}: no run has logged an epoch yet; nothing to draw")
    return want_cost


def build_figures(
    sources: list[Source], *, costs: bool = False, log: Callable[[str], None] | None = None
) -> Iterator[tuple[str, object]]:
    """``(name, figure)`` for every figure the sources call for, one at a time (names unique)."""
    log = log or (lambda m: None)
    several = len(sources) > 1
    name = _UniqueNames()
    want_cost = costs
    filters = _first_conv_filters(sources)  # every checkpoint read (and checked) before the first figure
    for src in sources:
        for g in src.groups:
            for r, why in g.left_out:
                log(f"{r['dir']}: left out of the figures ({why})")
        if src.kind == "sweep":
            yield from _sweep_figures(src, name, log)
            continue
        pre = f"{src.tag}_" if several else ""
        if (yield from _run_figures(src, pre, filters, name, log)):
            want_cost = True
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
    return [
        save_figure(fig, out / f"{stem}.{fmt}", fmt)
        for stem, fig in build_figures(sources, costs=costs, log=log)
    ]
