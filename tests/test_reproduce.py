"""``ssdfa reproduce``: the registry, the paper-vs-ours table, reuse of finished runs, bad names."""

from __future__ import annotations

import json
import re

import pytest

import torch

from ssdfa import experiments as E
from ssdfa.checkpoint import load_checkpoint
from ssdfa.cli import main
from ssdfa.commands import reproduce as RP


@pytest.fixture(autouse=True)
def isolated(no_real_data, monkeypatch):
    monkeypatch.chdir(no_real_data)  # default run directories land in tmp_path/runs


@pytest.fixture
def fake_fashion(tmp_path):
    """A tiny Fashion-MNIST (28x28 IDX files) under tmp_path/data; MNIST stays absent."""
    from test_data import write_idx_set

    write_idx_set(tmp_path / "data" / "fashion-mnist", n_train=40, n_test=20, h=28, w=28)
    return tmp_path / "data"


def _table(text: str) -> dict[str, list[str]]:
    """method -> [paper, ours last epoch, gap paper, gap ours last], from results.md's table
    (| method | paper | ours best | ours last | gap paper | gap best | gap last | worst fall |)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 8 and not cells[0].startswith(("method", "-")):
            rows[cells[0]] = [cells[1], cells[3], cells[4], cells[6]]
    return rows


def _reproduce(capsys, argv) -> tuple[int, dict]:
    code = main(["reproduce", *argv, "--quick", "--seeds", "1", "--threads", "1", "--quiet", "--json"])
    out = capsys.readouterr().out.strip()
    return code, json.loads(out.splitlines()[-1]) if out else {}


def test_list_names_every_experiment(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("ssdfa-fc", "dkp-table1", "drtp-classification", "ssdfa-cost"):
        assert name in E.names() and re.search(rf"^{re.escape(name)}\s", out, re.M)


def test_registry_holds_the_papers_numbers():
    """The numbers as the papers print them (checked against shared/papers/)."""
    assert E.get("ssdfa-fc").paper() == {"bp": 98.2, "dfa": 97.8, "ssdfa": 97.5}
    assert E.get("dkp-table1").paper() == {"bp": 92.18, "fa": 91.12, "kp": 91.25, "dfa": 91.54,
                                           "dkp": 91.66, "drtp": 89.58, "bp-fc-only": 91.33}
    assert E.get("ssdfa-cnn").paper() == {"bp": 99.1, "dfa": 98.9, "ssdfa": 98.8}
    assert E.get("ssdfa-cnn-cifar10").paper() == {"bp": 79.6, "dfa": 72.3, "ssdfa": 73.1}
    assert E.get("ssdfa-cnn-cifar100").paper() == {"bp": 51.0, "dfa": 43.7, "ssdfa": 41.8}
    assert E.get("ssdfa-transfer").paper() == {"bp": 99.1, "dfa": 99.1, "ssdfa": 99.0}
    assert E.get("ssdfa-transfer-cifar10").paper() == {"bp": 77.1, "dfa": 77.8, "ssdfa": 78.0}
    assert E.get("ssdfa-transfer-cifar100").paper() == {"bp": 48.2, "dfa": 49.0, "ssdfa": 48.2}
    assert E.get("dfa-mlp").paper() == {"bp": 92.10, "dfa": 92.46}
    drtp = E.get("drtp-classification")
    assert drtp.paper() == {"bp": 1.85, "fa": 1.81, "dfa": 3.48, "sign_dfa": 4.07, "shallow": 9.57}
    assert (drtp.metric, drtp.optimizer, drtp.lr, drtp.batch_size, drtp.loss) == \
        ("error", "adam", 5e-4, 50, "bce")
    dkp = E.get("dkp-table1")
    assert (dkp.optimizer, dkp.lr, dkp.momentum, dkp.model) == ("nesterov", 0.01, 0.9, "dkp-cnn")
    for exp in E.EXPERIMENTS.values():
        assert exp.source and exp.citation and exp.quick.epochs <= exp.full.epochs
        # a paper without numbers for an experiment says in words what it reports
        assert exp.paper_numbers or exp.claims, exp.name


@pytest.mark.parametrize("name", [n for n in E.names() if E.get(n).kind != "cost"])
def test_every_experiment_row_is_a_valid_training_setup(name):
    """Generated from the registry: each row's method and settings pass the checks that
    ``ssdfa train`` applies, so no experiment fails only after hours of training."""
    from dataclasses import replace

    from ssdfa.commands.compare import check_methods
    from ssdfa.models import list_models
    from ssdfa.training import TrainConfig

    exp = E.get(name)
    assert exp.model in list_models()
    base = TrainConfig(**exp.train_options(), epochs=exp.full.epochs)
    for _, method, extra in exp.rows():
        check_methods(replace(base, **extra), [method])
    assert len(set(exp.labels())) == len(exp.labels())


def payload_acc(payload, method) -> float:
    """The test accuracy of ``method``'s one run, read from its own summary.json."""
    out = payload["out_dir"]
    from pathlib import Path

    folder = Path(out) / method if (Path(out) / method / "seed0").is_dir() else Path(out) / method / method
    return json.loads((folder / "seed0" / "summary.json").read_text())["final_test_acc"]


def _check_table(exp_name: str, payload: dict, out_dir) -> None:
    exp = E.get(exp_name)
    rows = _table((out_dir / "results.md").read_text())
    pretrain = [RP.PRETRAIN_ROW] if exp.kind == "transfer" else []
    assert list(rows) == pretrain + exp.labels()
    for method, cells in rows.items():
        paper, ours = cells[0], cells[1]
        if method in pretrain or method not in exp.paper():
            assert paper == "—"
        else:
            assert float(paper) == pytest.approx(exp.paper()[method])
        mean, std = (float(v) for v in ours.split(" ± "))
        assert 0 <= mean <= 100 and std == 0.0  # one seed
        if exp.metric == "error":
            assert mean == pytest.approx(
                100 - 100 * payload_acc(payload, method), abs=0.006)
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["rows"] == payload["rows"]
    assert {r["method"]: r["paper"] for r in saved["rows"]
            if r["method"] not in pretrain and r["paper"] is not None} == exp.paper()
    bp = next(r for r in saved["rows"] if r["method"] == "bp")
    for r in saved["rows"]:
        if r["method"] != "bp":
            assert r["gap_ours"] == pytest.approx(r["ours_mean"] - bp["ours_mean"])
        if r["method"] not in pretrain + ["bp"] and r["paper"] is not None:
            assert r["gap_paper"] == pytest.approx(r["paper"] - bp["paper"])


def test_drtp_classification_quick_table_and_reuse(tmp_path, capsys):
    out = tmp_path / "drtp"
    code, payload = _reproduce(capsys, ["drtp-classification", "--out-dir", str(out)])
    assert code == 0 and payload["metric"] == "error" and payload["budget"]["quick"]
    _check_table("drtp-classification", payload, out)
    ckpts = sorted(out.glob("*/seed0/checkpoint.pt"))
    assert len(ckpts) == 5
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    # the same command again: every finished run is read back, none retrained
    code, again = _reproduce(capsys, ["drtp-classification", "--out-dir", str(out)])
    assert code == 0 and again["rows"] == payload["rows"]
    assert {p: p.stat().st_mtime_ns for p in ckpts} == before
    for p in ckpts:
        metrics = json.loads((p.parent / "metrics.json").read_text())
        assert len(metrics) == 1  # still the one epoch trained the first time


def test_fashion_mnist_stands_in_for_mnist_and_says_so(tmp_path, capsys, fake_fashion):
    out = tmp_path / "fc"
    code, payload = _reproduce(capsys, ["ssdfa-fc", "--out-dir", str(out),
                                        "--data-dir", str(fake_fashion)])
    assert code == 0 and payload["dataset"] == "fashion-mnist"
    assert "fashion-mnist stands in" in payload["stand_in"]
    assert "fashion-mnist stands in" in (out / "results.md").read_text()
    _check_table("ssdfa-fc", payload, out)


def test_dkp_table1_quick(tmp_path, capsys, fake_fashion):
    out = tmp_path / "dkp"
    code, payload = _reproduce(capsys, ["dkp-table1", "--out-dir", str(out),
                                        "--data-dir", str(fake_fashion)])
    assert code == 0 and payload["stand_in"] is None
    _check_table("dkp-table1", payload, out)
    cfg = json.loads((out / "dkp" / "seed0" / "config.json").read_text())
    assert (cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["feedback_lr"], cfg["model"]) == \
        ("nesterov", 0.01, 1e-6, 1e-4, "dkp-cnn")
    # 'BP (FC only)': BP on the FC layers, the conv layers frozen at their seed-0 initial values
    fc_only = out / "bp-fc-only" / "bp" / "seed0"
    cfg = json.loads((fc_only / "config.json").read_text())
    assert (cfg["method"], cfg["train_only"]) == ("bp", "fc")
    from ssdfa.models import create_model

    torch.manual_seed(0)
    init = create_model("dkp-cnn", (1, 28, 28), 10).state_dict()
    got = load_checkpoint(fc_only / "checkpoint.pt")["model"]
    trained = load_checkpoint(out / "bp" / "seed0" / "checkpoint.pt")["model"]
    torch.testing.assert_close(got["net.frozen.0.weight"], init["0.weight"], rtol=0, atol=0)
    assert not torch.allclose(trained["net.0.weight"], init["0.weight"])


def test_transfer_trains_fc_rows_on_each_seeds_bp_conv_layers(tmp_path, capsys, fake_fashion):
    out = tmp_path / "tr"
    code = main(["reproduce", "ssdfa-transfer", "--quick", "--seeds", "2", "--threads", "1",
                 "--quiet", "--json", "--out-dir", str(out), "--data-dir", str(fake_fashion)])
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert [r["method"] for r in payload["rows"]] == [RP.PRETRAIN_ROW, "bp", "dfa", "ssdfa"]
    assert all(r["ours_runs"] == 2 for r in payload["rows"])
    for seed in (0, 1):
        pre = out / "pretrain" / "bp" / f"seed{seed}"
        conv = load_checkpoint(pre / "checkpoint.pt")["model"]["net.0.weight"]
        for method in ("bp", "dfa", "ssdfa"):
            run_dir = out / method / f"seed{seed}"
            cfg = json.loads((run_dir / "config.json").read_text())
            assert (cfg["train_only"], cfg["init_from"], cfg["seed"]) == ("fc", str(pre), seed)
            got = load_checkpoint(run_dir / "checkpoint.pt")["model"]
            torch.testing.assert_close(got["net.frozen.0.weight"], conv, rtol=0, atol=0)
    other = load_checkpoint(out / "pretrain" / "bp" / "seed1" / "checkpoint.pt")["model"]
    assert not torch.equal(other["net.0.weight"],
                           load_checkpoint(out / "dfa" / "seed0" / "checkpoint.pt")["model"]
                           ["net.frozen.0.weight"])  # seed 0's rows are not on seed 1's layers


def test_rank_sweep_table_trend_and_no_mixing(tmp_path, capsys, fake_fashion):
    out = tmp_path / "rank"
    exp = E.get("ssdfa-rank")
    code, payload = _reproduce(capsys, ["ssdfa-rank", "--out-dir", str(out),
                                        "--data-dir", str(fake_fashion)])
    assert code == 0 and payload["dataset"] == "fashion-mnist"
    from ssdfa.sweep import cell_problem

    runnable = [(r, s) for r in exp.ranks for s in exp.sparsities if cell_problem(r, s, 10) is None]
    assert [(c["rank"], c["sparsity"]) for c in payload["cells"]] == runnable
    assert len(payload["skipped"]) == len(exp.ranks) * len(exp.sparsities) - len(runnable)
    text = (out / "results.md").read_text()
    assert "| 10 | 0.9 | 1 | 1 |" in text  # sparsity 0.9 of 10 errors: one connection (SSDFA)
    trend = payload["trend"]
    dense = {c["rank"]: 100 * c["test_acc_mean"] for c in payload["cells"] if c["sparsity"] == 0}
    assert trend["rank_gain_dense"] == pytest.approx(dense[10] - dense[1])
    cfg = json.loads((out / "cells" / "r2_s0.5_seed0" / "config.json").read_text())
    assert (cfg["method"], cfg["rank"], cfg["sparsity"], cfg["alignment"]) == ("sdfa", 2, 0.5, 1)
    # other settings into the same directory: refused, nothing retrained or mixed
    code = main(["reproduce", "ssdfa-rank", "--quick", "--seeds", "1", "--epochs", "2", "--quiet",
                 "--threads", "1", "--out-dir", str(out), "--data-dir", str(fake_fashion)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "trained with other settings" in err


def test_regression_reports_the_test_loss(tmp_path, capsys):
    out = tmp_path / "reg"
    code, payload = _reproduce(capsys, ["drtp-regression", "--out-dir", str(out)])
    assert code == 0 and payload["metric"] == "loss" and "Fig. 2" in payload["claims"]
    for r in payload["rows"]:
        summary = json.loads((out / r["method"] / "seed0" / "summary.json").read_text())
        assert r["ours_mean"] == pytest.approx(summary["final_test_loss"]) and r["paper"] is None
    assert "ours test loss" in (out / "results.md").read_text()


def test_ssdfa_cost_counts_without_training(tmp_path, capsys):
    out = tmp_path / "cost"
    code, payload = _reproduce(capsys, ["ssdfa-cost", "--out-dir", str(out)])
    assert code == 0 and (out / "results.md").is_file()
    rows = {r["quantity"]: r for r in payload["rows"]}
    move = rows["movement bp/ssdfa, imagenet alexnet"]
    assert move["paper"] == 6400.0 and 1000 < move["ours"] < 20000
    assert rows["MACs bp/ssdfa, imagenet alexnet"]["ours"] == pytest.approx(2.0, abs=0.1)
    assert not list(out.glob("*/seed0"))


def test_unknown_name_is_one_line_exit_2(capsys):
    assert main(["reproduce", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown experiment 'nope'" in err
    for name in E.names():
        assert name in err
    assert main(["reproduce"]) == 2
    assert "ssdfa-fc" in capsys.readouterr().err
    assert main(["reproduce", "ssdfa-fc", "--seeds", "0"]) == 2


def test_readme_names_only_registered_experiments():
    from test_cli import readme_commands

    used = [c.split()[1] for c in readme_commands()
            if c.startswith("reproduce ") and not c.split()[1].startswith("-")]
    assert used and set(used) <= set(E.names())


def test_cifar_rows_need_their_data(tmp_path, capsys):
    assert E.get("ssdfa-fc-cifar100").paper() == {"bp": 33.1, "dfa": 29.4, "ssdfa": 28.8}
    assert E.get("ssdfa-fc-cifar10").paper() == {"bp": 59.9, "dfa": 58.9, "ssdfa": 58.6}
    assert main(["reproduce", "ssdfa-fc-cifar10", "--quick", "--seeds", "1", "--quiet",
                 "--out-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset 'cifar10' not found" in err


_COVERED = {"drtp-classification", "ssdfa-fc", "dkp-table1", "ssdfa-transfer", "ssdfa-rank",
            "drtp-regression"}  # run above with extra checks


@pytest.mark.parametrize("name", [n for n in E.names() if E.get(n).kind in ("train", "transfer")
                                  and n not in _COVERED and "cifar" not in n])
def test_every_runnable_experiment_quick(name, tmp_path, capsys, fake_fashion):
    """Generated from the registry: every experiment whose data can be present here runs its
    quick budget end to end and tabulates each of its rows."""
    out = tmp_path / name
    code, payload = _reproduce(capsys, [name, "--out-dir", str(out), "--data-dir", str(fake_fashion)])
    assert code == 0
    _check_table(name, payload, out)
