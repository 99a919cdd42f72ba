"""Data parallel through the CLI: ``ssdfa train --nproc 2`` starts two gloo workers through
``torch.distributed.run`` on this CPU.

Each worker trains on 16 examples of every global batch of 32 (rank r takes perm[k*32:(k+1)*32][r::2]),
and DDP averages the two workers' mean gradients: with equal shards that is the mean gradient of
the 32, so the run ends with the weights of one process at --batch-size 32 and the same seed.  Only
the order of float32 additions differs (two means of 16 averaged by the all-reduce vs one mean of
32), about 1e-7 relative per step; over the 20 steps here the weights agree within 1e-6
(measured at most 2.3e-8: dfa 1.9e-8 at seed 0, dkp and unlocked drtp 2.2e-8 at seed 3, on weights
up to 0.16).
"""

from __future__ import annotations

import json

import pytest
import torch

from ssdfa import cli

# 320 = 10 global batches of 32: every shard holds 16 examples, the last batch too
COMMON = [
    "--dataset",
    "digits",
    "--device",
    "cpu",
    "--limit-train",
    "320",
    "--threads",
    "1",
    "--quiet",
    "--seed",
    "3",
]
TOLERANCE = 1e-6


def _train(out, method, *extra, nproc=1, batch=32, epochs=2):
    args = [
        "train",
        "--method",
        method,
        *COMMON,
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch),
        "--out-dir",
        str(out),
        *extra,
    ]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    assert cli.main(args) == 0


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a_dir, b_dir):
    a, b = _weights(a_dir), _weights(b_dir)
    assert a.keys() == b.keys()  # the unwrapped module's names: no "module." prefix
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=TOLERANCE, msg=key)


@pytest.mark.parametrize("method,extra", [("dkp", []), ("drtp", ["--unlocked"])])
def test_two_processes_end_with_the_weights_of_one_on_the_global_batch(tmp_path, method, extra):
    _train(tmp_path / "ddp", method, *extra, nproc=2, batch=16)
    _train(tmp_path / "one", method, *extra, batch=32)
    _assert_same_weights(tmp_path / "ddp", tmp_path / "one")
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert summary["global_batch_size"] == 32
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["world_size"] == 1


def test_a_resumed_two_process_dfa_run_continues_as_one_process_would(tmp_path, capsys):
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    _train(ddp, "dfa", nproc=2, batch=16, epochs=1)
    assert json.loads((ddp / "summary.json").read_text())["epochs"] == 1
    assert (
        cli.main(["train", "--resume", str(ddp), "--epochs", "2", "--nproc", "2", "--quiet", "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["world_size"] == 2
    assert [r["epoch"] for r in json.loads((ddp / "metrics.json").read_text())] == [1, 2]
    _train(one, "dfa", batch=32, epochs=2)
    _assert_same_weights(ddp, one)
    # the checkpoint of two processes loads into one: evaluate reads it
    assert cli.main(["evaluate", str(ddp), "--json"]) == 0


def test_nproc_is_checked_before_any_worker_starts(tmp_path, capsys):
    assert cli.main(["train", *COMMON, "--nproc", "0", "--out-dir", str(tmp_path / "r")]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err


@pytest.mark.slow  # one more launch of two workers (~8 s); the CI file stays under ~40 s
def test_compare_passes_nproc_to_every_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        cli.main(
            [
                "compare",
                "--methods",
                "dfa",
                "--seeds",
                "1",
                *COMMON,
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--nproc",
                "2",
                "--out-dir",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["methods"]["dfa"]["runs_finished"] == 1
    run = json.loads((out / "dfa" / "seed3" / "summary.json").read_text())
    assert run["world_size"] == 2 and run["global_batch_size"] == 32


@pytest.mark.slow  # one more launch of two workers (~8 s)
def test_every_rank_stops_alike_when_the_loss_diverges(tmp_path, capsys):
    out = tmp_path / "dv"
    assert (
        cli.main(
            [
                "train",
                "--method",
                "bp",
                "--lr",
                "3e38",
                *COMMON,
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--nproc",
                "2",
                "--out-dir",
                str(out),
            ]
        )
        == 3
    )
    assert "training diverged" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["world_size"] == 2


@pytest.mark.slow  # one more launch of two workers (~8 s)
def test_torchrun_starts_ssdfa_train_itself(tmp_path):
    """``torchrun -m ssdfa train``: the workers find WORLD_SIZE/RANK/LOCAL_RANK and join."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "ssdfa",
        "train",
        "--method",
        "dfa",
        *COMMON,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out-dir",
        str(tmp_path / "ddp"),
        "--json",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["world_size"] == 2  # rank 0 prints
    _train(tmp_path / "one", "dfa", batch=32, epochs=1)
    _assert_same_weights(tmp_path / "ddp", tmp_path / "one")
