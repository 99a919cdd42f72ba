"""``ssdfa plot`` and ``report`` given hostile inputs and outputs (issue 18, items 4, 6, 15, 20).

Each case asserts the exit status, one stderr line, and the SHA-256 of every file that existed
before: a damaged run file is refused in one line (exit 2) before anything is written, and no
output may land in a run directory the command did not read.
"""

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssdfa import rundir
from ssdfa.cli import main


def write_run(d: Path, method="dfa", seed=0, conv=False) -> Path:
    d.mkdir(parents=True)
    rows = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_acc": 0.5 + 0.1 * e,
            "test_loss": 1.2 / e,
            "test_acc": 0.5 + 0.1 * e + 0.01 * seed,
            "angle/eq14/point0": 80.0 - e,
        }
        for e in (1, 2)
    ]
    (d / "metrics.json").write_text(json.dumps(rows))
    (d / "config.json").write_text(json.dumps({"method": method, "seed": seed, "dataset": "digits"}))
    (d / "summary.json").write_text(
        json.dumps({"status": "finished", "final_test_acc": 0.7, "best_test_acc": 0.7, "epochs": 2})
    )
    if conv:
        torch.save({"model": {"0.weight": torch.randn(4, 1, 3, 3)}}, d / "checkpoint.pt")
    return d


def write_compare(root: Path) -> Path:
    for m in ("bp", "dfa"):
        for s in (0, 1):
            write_run(root / m / f"seed{s}", m, s, conv=False)
    (root / "results.json").write_text(
        json.dumps({"title": "t", "methods": {"bp": {}, "dfa": {}}, "config": {"dataset": "digits"}})
    )
    return root


def write_sweep(root: Path) -> Path:
    root.mkdir(parents=True)
    cells = [
        {
            "rank": r,
            "sparsity": s,
            "n": 2,
            "test_acc_mean": 0.8,
            "test_acc_std": 0.01,
            "angle_eq14_mean": 70.0,
            "angle_eq14_std": 1.0,
        }
        for r in (1, 10)
        for s in (0.0, 0.5)
    ]
    (root / "sweep.json").write_text(
        json.dumps(
            {
                "base": {"method": "sdfa", "dataset": "digits"},
                "ranks": [1, 10],
                "sparsities": [0.0, 0.5],
                "seeds": [0, 1],
                "skipped": [],
                "cells": cells,
            }
        )
    )
    return root


def hashes(*roots) -> dict:
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(*argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue(), out.getvalue()


def refused(res, command="report"):
    rc, err, _ = res
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"ssdfa {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- item 4: never write into a run directory it does not own -----------------------------------
def test_report_cannot_overwrite_another_runs_file(tmp_path):
    r1, r2 = write_run(tmp_path / "R1"), write_run(tmp_path / "R2", "bp")
    before = hashes(tmp_path)
    for out in (r2 / "config.json", r2 / "report.md", r2 / "sub" / "report.md"):
        refused(cli("report", r1, "--out", out))
    line = refused(cli("report", r1, "--out", r2 / "report.md"))
    assert "R2" in line and "another run" in line
    refused(cli("report", r1, "--html", "--out", r2 / "page.html"))
    refused(cli("report", r1, "--out", r1 / "summary.json"))  # its own input's run file
    assert hashes(tmp_path) == before
    assert not (r2 / "sub").exists() and not (r2 / "report_figures").exists()


def test_report_refuses_a_file_that_is_not_a_report(tmp_path):
    r1 = write_run(tmp_path / "R1")
    notes = tmp_path / "notes.md"
    notes.write_text("my own notes\n")
    (tmp_path / "dir.md").mkdir()
    before = hashes(tmp_path)
    assert "not an ssdfa report" in refused(cli("report", r1, "--out", notes))
    assert "not a regular file" in refused(cli("report", r1, "--out", tmp_path / "dir.md"))
    assert "ends in" in refused(cli("report", r1, "--out", tmp_path / "report.txt"))
    assert hashes(tmp_path) == before
    # a report written before is replaced
    rep = tmp_path / "rep.md"
    assert cli("report", r1, "--out", rep)[0] == 0
    assert cli("report", r1, "--out", rep)[0] == 0
    html = tmp_path / "rep.html"
    assert cli("report", r1, "--html", "--out", html)[0] == 0
    assert cli("report", r1, "--html", "--out", html)[0] == 0


def test_report_to_a_device_creates_nothing(tmp_path):
    r1 = write_run(tmp_path / "R1")
    before = hashes(tmp_path)
    refused(cli("report", r1, "--out", "/dev/full"))
    refused(cli("report", r1, "--html", "--out", "/dev/full"))
    assert not os.path.exists("/dev/full_figures")
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    assert "not a regular file" in refused(cli("report", r1, "--out", fifo))
    assert hashes(r1) == {k: v for k, v in before.items() if k.startswith(str(r1))}


def test_plot_cannot_write_into_another_run(tmp_path):
    c = write_compare(tmp_path / "C")
    r2 = write_run(tmp_path / "R2", "bp")
    before = hashes(tmp_path)
    refused(cli("plot", c / "dfa" / "seed0", "--out", r2), "plot")
    refused(cli("plot", c / "dfa" / "seed0", "--out", r2 / "figs"), "plot")
    refused(cli("plot", c / "dfa" / "seed0", "--out", c / "bp" / "seed0"), "plot")
    refused(cli("plot", c, "--out", r2 / "summary.json"), "plot")
    assert hashes(tmp_path) == before
    # into (or under) what it read: fine
    assert cli("plot", c / "dfa" / "seed0", "--out", c / "plots")[0] == 0
    assert cli("plot", c)[0] == 0 and (c / "plots" / "training_curves.png").exists()
    assert {k: v for k, v in hashes(tmp_path).items() if "/plots/" not in k} == before


def test_disk_full_says_so_without_resume_and_keeps_the_old_report(tmp_path, monkeypatch):
    r1 = write_run(tmp_path / "R1")
    rep = tmp_path / "rep.md"
    assert cli("report", r1, "--out", rep)[0] == 0
    before = hashes(tmp_path)

    @contextlib.contextmanager
    def full(path, mode="wb"):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
        yield

    monkeypatch.setattr(rundir, "open_atomic", full)
    for argv, command in (
        (("report", r1, "--out", rep), "report"),
        (("plot", r1, "--out", tmp_path / "p"), "plot"),
    ):
        rc, err, _ = cli(*argv)
        assert rc == 1
        (line,) = err.strip().splitlines()
        assert line.startswith(f"ssdfa {command}: error: the disk is full") and "--resume" not in line
    assert hashes(tmp_path) == before


# -- item 15: damaged run files ------------------------------------------------------------------
def json_values():
    leaf = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=4)
    return st.recursive(
        leaf,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=6,
    )


def mutate(obj, data):
    """``obj`` with one value somewhere inside replaced by an arbitrary JSON value."""
    if isinstance(obj, dict) and obj and data.draw(st.booleans()):
        k = data.draw(st.sampled_from(sorted(obj)))
        return obj | {k: mutate(obj[k], data)}
    if isinstance(obj, list) and obj and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(obj) - 1))
        return obj[:i] + [mutate(obj[i], data)] + obj[i + 1 :]
    return data.draw(json_values())


def damaged(valid: bytes, data) -> bytes:
    how = data.draw(st.sampled_from(["bytes", "truncate", "json", "mutate"]))
    if how == "bytes":
        return data.draw(st.binary(max_size=64))
    if how == "truncate":
        return valid[: data.draw(st.integers(0, max(len(valid) - 1, 0)))]
    if how == "json":
        return json.dumps(data.draw(json_values())).encode()
    return json.dumps(mutate(json.loads(valid), data)).encode()


def check_damage(make, rel: str, data, command="plot"):
    with tempfile.TemporaryDirectory() as tmp:
        root = make(Path(tmp) / "in")
        target = root / rel
        if rel == "checkpoint.pt":
            content = data.draw(
                st.binary(max_size=64) | st.just(pickle.dumps({1, 2})) | st.just(b"PK\x03\x04" + bytes(40))
            )
        elif rel.endswith(".csv"):
            content = data.draw(st.text(alphabet='ab1.,\n"', max_size=40)).encode()
        else:
            content = damaged(target.read_bytes(), data)
        target.write_bytes(content)
        before = hashes(root)
        out = Path(tmp) / "out" / ("r.md" if command == "report" else "figs")
        rc, err, _ = cli(command, root, "--out", out)
        assert hashes(root) == before
        assert rc in (0, 2), err
        if rc == 2:
            refused((rc, err, ""), command)
            assert not out.exists()


SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def csv_run(d: Path) -> Path:
    write_run(d, conv=False)
    (d / "metrics.json").unlink()
    (d / "metrics.csv").write_text("epoch,train_loss,test_acc\n1,1.0,0.5\n2,0.5,0.6\n")
    return d


@pytest.mark.parametrize("rel", ["metrics.json", "config.json", "summary.json", "checkpoint.pt"])
@SETTINGS
@given(data=st.data())
def test_damaged_run_file(rel, data):
    check_damage(lambda d: write_run(d, conv=rel == "checkpoint.pt"), rel, data)


@SETTINGS
@given(data=st.data())
def test_damaged_metrics_csv(data):
    check_damage(csv_run, "metrics.csv", data)


@SETTINGS
@given(data=st.data())
def test_damaged_sweep_json(data):
    check_damage(write_sweep, "sweep.json", data)


@pytest.mark.parametrize("rel", ["results.json", "dfa/seed1/metrics.json"])
@settings(max_examples=8, deadline=None, database=None)
@given(data=st.data())
def test_damaged_compare_files_in_report(rel, data):
    check_damage(write_compare, rel, data, command="report")


@pytest.mark.parametrize(
    "content,says",
    [
        (b"\xff\xfe\x00binary", "not UTF-8"),
        (b"null", "not a list of epochs"),
        (b'{"epoch": 1}', "not a list of epochs"),
        (b'[{"epoch": 1, "test_acc": "high"}]', "not a number"),
        (b"[1, 2]", "row 1 is int"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
def test_damaged_metrics_named_in_one_line(tmp_path, content, says):
    d = write_run(tmp_path / "R")
    (d / "metrics.json").write_bytes(content)
    line = refused(cli("plot", d, "--out", tmp_path / "p"), "plot")
    assert "metrics.json" in line and says in line
    assert not (tmp_path / "p").exists()


def test_garbage_checkpoint_named(tmp_path):
    d = write_run(tmp_path / "R", conv=True)
    (d / "checkpoint.pt").write_bytes(b"garbage" * 10)
    line = refused(cli("report", d, "--out", tmp_path / "r.md"))
    assert "checkpoint.pt is not a readable checkpoint" in line
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "r_figures").exists()


def test_not_a_run_directory_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    line = refused(cli("plot", tmp_path / "empty"), "plot")
    assert "not a run, compare, reproduce or sweep directory" in line
    refused(cli("plot", ""), "plot")
    refused(cli("report", tmp_path / "missing"))
    shutil.rmtree(tmp_path / "empty")
