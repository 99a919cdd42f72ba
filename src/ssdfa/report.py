"""One markdown page from run and sweep directories: tables, and the figures of :mod:`ssdfa.plots`."""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

from . import plots

__all__ = ["write_report"]


def _fmt_acc(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    v = float(v)
    return f"{100 * v:.2f}" if v <= 1 else f"{v:.2f}"


def _fmt(v, spec=".1f"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(float(v), spec)


def _img(md_dir: Path, png: Path, alt: str) -> str:
    return f"![{alt}]({Path(os.path.relpath(png, md_dir)).as_posix()})"


def _runs_section(runs, md_dir, figs) -> list[str]:
    lines = ["## Runs", "",
             "| run | method | dataset | model | epochs | final test acc (%) | best test acc (%) "
             "| final train loss | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c, s = r["config"], r["summary"]
        last = r["metrics"][-1] if r["metrics"] else {}
        lines.append(
            f"| {r['dir'].name} | {r['label']} | {c.get('dataset', '–')} | {c.get('model', '–')} "
            f"| {s.get('epochs', len(r['metrics']))} "
            f"| {_fmt_acc(s.get('final_test_acc', last.get('test_acc')))} "
            f"| {_fmt_acc(s.get('best_test_acc'))} "
            f"| {_fmt(s.get('train_loss', last.get('train_loss')), '.4f')} "
            f"| {_fmt(s.get('seconds'), '.1f')} |")
    lines += ["", _img(md_dir, figs["training_curves.png"], "training curves"), ""]
    return lines


def _angles_section(runs, md_dir, figs) -> list[str]:
    keyed = [(r, plots.angle_keys(r["metrics"])) for r in runs]
    keyed = [(r, ks) for r, ks in keyed if ks]
    if not keyed:
        return []
    lines = ["## Alignment with backprop", "",
             "Angles in degrees at the last epoch (0° = the BP direction, 90° = orthogonal). "
             "`dz/` is the signal at each hidden layer's pre-activation (the DRTP paper's δz, "
             "Figs. 2-3), `delta/` the signal arriving at each feedback point and `dW/` each "
             "weight's update, all against exact BP on the same batch and weights; "
             "`eq14/` is ∠(B_l, W_n⋯W_{l+1}) (SSDFA paper, Eq. 14); `dkp/` is ∠(h_l·B_lᵀ, output "
             "pre-activation) (DKP paper, Fig. 2).", ""]
    for r, ks in keyed:
        last = r["metrics"][-1]
        ks = [k for k in ks if not k.endswith(".bias")]
        lines += [f"**{r['label']}** ({r['dir'].name})", "", "| angle | degrees |", "|---|---|"]
        lines += [f"| {k[len('angle/'):]} | {_fmt(last.get(k))} |" for k in ks]
        png = figs.get(f"angles_{r['dir'].name}.png")
        lines += ["", _img(md_dir, png, f"angles {r['label']}") if png else "", ""]
    return lines


def _sweep_section(d: Path, sw: dict, md_dir, figs) -> list[str]:
    base = sw.get("base", {})
    lines = [f"## Sweep: {base.get('method', '')} on {base.get('dataset', '')} ({d.name})", "",
             f"{len(sw.get('seeds', []))} seeds per cell; mean ± std.", "",
             "| rank | sparsity | runs | test acc (%) | angle Eq. 14 (°) | angle δ vs BP (°) |",
             "|---|---|---|---|---|---|"]
    for c in sw.get("cells", []):
        acc_m, acc_s = c.get("test_acc_mean"), c.get("test_acc_std")
        scale = 100 if acc_m is not None and acc_m <= 1 else 1
        acc = "–" if acc_m is None else f"{scale * acc_m:.2f} ± {scale * (acc_s or 0):.2f}"
        lines.append(f"| {c['rank']} | {c['sparsity']:g} | {c['n']} | {acc} "
                     f"| {_fmt(c.get('angle_eq14_mean'))} ± {_fmt(c.get('angle_eq14_std'))} "
                     f"| {_fmt(c.get('angle_delta_mean'))} ± {_fmt(c.get('angle_delta_std'))} |")
    for s in sw.get("skipped", []):
        lines.append(f"\nSkipped rank {s['rank']}, sparsity {s['sparsity']:g}: {s['reason']}.")
    png = figs.get(f"sweep_{d.name}.png")
    if png:
        lines += ["", _img(md_dir, png, "sweep"), ""]
    return lines + [""]


def _cost_section(md_dir, figs) -> list[str]:
    costs = plots.paper_costs()
    lines = ["## Hardware cost (SSDFA paper, Table I and Fig. 8)", "",
             "One training example's backward pass; only the FC layers train (the paper's Fig. 8 "
             "scope); words of 32 bits. Conventions and differences from the paper: "
             "`docs/cost-model.md`; any model: `ssdfa cost --model NAME --dataset NAME`.", "",
             "| network | method | MACs (M) | reads (M words) | writes (M words) "
             "| movement (words) | feedback (words) |",
             "|---|---|---|---|---|---|---|"]
    for title, res in costs.items():
        for m, v in res.items():
            t = v["totals"]
            lines.append(f"| {title} | {m} | {t['macs'] / 1e6:.2f} | {t['reads'] / 1e6:.2f} "
                         f"| {t['writes'] / 1e6:.2f} | {t['movement']:,} | {t['feedback']:,} |")
    lines.append("")
    for title, res in costs.items():
        t = {m: v["totals"] for m, v in res.items()}
        lines.append(f"- {title}: movement BP/SSDFA {t['bp']['movement'] / t['ssdfa']['movement']:,.0f}×, "
                     f"DFA/SSDFA {t['dfa']['movement'] / t['ssdfa']['movement']:,.0f}×; "
                     f"MACs BP/SSDFA {t['bp']['macs'] / t['ssdfa']['macs']:.2f}×")
    png = figs.get("cost_fig8.png")
    lines += ["", _img(md_dir, png, "cost bars") if png else "", ""]
    return lines


def write_report(paths, out_md, *, figures_dir=None) -> Path:
    """Write ``out_md`` (figures into ``figures_dir``, default ``<out_md stem>_figures/``)."""
    out_md = Path(out_md)
    md_dir = out_md.parent
    md_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = Path(figures_dir) if figures_dir else md_dir / f"{out_md.stem}_figures"
    written = plots.plot_runs(paths, fig_dir)
    figs = {p.name: p for p in written}
    runs = [plots.load_run(p) for p in paths if not plots.is_sweep(p)]
    sweeps = [(Path(p), json.loads((Path(p) / "sweep.json").read_text()))
              for p in paths if plots.is_sweep(p)]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# ssdfa report", "", f"Generated {when} from: "
             + ", ".join(f"`{p}`" for p in paths), ""]
    if runs:
        lines += _runs_section(runs, md_dir, figs)
        lines += _angles_section(runs, md_dir, figs)
        if "first_conv_filters.png" in figs:
            lines += ["## First convolutional layer (SSDFA paper, Fig. 7)", "",
                      _img(md_dir, figs["first_conv_filters.png"], "first-layer filters"), ""]
    for d, sw in sweeps:
        lines += _sweep_section(d, sw, md_dir, figs)
    lines += _cost_section(md_dir, figs)
    out_md.write_text("\n".join(lines) + "\n")
    return out_md
