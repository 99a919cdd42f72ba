"""One page from run, compare, reproduce and sweep directories: markdown, or self-contained HTML.

The page is built once as a list of blocks (headings, paragraphs, tables, figures, commands) and
rendered either as markdown with its figures in ``<name>_figures/`` beside it, or as one HTML
file that embeds every figure as a ``data:`` URI and needs nothing else (no network, no script):
it opens offline and can be mailed as it is.  For each input it holds the results table, the
figures of :mod:`ssdfa.plots`, the settings each row ran with, and the commands that rebuild the
directory and the page; at the end, the machine and library versions that made the page.

The package: ``page`` (the blocks), ``sections`` (one function per section), ``build``
(:func:`build_page` lays them out), ``render`` (markdown, HTML, :func:`write_report`).
"""

from __future__ import annotations

from .build import build_page
from .page import MARKER_HTML, MARKER_MD, Page
from .render import render_html, render_markdown, write_report
from .sections import rebuild_commands

__all__ = [
    "write_report",
    "build_page",
    "render_markdown",
    "render_html",
    "MARKER_MD",
    "MARKER_HTML",
    "Page",
    "rebuild_commands",
]
