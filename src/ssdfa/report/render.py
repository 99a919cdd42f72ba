"""A report page rendered as markdown (figures in a folder beside it) or as one HTML file."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from .. import plots, rundir
from .build import build_page
from .page import MARKER_HTML, Page


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(page: Page, fig_files: dict[str, Path], md_dir: Path) -> str:
    lines: list[str] = []
    for b in page.blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += [f"{'#' * int(kind[1])} {b[1]}", ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "table":
            head, rows = b[1], b[2]
            lines.append("| " + " | ".join(map(_md_cell, head)) + " |")
            lines.append("|" + "---|" * len(head))
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            lines.append("")
        elif kind == "fig":
            rel = Path(os.path.relpath(fig_files[b[1]], md_dir)).as_posix()
            alt = b[2].replace("(", "").replace(")", "").replace("[", "").replace("]", "")
            lines += [f"![{alt}]({rel})", ""]
        elif kind == "code":
            lines += ["```bash", *b[1], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;max-width:1180px;
margin:2em auto;padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
pre{background:#f6f6f6;padding:.7em;overflow-x:auto;font-size:.88em}code{font-size:.92em}
"""


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** in a paragraph, the rest escaped."""
    out, parts = [], str(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            bits = html.escape(part).split("**")
            out.append("".join(f"<strong>{s}</strong>" if j % 2 else s for j, s in enumerate(bits)))
    return "".join(out)


def render_html(page: Page, fig_data: dict[str, tuple[str, bytes]]) -> str:
    """One self-contained page: every figure a ``data:`` URI (``fig_data``: name -> (mime, bytes))."""
    body = []
    title = "ssdfa report"
    for b in page.blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "fig":
            mime, data = fig_data[b[1]]
            uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            body.append(
                f'<figure id="{html.escape(b[1])}"><img src="{uri}" alt="{html.escape(b[2])}">'
                f"<figcaption>{html.escape(b[2])} ({html.escape(b[1])})</figcaption></figure>"
            )
        elif kind == "code":
            body.append("<pre><code>" + html.escape("\n".join(b[1])) + "</code></pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'{MARKER_HTML}\n<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


_MIME = {"png": "image/png", "svg": "image/svg+xml"}


def write_report(
    paths,
    out,
    *,
    figures_dir=None,
    html_page: bool = False,
    fmt: str = "png",
    costs: bool = True,
    log=None,
    command: str | None = None,
) -> Path:
    """Write the report to ``out``: markdown with figures in ``figures_dir`` (default
    ``<out stem>_figures/``), or with ``html_page`` one self-contained HTML file.

    Every input is read and checked and every figure drawn before the first file is written;
    files are replaced atomically, so a failure leaves the previous report whole.
    """
    plots._check_format(fmt)
    if html_page and fmt not in _MIME:
        raise ValueError(f"an HTML page shows png or svg figures, not {fmt}")
    page = build_page(paths, costs=costs, log=log, command=command)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if html_page:
        data = {name: (_MIME[fmt], plots.figure_bytes(fig, fmt)) for name, fig in page.figures.items()}
        rundir.write_text_atomic(out, render_html(page, data))
        return out
    fig_dir = Path(figures_dir) if figures_dir else out.parent / f"{out.stem}_figures"
    blobs = {name: plots.figure_bytes(fig, fmt) for name, fig in page.figures.items()}
    files = {}
    if blobs:
        fig_dir.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        files[name] = fig_dir / f"{name}.{fmt}"
        with rundir.open_atomic(files[name], "wb") as f:
            f.write(data)
    rundir.write_text_atomic(out, render_markdown(page, files, out.parent))
    return out
