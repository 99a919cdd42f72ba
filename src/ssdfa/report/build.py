"""Lay out the page of a report from its inputs (nothing written)."""

from __future__ import annotations

import datetime

from .. import plots, rundata
from ..rundata import Source
from .page import Page
from .sections import (
    _angles,
    _cost,
    _groups_table,
    _loose_runs,
    _machine,
    _reproduction_table,
    _settings,
    _sweep,
    rebuild_commands,
)


def _comparison(page: Page, src: Source, figs: dict, pre: str) -> None:
    """A compare or reproduce directory: its title, the paper's table, the rows, the curves."""
    res = src.results or {}
    title = res.get("title") or ("compare" if src.kind == "compare" else src.kind)
    page.add("h2", f"{'Reproduction' if src.kind == 'reproduce' else 'Comparison'}: {title} (`{src.path}`)")
    if src.kind == "reproduce":
        if res.get("citation"):
            page.add("p", f"Paper: {res['citation']}, {res.get('source', '')}.")
        if res.get("stand_in"):
            page.add("p", f"Note: {res['stand_in']}.")
        if res.get("rows"):
            _reproduction_table(page, res)
        if f"reproduction_{src.tag}" in figs:
            page.add("fig", f"reproduction_{src.tag}", "paper vs ours")
    if src.groups:
        _groups_table(page, src)
    if f"{pre}training_curves" in figs:
        page.add("fig", f"{pre}training_curves", "training curves, mean ± std over seeds")
    _angles(page, src, figs, pre)
    if res.get("notes"):
        page.add("p", f"Setup: {res['notes']}")


def _source(page: Page, src: Source, figs: dict, pre: str) -> None:
    """Every block of one input directory."""
    if src.kind == "runs":
        _loose_runs(page, src, figs)
        if f"{pre}training_curves" in figs:
            page.add("fig", f"{pre}training_curves", "training curves")
        _angles(page, src, figs, pre)
    elif src.kind == "sweep":
        _sweep(page, src, figs)
    else:
        _comparison(page, src, figs, pre)
    if f"{pre}first_conv_filters" in figs:
        page.add("h3", "First convolutional layer (SSDFA paper, Fig. 7)")
        page.add("fig", f"{pre}first_conv_filters", "first-layer filters")
    if src.kind != "sweep":
        _settings(page, src)
    page.add("h3", "Commands that rebuild it")
    page.add("code", rebuild_commands(src))


def build_page(paths, *, costs: bool = True, log=None, command: str | None = None) -> Page:
    """Read and validate every input, draw its figures and lay out the page (nothing written)."""
    log = log or (lambda m: None)
    sources = paths if all(isinstance(p, Source) for p in paths) else rundata.read_inputs(paths)
    paths = [str(s.path) if s.path else s.name for s in sources] if sources is paths else paths
    page = Page()
    for stem, fig in plots.build_figures(sources, costs=costs, log=log):
        page.figures[stem] = fig
    figs = page.figures
    several = len(sources) > 1
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page.add("h1", "ssdfa report")
    page.add("p", f"Generated {when} from: " + ", ".join(f"`{p}`" for p in paths))
    for src in sources:
        _source(page, src, figs, f"{src.tag}_" if several else "")
    if "cost_fig8" in figs:
        _cost(page, figs)
    page.add("h2", "How this page was made")
    if command:
        page.add("code", [command])
    page.add("table", ["", "version"], _machine())
    return page
