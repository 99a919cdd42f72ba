"""The command line end to end through ``main(argv)``: digits, one or few epochs, small subsets."""

from __future__ import annotations

import csv
import json
import re
import shlex
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

import ssdfa
from ssdfa import data as D
from ssdfa import training
from ssdfa.checkpoint import load_checkpoint
from ssdfa.cli import build_parser, main
from ssdfa.models import list_models
from ssdfa.training import loop as training_loop  # the loop looks these names up (monkeypatched)

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = ["--quiet", "--limit-train", "256", "--batch-size", "32"]


@pytest.fixture(autouse=True)
def isolated(no_real_data, monkeypatch):
    monkeypatch.chdir(no_real_data)  # default run directories land in tmp_path/runs


def run_json(capsys, argv) -> tuple[int, dict | None]:
    code = main(argv)
    out = capsys.readouterr().out.strip()
    return code, (json.loads(out.splitlines()[-1]) if out else None)


def test_train_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code, summary = run_json(
        capsys,
        [
            "train",
            "--method",
            "ssdfa",
            "--epochs",
            "2",
            "--lr",
            "0.05",
            "--out-dir",
            str(out),
            "--json",
            *QUICK,
        ],
    )
    assert code == 0
    for key in ("final_test_acc", "best_test_acc", "train_loss", "epochs", "seconds"):
        assert key in summary
    assert summary["epochs"] == 2 and 0.5 < summary["final_test_acc"] <= 1
    for name in ("config.json", "metrics.csv", "metrics.json", "summary.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "seconds"} <= set(rows[0])
    assert float(rows[-1]["test_acc"]) == pytest.approx(summary["final_test_acc"])
    assert summary["best_test_acc"] == max(float(r["test_acc"]) for r in rows)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "digits-fc" and cfg["lr"] == 0.05 and cfg["method"] == "ssdfa"
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert any(k.startswith("feedback.") for k in ckpt["model"])  # B is saved with the weights


def test_feedback_scale_reaches_the_model_and_the_saved_config(tmp_path, capsys):
    out = tmp_path / "run"
    code, _ = run_json(
        capsys,
        [
            "train",
            "--method",
            "dfa",
            "--epochs",
            "1",
            "--feedback-scale",
            "0.25",
            "--out-dir",
            str(out),
            "--json",
            *QUICK,
        ],
    )
    assert code == 0
    assert json.loads((out / "config.json").read_text())["feedback_scale"] == 0.25
    saved = load_checkpoint(out / "checkpoint.pt")["model"]
    cfg = training.TrainConfig(method="dfa", model="digits-fc", seed=0)
    plain = training.build_model(cfg, D.load_dataset("digits"))
    name, b = next((k, v) for k, v in plain.state_dict().items() if k.startswith("feedback."))
    torch.testing.assert_close(saved[name], 0.25 * b)
    code = main(
        [
            "train",
            "--method",
            "fa",
            "--feedback-scale",
            "0.5",
            "--epochs",
            "1",
            "--out-dir",
            str(tmp_path / "fa"),
            *QUICK,
        ]
    )
    assert code != 0 and "no direct feedback matrices" in capsys.readouterr().err


def test_config_file_precedence(tmp_path, capsys):
    toml = tmp_path / "exp.toml"
    toml.write_text('method = "dfa"\nlr = 0.2\nepochs = 1\nbatch-size = 16\n')
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            str(toml),
            "--lr",
            "0.03",
            "--out-dir",
            str(out),
            "--quiet",
            "--limit-train",
            "64",
        ]
    )
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr"] == 0.03  # the flag beats the file
    assert (cfg["method"], cfg["epochs"], cfg["batch_size"]) == ("dfa", 1, 16)  # the file beats defaults
    assert cfg["momentum"] == training.TrainConfig().momentum  # untouched defaults stay


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 0.1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) learning_rate" in err and "lr" in err
    bad.write_text('epochs = "ten"\n')
    assert main(["train", "--config", str(bad)]) == 2
    assert "epochs = 'ten' should be int" in capsys.readouterr().err


def _weights(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoint.pt")["model"]


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"tensors differ after resume: {differ}"


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, capsys, monkeypatch):
    common = [
        "train",
        "--method",
        "dfa",
        "--epochs",
        "3",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--schedule",
        "cosine",
        *QUICK,
    ]
    assert main([*common, "--out-dir", str(tmp_path / "whole")]) == 0

    real_save = training.save_checkpoint
    calls = {"n": 0}

    def save_then_interrupt(path, payload):
        real_save(path, payload)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # as if Ctrl-C arrived right after epoch 1

    monkeypatch.setattr(training_loop, "save_checkpoint", save_then_interrupt)
    assert main([*common, "--out-dir", str(tmp_path / "cut")]) == 130
    assert "--resume" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(training_loop, "save_checkpoint", real_save)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    _assert_same_state(_weights(tmp_path / "whole"), _weights(tmp_path / "cut"))
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert [r["train_loss"] for r in whole] == [r["train_loss"] for r in cut]


def test_resume_restores_global_rng_for_dropout(tmp_path):
    """A model with dropout draws from torch's global RNG: its state must be in the checkpoint."""

    def net():
        torch.manual_seed(0)  # the same initial weights for both runs (the user's business)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.Tanh(), nn.Dropout(0.3), nn.Linear(48, 10))

    cfg = training.TrainConfig(method="ssdfa", epochs=3, lr=0.05, limit_train=200, batch_size=20)
    quiet = {"log": lambda m: None}
    training.run(
        training.TrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "a")}), model=net(), **quiet
    )
    short = training.TrainConfig(**{**cfg.__dict__, "epochs": 2, "out_dir": str(tmp_path / "b")})
    training.run(short, model=net(), **quiet)
    torch.manual_seed(1234)  # whatever happens in between must not matter
    short.epochs = 3
    training.run(short, model=net(), resume=True, **quiet)
    _assert_same_state(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_resume_refuses_to_change_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out-dir", str(out), *QUICK]) == 0
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "cannot change lr when resuming" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert main(["train", "--epochs", "1", "--out-dir", str(out), *QUICK]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_divergence_stops_with_a_message_and_keeps_the_good_checkpoint(tmp_path, capsys, monkeypatch):
    real = training.make_loss
    steps_per_epoch = 256 // 32

    def poisoned(cfg, data):
        fn, seen = real(cfg, data), {"n": 0}

        def loss(out, y):
            value = fn(out, y)
            if torch.is_grad_enabled():
                seen["n"] += 1
                if seen["n"] == steps_per_epoch + 3:  # third step of epoch 2
                    return value * float("nan")
            return value

        return loss

    monkeypatch.setattr(training_loop, "make_loss", poisoned)
    out = tmp_path / "run"
    code = main(["train", "--epochs", "3", "--out-dir", str(out), "--json", *QUICK])
    assert code == 3
    captured = capsys.readouterr()
    summary, err = json.loads(captured.out.strip().splitlines()[-1]), captured.err
    assert "training diverged: loss is nan at epoch 2" in err
    assert "checkpoint of epoch 1 is kept" in err and "lower --lr" in err
    assert summary["status"] == "diverged" and summary["diverged_at"]["epoch"] == 2
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_divergence_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(training_loop, "make_loss", lambda cfg, data: lambda out, y: out.sum() * float("inf"))
    assert main(["train", "--epochs", "1", "--out-dir", str(tmp_path / "r"), *QUICK]) == 3
    err = capsys.readouterr().err
    assert "training diverged: loss is" in err and "no checkpoint had been written" in err
    assert "--lr" in err


def test_compare_prints_mean_and_std_over_seeds(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, result = run_json(
        capsys,
        [
            "compare",
            "--methods",
            "bp,dfa",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--lr",
            "0.05",
            "--out-dir",
            str(out),
            "--json",
            *QUICK,
        ],
    )
    assert code == 0
    table = (out / "results.md").read_text()
    for method in ("bp", "dfa"):
        accs = [
            100 * json.loads((out / method / f"seed{s}" / "summary.json").read_text())["final_test_acc"]
            for s in (0, 1)
        ]
        mean, std = statistics.mean(accs), statistics.stdev(accs)
        assert f"| {method} | {mean:.2f} ± {std:.2f} |" in table
        assert result["methods"][method]["final_test_acc"]["mean"] == pytest.approx(mean)
    assert (out / "results.json").is_file()


def test_compare_table_on_stdout(tmp_path, capsys):
    assert (
        main(
            [
                "compare",
                "--methods",
                "ssdfa",
                "--seeds",
                "1",
                "--epochs",
                "1",
                "--out-dir",
                str(tmp_path / "c"),
                *QUICK,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| method | test accuracy (%)" in out and "| ssdfa |" in out


def test_compare_takes_feedback_scale_for_direct_methods_only(tmp_path, capsys):
    assert (
        main(
            [
                "compare",
                "--methods",
                "dfa,ssdfa",
                "--seeds",
                "1",
                "--epochs",
                "1",
                "--feedback-scale",
                "0.5",
                "--out-dir",
                str(tmp_path / "ok"),
                *QUICK,
            ]
        )
        == 0
    )
    for m in ("dfa", "ssdfa"):
        cfg = json.loads((tmp_path / "ok" / m / "seed0" / "config.json").read_text())
        assert cfg["feedback_scale"] == 0.5
    capsys.readouterr()
    assert (
        main(
            [
                "compare",
                "--methods",
                "dfa,bp",
                "--feedback-scale",
                "0.5",
                "--epochs",
                "1",
                "--out-dir",
                str(tmp_path / "bad"),
                *QUICK,
            ]
        )
        != 0
    )
    err = capsys.readouterr().err
    assert "bp:" in err and "no direct feedback matrices" in err
    assert not (tmp_path / "bad" / "dfa").exists()  # refused before any training


def test_evaluate_matches_the_last_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    code, summary = run_json(capsys, ["train", "--epochs", "1", "--out-dir", str(out), "--json", *QUICK])
    assert code == 0
    code, result = run_json(capsys, ["evaluate", str(out), "--json"])
    assert code == 0 and result["test_acc"] == pytest.approx(summary["final_test_acc"])
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_info_lists_every_method_model_and_dataset(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in (*ssdfa.METHODS, *list_models(), *D.list_datasets()):
        assert re.search(rf"^\s+{re.escape(name)}\s", out, re.M), name
    code, info = run_json(capsys, ["info", "--json"])
    assert info["datasets"]["digits"]["found"] == "embedded"


def test_missing_dataset_is_one_clear_error(tmp_path, capsys):
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "none"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-images-idx3-ubyte" in err and str(tmp_path / "none") in err


def test_fashion_mnist_from_idx_files(tmp_path, capsys):
    from test_data import write_idx_set

    write_idx_set(tmp_path / "data" / "fashion-mnist", n_train=40, n_test=10, h=28, w=28)
    code, summary = run_json(
        capsys,
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path / "data"),
            "--epochs",
            "1",
            "--json",
            "--quiet",
            "--out-dir",
            str(tmp_path / "r"),
        ],
    )
    assert code == 0 and summary["model"] == "mnist-fc" and summary["dataset"] == "fashion-mnist"


def test_bad_user_input_is_exit_2_naming_the_choices(capsys):
    assert main(["train", "--method", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "method 'nope' unknown" in err and "ssdfa" in err
    assert main(["train", "--method", "ssdfa", "--sparsity", "0.5", "--quiet", *QUICK]) == 2
    assert "does not take sparsity" in capsys.readouterr().err
    assert main(["train", "--model", "resnet", "--quiet"]) == 2
    assert "model 'resnet' unknown" in capsys.readouterr().err


def test_sdfa_options_reach_the_feedback(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--method",
                "sdfa",
                "--connections",
                "3",
                "--epochs",
                "1",
                "--out-dir",
                str(out),
                *QUICK,
            ]
        )
        == 0
    )
    ckpt = load_checkpoint(out / "checkpoint.pt")
    cfg = training.TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    data = D.load_dataset("digits")
    model = training.build_model(cfg, data)
    model.load_state_dict(ckpt["model"])
    b = ssdfa.feedback_matrices(model)["point0"]  # (10 classes, 400 neurons)
    assert b.shape == (10, 400) and ((b != 0).sum(0) == 3).all()


def test_regression_task_reports_loss_not_accuracy(tmp_path, capsys):
    code, summary = run_json(
        capsys,
        [
            "train",
            "--dataset",
            "synthetic-regression",
            "--method",
            "dfa",
            "--epochs",
            "1",
            "--lr",
            "0.01",
            "--out-dir",
            str(tmp_path / "r"),
            "--json",
            *QUICK,
        ],
    )
    assert code == 0 and summary["final_test_acc"] is None and summary["model"] == "drtp-reg"
    assert summary["final_test_loss"] < 1.0


# -- README --------------------------------------------------------------------------------
def readme_commands(path: Path = README) -> list[str]:
    """Every `ssdfa ...` command in README's (or ``path``'s) shell blocks, without what precedes it."""
    text = path.read_text()
    blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S)
    cmds = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            m = re.search(r"(?:^|&&\s*|\s)(?:\.venv/bin/)?ssdfa\s+(.*)$", line)
            if m and not line.startswith(("pip", "python")):
                cmds.append(m.group(1))
    return cmds


def test_readme_first_command_is_the_main_job():
    first = re.search(r"```bash\n(.*?)\n", README.read_text()).group(1)
    assert first.startswith("bash setup.sh && .venv/bin/ssdfa compare --methods bp,dfa,ssdfa")


def test_readme_documents_every_command():
    used = {shlex.split(c)[0] for c in readme_commands()}
    assert {"train", "compare", "evaluate", "info"} <= used


DOCS_WITH_COMMANDS = [README, README.parent / "RESULTS.md", README.parent / "docs" / "pipeline.md"]


@pytest.mark.parametrize("cmd", [c for doc in DOCS_WITH_COMMANDS for c in readme_commands(doc)])
def test_readme_command_parses(cmd):
    """README's, RESULTS.md's and the docs' commands parse and name only what exists."""
    args = build_parser().parse_args(shlex.split(cmd))
    assert args.func is not None
    if args.command == "reproduce" and args.name:
        from ssdfa.experiments import names

        assert args.name in names(), f"unknown experiment {args.name!r}"
    datasets = D.list_datasets()
    if args.command == "cost":  # the cost model takes shape presets, imagenet among them
        datasets = [*datasets, *D.dataset_shapes()]
    for key in ("method", "model", "dataset"):
        value = getattr(args, key, None)
        if value is not None:  # None: the command's default
            valid = {"method": ssdfa.METHODS, "model": list_models(), "dataset": datasets}[key]
            assert value in valid, f"README uses unknown {key} {value!r}"
    if getattr(args, "methods", None):
        assert set(args.methods.split(",")) <= set(ssdfa.METHODS)


def test_progress_bar_shows_loss_and_accuracy(tmp_path, capsys):
    cfg = training.TrainConfig(epochs=1, limit_train=64, batch_size=16, out_dir=str(tmp_path / "r"))
    training.run(cfg, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "acc=" in err


def test_compare_checks_every_method_before_training(tmp_path, capsys):
    assert (
        main(
            [
                "compare",
                "--methods",
                "sdfa,ssdfa",
                "--sparsity",
                "0.5",
                "--seeds",
                "1",
                "--out-dir",
                str(tmp_path / "c"),
                *QUICK,
            ]
        )
        == 2
    )
    assert "ssdfa: method 'ssdfa' does not take sparsity" in capsys.readouterr().err
    assert not (tmp_path / "c" / "sdfa").exists()  # nothing was trained


def test_compare_continues_in_the_same_out_dir(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["compare", "--methods", "dfa", "--epochs", "1", "--out-dir", str(out), *QUICK]
    assert main([*argv, "--seeds", "1"]) == 0
    first = (out / "dfa" / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    assert main([*argv, "--seeds", "2"]) == 0
    assert (out / "dfa" / "seed0" / "checkpoint.pt").stat().st_mtime_ns == first  # reused
    assert (out / "dfa" / "seed1" / "summary.json").is_file()  # only the new seed trained
    assert "| dfa |" in (out / "results.md").read_text()
    assert main([*argv, "--seeds", "1", "--lr", "0.3"]) == 2
    assert "holds a run with other settings (lr)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "compare"])
def test_unknown_dataset_is_a_user_error(command, capsys):
    assert main([command, "--dataset", "nope", "--quiet"]) == 2
    assert "unknown dataset 'nope'; choose one of:" in capsys.readouterr().err


def test_model_that_cannot_read_the_dataset_is_a_user_error(capsys):
    assert main(["train", "--model", "mnist-cnn", "--dataset", "synthetic-regression", "--quiet"]) == 2
    assert "needs image inputs" in capsys.readouterr().err


def test_readme_toml_example_is_a_valid_config(tmp_path):
    import tomllib

    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for block in blocks:
        cfg = training.TrainConfig.from_dict(tomllib.loads(block))
        training.resolve(cfg)
