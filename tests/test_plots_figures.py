"""Figures of compare, reproduce and sweep directories, read back from matplotlib's artists.

The directories are real: ``ssdfa compare`` and ``ssdfa sweep`` train tiny runs on digits; the
reproduction's rows come from ``reproduce.rows_for`` over seed runs written here.  Every
expected number is computed in this file with numpy from the runs' own ``metrics.json`` and
``summary.json``, never with ssdfa's aggregation code.
"""

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import matplotlib.pyplot as plt
import numpy as np
import pytest

from figdirs import fake_reproduction
from ssdfa import plots, rundata
from ssdfa.cli import main
from ssdfa.experiments import get

FAST = [
    "--dataset",
    "digits",
    "--epochs",
    "3",
    "--limit-train",
    "300",
    "--threads",
    "1",
    "--quiet",
    "--alignment",
    "1",
]


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "C"
    assert main(["compare", "--methods", "bp,dfa,ssdfa", "--seeds", "3", *FAST, "--out-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sw") / "S"
    assert (
        main(
            [
                "sweep",
                "--rank",
                "1,10",
                "--sparsity",
                "0,0.5",
                "--seeds",
                "2",
                "--method",
                "sdfa",
                "--dataset",
                "digits",
                "--epochs",
                "2",
                "--limit-train",
                "200",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def figures(paths, **kw):
    return dict(plots.build_figures(rundata.read_inputs(paths), **kw))


@pytest.fixture(scope="module")
def cmp_figs(compare_dir):
    return figures([compare_dir])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def seed_values(group_dir: Path, key: str, scale=1.0):
    """(epochs, values[seed, epoch]) straight from each seed's metrics.json."""
    runs = sorted(group_dir.glob("seed*"))
    rows = [json.loads((r / "metrics.json").read_text()) for r in runs]
    epochs = [row["epoch"] for row in rows[0]]
    return np.array(epochs), scale * np.array([[row[key] for row in rs] for rs in rows])


def band_of(ax, gid):
    """(x, lower, upper) of the fill_between tagged ``gid``, from its polygon's vertices."""
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, f"{gid}: {len(found)} bands"
    v = found[0].get_paths()[0].vertices
    xs = np.unique(v[:, 0])
    lo = np.array([v[v[:, 0] == x, 1].min() for x in xs])
    hi = np.array([v[v[:, 0] == x, 1].max() for x in xs])
    return xs, lo, hi


def line_of(ax, gid):
    found = [ln for ln in ax.lines if ln.get_gid() == gid]
    assert len(found) == 1, gid
    return np.asarray(found[0].get_xdata(), float), np.asarray(found[0].get_ydata(), float)


def panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_title().startswith(title))


# -- compare ----------------------------------------------------------------------------------------
def test_compare_figures_named_and_only_those(compare_dir, tmp_path):
    assert main(["plot", str(compare_dir), "--out", str(tmp_path / "p")]) == 0
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    # bp, dfa and ssdfa logged angles; an MLP has no conv layer; no cost bars unless asked
    assert names == ["angles_bp.png", "angles_dfa.png", "angles_ssdfa.png", "training_curves.png"]
    one = compare_dir / "dfa" / "seed0"
    assert main(["plot", str(one), "--out", str(tmp_path / "q"), "--cost"]) == 0
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "angles_seed0.png",
        "cost_fig8.png",
        "training_curves.png",
    ]


def test_compare_legend_one_entry_per_method_with_seed_count(cmp_figs):
    fig = cmp_figs["training_curves"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["bp (3 seeds)", "dfa (3 seeds)", "ssdfa (3 seeds)"]


@pytest.mark.parametrize(
    "key,title,scale",
    [
        ("test_acc", "test accuracy", 100.0),
        ("train_loss", "train loss", 1.0),
        ("train_acc", "train accuracy", 100.0),
        ("test_loss", "test loss", 1.0),
    ],
)
def test_compare_band_is_the_std_of_the_seeds(compare_dir, cmp_figs, key, title, scale):
    fig = cmp_figs["training_curves"]
    ax = panel(fig, title)
    for method in ("bp", "dfa", "ssdfa"):
        epochs, vals = seed_values(compare_dir / method, key, scale)
        mean, std = vals.mean(0), vals.std(0, ddof=1)
        assert std.max() > 0, "seeds should differ"
        label = f"{method} (3 seeds)"
        x, lo, hi = band_of(ax, f"band:{label}")
        np.testing.assert_allclose(x, epochs)
        np.testing.assert_allclose(lo, mean - std, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(hi, mean + std, rtol=1e-6, atol=1e-9)
        x, y = line_of(ax, f"mean:{label}")
        np.testing.assert_allclose(y, mean, rtol=1e-9)


def test_angle_band_per_point_is_the_std_of_the_seeds(compare_dir, cmp_figs):
    fig = cmp_figs["angles_dfa"]
    assert "dfa, mean ± std over 3 seeds" in fig._suptitle.get_text()
    ax = panel(fig, r"$\angle(B_l")  # Eq. 14
    epochs, vals = seed_values(compare_dir / "dfa", "angle/eq14/point0")
    x, lo, hi = band_of(ax, "band:point0")
    np.testing.assert_allclose(lo, vals.mean(0) - vals.std(0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(hi, vals.mean(0) + vals.std(0, ddof=1), rtol=1e-6)
    assert ax.get_ylabel() == "angle (degrees)"


def test_diverged_seed_is_left_out_and_said(compare_dir, tmp_path):
    c = tmp_path / "C"
    shutil.copytree(compare_dir, c)
    s = c / "dfa" / "seed1" / "summary.json"
    s.write_text(json.dumps(json.loads(s.read_text()) | {"status": "diverged"}))
    fig = figures([c])["training_curves"]
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[1] == "dfa (2 seeds), 1 left out (diverged)"
    _, vals = seed_values(c / "dfa", "test_acc", 100.0)
    vals = vals[[0, 2]]
    _, lo, hi = band_of(panel(fig, "test accuracy"), f"band:{texts[1]}")
    np.testing.assert_allclose(hi - lo, 2 * vals.std(0, ddof=1), rtol=1e-6)


def test_single_runs_of_one_method_labelled_by_seed_names_unique(compare_dir, tmp_path):
    runs = [compare_dir / "dfa" / "seed0", compare_dir / "dfa" / "seed1"]
    fig = figures(runs)["training_curves"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["dfa seed 0", "dfa seed 1"]
    # issue 18 item 6: two runs called seed0 lose no figure
    out = tmp_path / "p"
    assert (
        main(
            [
                "plot",
                str(compare_dir / "dfa" / "seed0"),
                str(compare_dir / "ssdfa" / "seed0"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "angles_dfa_seed0.png",
        "angles_ssdfa_seed0.png",
        "training_curves.png",
    ]


def test_colours_fixed_per_rule_across_figures(compare_dir, cmp_figs):
    cmp_fig = cmp_figs["training_curves"]
    solo = figures([compare_dir / "ssdfa" / "seed2"])["training_curves"]
    ax = panel(cmp_fig, "test accuracy")
    for method in ("bp", "dfa", "ssdfa"):
        (ln,) = [ln for ln in ax.lines if ln.get_gid() == f"mean:{method} (3 seeds)"]
        assert ln.get_color() == plots.RULE_COLORS[method]
    assert panel(solo, "test accuracy").lines[0].get_color() == plots.RULE_COLORS["ssdfa"]
    assert len(set(plots.RULE_COLORS.values())) == len(plots.RULE_COLORS)


def test_axis_labels_carry_units(cmp_figs):
    fig = cmp_figs["training_curves"]
    assert panel(fig, "test accuracy").get_ylabel() == "accuracy (%)"
    assert panel(fig, "train loss").get_ylabel() == "cross-entropy (nats)"
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    assert all(t.get_fontsize() >= 10 for ax in fig.axes for t in ax.get_xticklabels())


def test_two_compares_prefix_their_figures(compare_dir, tmp_path):
    other = tmp_path / "x" / "C"
    shutil.copytree(compare_dir, other)
    names = set(figures([compare_dir, other]))
    assert len(names) == 8
    assert {n for n in names if n.endswith("training_curves")} == {
        "cmp0_C_training_curves",
        "x_C_training_curves",
    }


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_vector_formats(compare_dir, tmp_path, fmt):
    out = tmp_path / fmt
    runs = [compare_dir / "dfa" / "seed0", compare_dir / "dfa" / "seed1"]
    assert main(["plot", *map(str, runs), "--out", str(out), "--format", fmt]) == 0
    files = sorted(out.iterdir())
    assert [p.suffix for p in files] == [f".{fmt}"] * 3
    data = (out / f"training_curves.{fmt}").read_bytes()
    if fmt == "pdf":
        assert data.startswith(b"%PDF")
    else:
        root = ElementTree.fromstring(data)
        text = "".join(root.itertext())
        assert "dfa seed 1" in text and "accuracy (%)" in text  # text kept as text


# -- reproduce --------------------------------------------------------------------------------------
def test_reproduction_figure_paper_vs_ours(tmp_path):
    accs = {"bp": [0.90, 0.93, 0.95], "dfa": [0.80, 0.86, 0.83]}
    r = fake_reproduction(tmp_path / "R", accs)
    figs = figures([r])
    assert set(figs) == {"training_curves", "reproduction_R"}
    fig = figs["reproduction_R"]
    ax = panel(fig, "test accuracy per row")
    paper = get("dfa-mlp").paper()
    for i, (method, vals) in enumerate(accs.items()):
        v = 100 * np.array(vals)
        (bars,) = [c for c in ax.collections if c.get_gid() == f"band:{method}"]
        (seg,) = bars.get_segments()
        np.testing.assert_allclose(
            sorted(seg[:, 1]), [v.mean() - v.std(ddof=1), v.mean() + v.std(ddof=1)], rtol=1e-9
        )
        diamonds = [ln for ln in ax.lines if ln.get_marker() == "D"]
        assert diamonds[i].get_ydata()[0] == paper[method]
        assert diamonds[i].get_markeredgecolor() == plots.RULE_COLORS[method]
    gx = panel(fig, "gap to BP")
    heights = sorted(round(p.get_height(), 6) for p in gx.patches)
    ours_gap = 100 * (np.mean(accs["dfa"]) - np.mean(accs["bp"]))
    assert heights == sorted([round(paper["dfa"] - paper["bp"], 6), round(ours_gap, 6)])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "paper",
        "ours: mean ± std over seeds",
        "paper's gap",
        "our gap",
    ]


# -- sweep ------------------------------------------------------------------------------------------
def test_sweep_figure_bands_from_the_cells(sweep_dir):
    figs = figures([sweep_dir])
    assert list(figs) == ["sweep_S"]
    fig = figs["sweep_S"]
    cells = {}
    for d in sorted((sweep_dir / "cells").iterdir()):
        r, s, _ = d.name.split("_")
        summary = json.loads((d / "summary.json").read_text())
        last = json.loads((d / "metrics.json").read_text())[-1]
        eq14 = np.mean([v for k, v in last.items() if k.startswith("angle/eq14/")])
        cells.setdefault((int(r[1:]), float(s[1:])), []).append((100 * summary["final_test_acc"], eq14))
    acc_rank = fig.axes[0]
    assert acc_rank.get_xlabel() == "rank of B" and acc_rank.get_ylabel() == "test accuracy (%)"
    assert (1, 0.5) not in cells  # rank·connectivity < 1: skipped by the sweep
    for sparsity in (0.0,):
        v = np.array([[a for a, _ in cells[(r, sparsity)]] for r in (1, 10)])  # (rank, seed)
        x, lo, hi = band_of(acc_rank, f"band:acc-vs-rank:sparsity {sparsity:g}")
        np.testing.assert_allclose(x, [1, 10])
        np.testing.assert_allclose(lo, v.mean(1) - v.std(1, ddof=1), rtol=1e-6)
        np.testing.assert_allclose(hi, v.mean(1) + v.std(1, ddof=1), rtol=1e-6)
    angle_sp = fig.axes[3]
    v = np.array([[a for _, a in cells[(10, s)]] for s in (0.0, 0.5)])
    _, lo, hi = band_of(angle_sp, "band:angle-vs-sparsity:rank 10")
    np.testing.assert_allclose(hi - lo, 2 * v.std(1, ddof=1), rtol=1e-6)
    assert angle_sp.get_ylabel() == "angle (degrees)"


def test_run_and_sweep_together(compare_dir, sweep_dir, tmp_path):
    out = tmp_path / "p"
    assert main(["plot", str(compare_dir / "bp" / "seed0"), str(sweep_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "runs_angles_seed0.png",
        "runs_training_curves.png",
        "sweep_S.png",
    ]
