"""Real processes: kill -9 at random moments (inside the checkpoint write too) and resume ends
bit-identical to an uninterrupted run; two ``ssdfa train`` into one directory, the second refused.

Each child is ``python -c CHILD``: ``ssdfa train`` with, for some cycles, a pause inserted inside
the checkpoint write (half the bytes written, or all written but not yet renamed) where it
prints a marker, so the parent's SIGKILL lands exactly there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssdfa.checkpoint import load_checkpoint
from ssdfa.cli import main

RUN = [
    "--method",
    "dfa",
    "--optimizer",
    "adam",
    "--lr",
    "0.003",
    "--schedule",
    "cosine",
    "--limit-train",
    "256",
    "--batch-size",
    "32",
    "--threads",
    "1",
]

CHILD = r"""
import io, os, sys, time
import torch
import ssdfa.rundir as rundir
kind, nth = os.environ["CRASH_KIND"], int(os.environ.get("CRASH_AT", "0"))
writes = {"n": 0}
def pause(where):
    print(where, flush=True)
    time.sleep(120)
if kind == "mid-write":
    real_save = torch.save
    def save(obj, f, *a, **kw):
        writes["n"] += 1
        if writes["n"] != nth:
            return real_save(obj, f, *a, **kw)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        data = buf.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        pause("IN-WRITE")
        f.write(data[len(data) // 2:])
    torch.save = save
elif kind == "before-rename":
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            writes["n"] += 1
            if writes["n"] == nth:
                pause("BEFORE-RENAME")
        return real_replace(src, dst)
    rundir.os.replace = replace
from ssdfa.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _child(argv, cwd, kind="none", at=0):
    env = dict(os.environ, CRASH_KIND=kind, CRASH_AT=str(at), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(proc, marker: str, stream="stdout", limit=120.0) -> bool:
    """Read ``proc``'s stream until a line holds ``marker`` (True) or the process ends (False)."""
    deadline = time.monotonic() + limit
    f = getattr(proc, stream)
    while time.monotonic() < deadline:
        line = f.readline()
        if not line:
            return False
        if marker in line:
            return True
    raise AssertionError(f"no {marker!r} from the child in {limit} s")


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _check_consistent(run_dir: Path):
    """After a kill: every file whole, the metrics never ahead of the checkpoint."""
    if not (run_dir / "checkpoint.pt").exists():
        return
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    json.loads((run_dir / "config.json").read_text())
    if (run_dir / "metrics.json").exists():
        rows = json.loads((run_dir / "metrics.json").read_text())
        assert ckpt["epoch"] - 1 <= len(rows) <= ckpt["epoch"]
        assert rows == ckpt["history"][: len(rows)]


def _crash_cycles(tmp_path, kinds, epochs):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", *RUN, "--epochs", str(epochs), "--out-dir", str(whole), "--quiet"]) == 0
    rng = random.Random(11)
    for kind in kinds:
        if (cut / "checkpoint.pt").exists():
            argv = ["train", "--resume", str(cut), "--quiet"]
        else:
            argv = ["train", *RUN, "--epochs", str(epochs), "--out-dir", str(cut), "--quiet"]
        # the second write of this process: one epoch of progress per cycle at least
        proc = _child(argv, tmp_path, kind, at=2)
        if kind == "random":
            while not (cut / ".ssdfa.lock").exists() and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 2.5))  # startup, then anywhere in the epochs
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stderr.close()
        else:
            reached = _wait_for(proc, "IN-WRITE" if kind == "mid-write" else "BEFORE-RENAME")
            if reached:
                tmps = [p.name for p in cut.iterdir() if p.name.endswith(".tmp")]
                assert tmps, "the kill should land with a temporary checkpoint on disk"
            _kill(proc)
        _check_consistent(cut)
    argv = (
        ["train", "--resume", str(cut), "--quiet"]
        if (cut / "checkpoint.pt").exists()
        else ["train", *RUN, "--epochs", str(epochs), "--out-dir", str(cut), "--quiet"]
    )
    assert main(argv) == 0
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(cut / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "weights differ"
    same = ("train_loss", "test_loss", "test_acc", "lr")

    def rows(d):
        return [{k: r[k] for k in same} for r in json.loads((d / "metrics.json").read_text())]

    assert rows(whole) == rows(cut)
    assert not [p for p in cut.iterdir() if p.name.endswith(".tmp")]


def test_kill_9_inside_the_checkpoint_write_then_resume_is_bit_identical(tmp_path):
    _crash_cycles(tmp_path, ["mid-write", "before-rename", "random", "mid-write"], epochs=5)


@pytest.mark.slow
def test_kill_9_at_random_moments_over_many_cycles(tmp_path):
    kinds = ["random", "mid-write", "random", "before-rename"] * 4
    _crash_cycles(tmp_path, kinds, epochs=12)


def test_two_trains_into_one_directory_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    first = _child(
        ["train", "--epochs", "100000", "--limit-train", "64", "--out-dir", str(out), "--lr", "0.05"],
        tmp_path,
    )
    try:
        assert _wait_for(first, "run directory", stream="stderr")  # locked, config written
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "ssdfa",
                "train",
                "--overwrite",
                "--epochs",
                "1",
                "--lr",
                "0.2",
                "--out-dir",
                str(out),
                "--quiet",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert first.poll() is None, "the first run should still hold the directory"
    finally:
        _kill(first)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by another ssdfa process (pid {first.pid})" in lines[0]
    assert json.loads((out / "config.json").read_text())["lr"] == 0.05  # the first run's, unmixed
    # the killed holder's lock went with it: the directory is usable at once
    assert (
        main(
            ["train", "--overwrite", "--epochs", "1", "--limit-train", "64", "--out-dir", str(out), "--quiet"]
        )
        == 0
    )
