"""Rank × sparsity sweep: invalid cells skipped with a reason, resumable, mean ± std."""

import json
import math

import pytest

from ssdfa.cli import main
from ssdfa.sweep import aggregate, cell_problem, final_angles, run_sweep


def test_cell_problem():
    assert cell_problem(1, 0.0, 10) is None  # rank 1, dense rows: S·R = 10
    assert cell_problem(2, 0.5, 10) is None  # 5 × 2 = 10
    assert "< 1" in cell_problem(1, 0.5, 10)  # 5 × 1 < 10
    assert "< 1" in cell_problem(5, 0.9, 10)  # 1 × 5 < 10
    assert cell_problem(10, 0.9, 10) is None  # SSDFA, full rank
    assert "rank 11 > 10" in cell_problem(11, 0.0, 10)


class FakeTrainer:
    """Stands in for ssdfa.training.run: writes the run-directory files, counts calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, fields):
        from pathlib import Path

        self.calls.append(fields)
        d = Path(fields["out_dir"])
        d.mkdir(parents=True)
        acc = 0.5 + 0.01 * fields["rank"] + 0.001 * fields["seed"]
        metrics = [
            {
                "epoch": 1,
                "train_loss": 1.0,
                "test_acc": acc,
                "angle/eq14/point0": 80.0 - fields["rank"],
                "angle/eq14/point1": 60.0,
                "angle/delta/point0": 70.0,
            }
        ]
        (d / "metrics.json").write_text(json.dumps(metrics))
        summary = {
            "final_test_acc": acc,
            "best_test_acc": acc,
            "train_loss": 1.0,
            "epochs": 1,
            "seconds": 0.1,
        }
        (d / "summary.json").write_text(json.dumps(summary))
        return summary


def test_sweep_skips_resumes_and_aggregates(tmp_path):
    fake = FakeTrainer()
    messages = []
    base = {"method": "sdfa", "dataset": "mnist", "epochs": 1}
    res = run_sweep(tmp_path, base, [1, 2, 10], [0.0, 0.5, 0.9], [0, 1], 10, train=fake, log=messages.append)
    # invalid: (1, 0.5), (1, 0.9), (2, 0.9) -> 6 valid cells × 2 seeds
    assert {(s["rank"], s["sparsity"]) for s in res["skipped"]} == {(1, 0.5), (1, 0.9), (2, 0.9)}
    assert any("skipping rank=1 sparsity=0.5" in m and "< 1" in m for m in messages)
    assert len(fake.calls) == 12
    assert all(c["sparsity"] is not None for c in fake.calls)  # 0 stays 0, not the rule default
    assert fake.calls[0]["method"] == "sdfa" and fake.calls[0]["epochs"] == 1
    cell = next(c for c in res["cells"] if c["rank"] == 2 and c["sparsity"] == 0.5)
    assert cell["n"] == 2
    assert cell["test_acc_mean"] == pytest.approx(0.52 + 0.0005)
    assert cell["test_acc_std"] == pytest.approx(math.sqrt(2 * 0.0005**2))
    assert cell["angle_eq14_mean"] == pytest.approx((78 + 60) / 2)
    # files written
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["kind"] == "sweep" and len(data["runs"]) == 12
    assert (tmp_path / "sweep.csv").read_text().count("\n") == 13
    # resume: nothing re-run; one more seed runs only the new cells
    res2 = run_sweep(
        tmp_path, base, [1, 2, 10], [0.0, 0.5, 0.9], [0, 1, 2], 10, train=fake, log=messages.append
    )
    assert len(fake.calls) == 12 + 6
    assert len(res2["runs"]) == 18


def test_final_angles_and_aggregate_edge_cases():
    assert math.isnan(final_angles([])["angle_eq14"])
    rows = [
        {
            "rank": 1,
            "sparsity": 0.0,
            "test_acc": 0.5,
            "best_test_acc": 0.5,
            "angle_eq14": math.nan,
            "angle_delta": 10.0,
        }
    ]
    (cell,) = aggregate(rows)
    assert cell["test_acc_std"] == 0.0 and math.isnan(cell["angle_eq14_mean"])


def test_sweep_cli_reports_skips(tmp_path, capsys, monkeypatch):
    import ssdfa.sweep as sweep_mod

    fake = FakeTrainer()
    monkeypatch.setattr(sweep_mod, "_train_with_api", fake)
    out = tmp_path / "sw"
    assert (
        main(
            [
                "sweep",
                "--rank",
                "1,10",
                "--sparsity",
                "0,0.9",
                "--seeds",
                "1",
                "--dataset",
                "mnist",
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "skipped rank=1 sparsity=0.9" in text and "< 1" in text
    assert len(fake.calls) == 3
    assert main(["sweep", "--dataset", "unknownset", "--out", str(out)]) == 2
    assert "--num-classes" in capsys.readouterr().err
    assert main(["sweep", "--method", "dfa", "--dataset", "mnist", "--out", str(out)]) == 2
    assert "does not take rank and sparsity" in capsys.readouterr().err


def test_sweep_takes_out_dir_and_its_old_name_out(tmp_path, capsys, monkeypatch):
    import ssdfa.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "_train_with_api", FakeTrainer())
    grid = ["sweep", "--rank", "10", "--sparsity", "0", "--seeds", "1", "--dataset", "mnist", "--epochs", "1"]
    for flag in ("--out-dir", "--out"):
        out = tmp_path / flag.strip("-")
        assert main([*grid, flag, str(out)]) == 0
        assert (out / "sweep.json").is_file() and (out / "sweep.csv").is_file()
    table = tmp_path / "table"  # a compare's directory is refused, naming the flag
    table.mkdir()
    (table / "results.json").write_text("{}")
    capsys.readouterr()
    assert main([*grid, "--out-dir", str(table)]) == 2
    assert "--out-dir" in capsys.readouterr().err
    assert sorted(p.name for p in table.iterdir()) == ["results.json"]
