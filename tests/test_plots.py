"""Plots and report from run directories written here: non-empty PNGs of the right size."""

import json
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa import plots
from ssdfa.alignment import alignment_angles
from ssdfa.cli import main
from ssdfa.report import write_report
from ssdfa.sweep import run_sweep


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def expected(kind):
    w, h = plots.FIGSIZE[kind]
    return (round(w * plots.DPI), round(h * plots.DPI))


def tiny_run(out, method, epochs=2):
    """A real (tiny) training run with the engine, written in the run-directory format."""
    out.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 6, 6, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 2)
    )
    model = ssdfa.convert(net, method=method, num_classes=2, input_shape=(3, 6, 6), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rows = []
    for ep in range(1, epochs + 1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ang = alignment_angles(model, x[:16], y[:16])
        acc = (model(x).argmax(1) == y).float().mean().item()
        rows.append(
            {
                "epoch": ep,
                "train_loss": loss.item(),
                "train_acc": acc,
                "test_loss": loss.item(),
                "test_acc": acc,
                "seconds": 0.01,
                **{f"angle/{k}": v for k, v in ang.items()},
            }
        )
    (out / "metrics.json").write_text(json.dumps(rows))
    (out / "config.json").write_text(json.dumps({"method": method, "dataset": "toy", "model": "tiny"}))
    (out / "summary.json").write_text(
        json.dumps(
            {
                "final_test_acc": acc,
                "best_test_acc": acc,
                "train_loss": loss.item(),
                "epochs": epochs,
                "seconds": 0.02,
            }
        )
    )
    torch.save({"model": model.state_dict()}, out / "checkpoint.pt")
    return out


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [tiny_run(root / m, m) for m in ("bp", "dfa")]


def test_plot_runs_writes_sized_pngs(run_dirs, tmp_path):
    files = {p.name: p for p in plots.plot_runs(run_dirs, tmp_path / "figs")}
    assert set(files) == {
        "training_curves.png",
        "angles_bp.png",
        "angles_dfa.png",
        "first_conv_filters.png",
        "cost_fig8.png",
    }
    kinds = {
        "training_curves.png": "curves",
        "angles_bp.png": "angles",
        "angles_dfa.png": "angles",
        "first_conv_filters.png": "filters",
        "cost_fig8.png": "cost",
    }
    for name, kind in kinds.items():
        assert files[name].stat().st_size > 5000, name
        assert png_size(files[name]) == expected(kind), name


def test_first_conv_weight_is_the_first_layer(run_dirs):
    w = plots.first_conv_weight(run_dirs[0])
    assert w.shape == (4, 3, 3, 3)
    assert plots.first_conv_weight(run_dirs[0].parent) is None  # no checkpoint there


def test_metrics_csv_is_read_too(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.csv").write_text(
        "epoch,train_loss,test_acc,angle/delta/point0\n1,2.0,0.5,80\n2,1.0,0.6,70\n"
    )
    run = plots.load_run(d)
    assert run["metrics"][1]["angle/delta/point0"] == 70.0
    assert png_size(plots.plot_angles(run, tmp_path / "a.png")) == expected("angles")
    empty = dict(run, metrics=[{"epoch": 1, "train_loss": 1.0}])
    assert plots.plot_angles(empty, tmp_path / "b.png") is None


def test_sweep_plot(tmp_path):
    def fake(fields):
        acc = 0.5 + 0.02 * fields["rank"] + 0.01 * fields["seed"]
        return {"final_test_acc": acc, "best_test_acc": acc}

    run_sweep(
        tmp_path / "sw",
        {"method": "sdfa", "dataset": "mnist"},
        [1, 2, 10],
        [0.0, 0.5],
        [0, 1],
        10,
        train=fake,
        log=lambda m: None,
    )
    files = plots.plot_runs([tmp_path / "sw"], tmp_path / "figs", costs=False)
    assert [f.name for f in files] == ["sweep_sw.png"]
    assert png_size(files[0]) == expected("sweep")


def test_report_embeds_figures_and_tables(run_dirs, tmp_path):
    md = write_report(run_dirs, tmp_path / "rep" / "report.md")
    text = md.read_text()
    assert "| bp | bp | toy |" in text
    assert "delta/point0" in text and "eq14/point0" in text
    assert "movement BP/SSDFA" in text
    images = [line[line.index("(") + 1 : -1] for line in text.splitlines() if line.startswith("![")]
    assert len(images) == 5
    for rel in images:
        assert (md.parent / rel).stat().st_size > 5000


def test_cli_plot_and_report(run_dirs, tmp_path, capsys):
    assert main(["plot", *map(str, run_dirs), "--out", str(tmp_path / "p"), "--no-cost"]) == 0
    assert "training_curves.png" in capsys.readouterr().out
    assert main(["report", *map(str, run_dirs), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").exists()
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
