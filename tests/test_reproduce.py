"""``ssdfa reproduce``: the registry, the paper-vs-ours table, reuse of finished runs, bad names."""

from __future__ import annotations

import json
import re

import pytest

from ssdfa import experiments as E
from ssdfa.cli import main


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
    """method -> its cells, from the markdown table of results.md."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and not cells[0].startswith(("method", "-")):
            rows[cells[0]] = cells[1:]
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
                                           "dkp": 91.66, "drtp": 89.58}
    drtp = E.get("drtp-classification")
    assert drtp.paper() == {"bp": 1.85, "fa": 1.81, "dfa": 3.48, "sign_dfa": 4.07, "shallow": 9.57}
    assert (drtp.metric, drtp.optimizer, drtp.lr, drtp.batch_size, drtp.loss) == \
        ("error", "adam", 5e-4, 50, "bce")
    dkp = E.get("dkp-table1")
    assert (dkp.optimizer, dkp.lr, dkp.momentum, dkp.model) == ("nesterov", 0.01, 0.9, "dkp-cnn")
    for exp in E.EXPERIMENTS.values():
        assert exp.source and exp.citation and exp.quick.epochs <= exp.full.epochs


def _check_table(exp_name: str, payload: dict, out_dir) -> None:
    exp = E.get(exp_name)
    rows = _table((out_dir / "results.md").read_text())
    assert list(rows) == list(exp.methods)
    for method, cells in rows.items():
        paper, ours = cells[0], cells[1]
        assert float(paper) == pytest.approx(exp.paper()[method])
        mean, std = (float(v) for v in ours.split(" ± "))
        assert 0 <= mean <= 100 and std == 0.0  # one seed
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["rows"] == payload["rows"]
    assert {r["method"]: r["paper"] for r in saved["rows"]} == exp.paper()
    bp = saved["rows"][0]
    for r in saved["rows"][1:]:
        assert r["gap_ours"] == pytest.approx(r["ours_mean"] - bp["ours_mean"])
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
