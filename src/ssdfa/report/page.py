"""The page a report is: a list of blocks (headings, paragraphs, tables, figures, commands)."""

from __future__ import annotations

from dataclasses import dataclass, field

MARKER_MD = "# ssdfa report"  # first line of every markdown report: marks a file as ours
MARKER_HTML = '<meta name="generator" content="ssdfa report">'


@dataclass
class Page:
    blocks: list[tuple] = field(default_factory=list)  # ("h1"|"h2"|"h3"|"p"|"table"|"fig"|"code", ...)
    figures: dict[str, object] = field(default_factory=dict)  # name -> matplotlib figure

    def add(self, *block):
        self.blocks.append(block)
