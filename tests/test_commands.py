"""The commands (``ssdfa.commands``) against hostile input (issue 18), by class of defect, with
the hostile inputs generated in the test.

Four mechanisms, one section each:

A. every option is checked before anything is touched (``resolve`` for every cell of a sweep,
   ``check_options`` of the pipeline, the cost model's limits, ``preflight`` before --nproc);
B. no command writes outside its own run directory (``rundir.refuse_foreign``; a reused run is
   read back, never rewritten; ``--resume`` stays where the run is);
C. a file read back is validated before use (``checkpoint.check_fields``, ``sweep.read_cell``,
   the data loaders);
D. children die with their parent (``distributed.die_with_parent``): kill -9 of the --nproc
   launcher leaves no rank alive and the directory holds one run's files.

Every refusal asserts the exit status, exactly one line on stderr, and that the SHA-256 of every
file that existed before is unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssdfa import rundir
from ssdfa.cli import main

QUICK = ["--quiet", "--limit-train", "64", "--batch-size", "32", "--threads", "1"]
HYP = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(no_real_data, monkeypatch):
    monkeypatch.chdir(no_real_data)


def call(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def digests(*roots) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (the lock file, rewritten with a pid, aside)."""
    out = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and p.name != rundir.LOCK_NAME:
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, argv, *keep, code=2, needle=None) -> str:
    """``argv`` exits ``code`` with one stderr line, and every file under ``keep`` is unchanged."""
    before = digests(*keep)
    capsys.readouterr()
    got = call(argv)
    err = capsys.readouterr().err
    assert got == code, f"exit {got} for {argv}: {err}"
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.endswith("\n"), err
    if needle is not None:
        assert needle in err, err
    after = digests(*keep)
    assert {k: v for k, v in after.items() if k in before} == before, "a file was changed"
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch ssdfa run (sparse feedback: it has an index buffer), lr 0.05."""
    out = tmp_path_factory.mktemp("r3") / "run"
    assert main(["train", "--epochs", "1", "--out-dir", str(out), "--lr", "0.05", *QUICK]) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(finished, dst)
    return dst


# == A. every option checked before anything is touched =========================================
BAD_SWEEP = st.sampled_from(
    [
        ["--epochs", "0"],
        ["--epochs", "-3"],
        ["--lr", "-1"],
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr", "1e39"],
        ["--optimizer", "bogus"],
        ["--batch-size", "0"],
        ["--alignment", "-1"],
        ["--seeds", "0"],
        ["--rank", "x"],
        ["--sparsity", "a,b"],
        ["--device", "tpu"],
        ["--limit-train", "0"],
        ["--method", "bp"],
    ]
)


@HYP
@given(bad=BAD_SWEEP, extra=st.sampled_from([[], ["--epochs", "1"], ["--rank", "2,10"]]))
def test_sweep_checks_every_option_before_its_directory_exists(capsys, tmp_path, bad, extra):
    out = tmp_path / f"sw-{uuid.uuid4().hex}"
    refused(capsys, ["sweep", "--dataset", "digits", "--sparsity", "0", *extra, *bad, "--out", out])
    assert not out.exists()


def test_sweep_and_reproduce_refuse_seeds_past_int64_before_training(capsys, tmp_path):
    out = tmp_path / "s"
    refused(
        capsys,
        [
            "sweep",
            "--dataset",
            "digits",
            "--rank",
            "10",
            "--sparsity",
            "0",
            "--seeds",
            str(2**64),
            "--out",
            out,
        ],
    )
    refused(
        capsys,
        ["reproduce", "ssdfa-rank", "--quick", "--seed", 2**63 - 2, "--seeds", 3, "--out-dir", out],
        needle="2**63",
    )
    assert not out.exists()


BAD_PIPELINE = st.one_of(
    st.sampled_from(
        [
            ["--lr", "nan"],
            ["--lr", "-5"],
            ["--lr", "inf"],
            ["--lr", "0"],
            ["--threads", "100000000"],
            ["--seed", str(10**20)],
            ["--seed", "-1"],
            ["--dataset", "synthetic-regression"],
            ["--dataset", "nope"],
            ["--methods", "sdfa,nope"],
            ["--stages", "0"],
        ]
    ),
    st.floats(allow_nan=True).filter(lambda v: not 0 < v <= 3.4e38).map(lambda v: ["--lr", repr(v)]),
    st.integers(min_value=1025, max_value=2**40).map(lambda v: ["--threads", str(v)]),
)


@HYP
@given(bad=BAD_PIPELINE)
def test_pipeline_checks_every_option_before_a_stage_starts(capsys, bad):
    t0 = time.perf_counter()
    refused(capsys, ["pipeline", "--steps", "2", *bad])
    assert time.perf_counter() - t0 < 10  # no stage was started


@pytest.mark.slow
def test_a_pipeline_whose_loss_becomes_nan_stops_with_exit_3(capsys):
    """About 20 s (it starts the stages): ``pytest -m slow -k pipeline_whose_loss``."""
    err = refused(capsys, ["pipeline", "--methods", "dfa", "--steps", "3", "--lr", "3e38"], code=3)
    assert "diverged" in err


SHAPE = st.lists(st.integers(min_value=-5, max_value=10**10), min_size=0, max_size=4)


@HYP
@given(shape=SHAPE, classes=st.integers(min_value=-10, max_value=10**8))
def test_cost_refuses_impossible_shapes_and_class_counts_in_one_line(capsys, shape, classes):
    ok_shape = (
        1 <= len(shape) <= 3 and all(1 <= d <= 2**20 for d in shape) and np.prod(shape, dtype=object) <= 2**28
    )
    if ok_shape and 1 <= classes <= 2**20:
        return  # a possible input: counted, not refused (mlp-800 may still not fit; below)
    refused(
        capsys,
        [
            "cost",
            "--model",
            "mnist-fc",
            f"--input-shape={','.join(map(str, shape))}",
            "--num-classes",
            classes,
        ],
    )


def test_nproc_is_bounded_and_its_data_checked_before_any_worker(capsys, tmp_path):
    out = tmp_path / "d"
    t0 = time.perf_counter()
    refused(capsys, ["train", "--nproc", 1000, "--out-dir", out, *QUICK], needle="core")
    refused(
        capsys,
        ["train", "--nproc", 2, "--limit-train", 1, "--out-dir", out, "--quiet"],
        needle="cannot be shared by 2",
    )
    assert time.perf_counter() - t0 < 30 and not out.exists()


# == B. never write outside your own run directory ===============================================
def test_commands_refuse_each_others_directories(capsys, tmp_path, run_copy):
    table = tmp_path / "table"
    assert call(["compare", "--methods", "bp", "--seeds", 1, "--epochs", 1, "--out-dir", table, *QUICK]) == 0
    refused(
        capsys, ["train", "--epochs", 1, "--out-dir", table, "--overwrite", *QUICK], table, needle="tables"
    )
    refused(
        capsys,
        [
            "sweep",
            "--dataset",
            "digits",
            "--rank",
            "10",
            "--sparsity",
            "0",
            "--seeds",
            1,
            "--epochs",
            1,
            "--out",
            table,
        ],
        table,
        needle="tables",
    )
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    refused(
        capsys,
        ["compare", "--methods", "bp", "--seeds", 1, "--epochs", 1, "--out-dir", sweep, *QUICK],
        sweep,
        needle="sweep",
    )


def test_resume_stays_in_its_directory_and_reads_every_config_key(capsys, tmp_path, run_copy):
    other = tmp_path / "elsewhere"
    refused(
        capsys,
        ["train", "--resume", run_copy, "--out-dir", other, "--epochs", 2, *QUICK],
        run_copy,
        needle="--out-dir",
    )
    assert not other.exists()
    for text in ("lr = 0.01\n", 'method = "ssdfa"\nlr = 0.01\n', 'method = "dfa"\n'):
        f = tmp_path / "c.toml"  # lr 0.01 is the default: it used to be taken as "not given"
        f.write_text(text)
        refused(
            capsys,
            ["train", "--resume", run_copy, "--config", f, "--epochs", 2, *QUICK],
            run_copy,
            needle="cannot change",
        )
    f.write_text("lr = 0.05\nepochs = 2\n")  # the saved lr, repeated: accepted
    assert call(["train", "--resume", run_copy, "--config", f, *QUICK]) == 0


def test_a_reused_finished_run_is_read_back_not_rewritten(capsys, tmp_path):
    out = tmp_path / "c"
    argv = ["compare", "--methods", "bp,dfa", "--seeds", 1, "--epochs", 1, "--out-dir", out, *QUICK]
    assert call(argv) == 0
    runs = [out / "bp" / "seed0", out / "dfa" / "seed0"]
    before = digests(*runs)
    assert call(argv) == 0
    assert digests(*runs) == before
    # another number of processes is another global batch: refused before any worker starts
    refused(capsys, [*argv, "--nproc", 2], *runs, needle="process")


def test_the_same_rule_twice_is_refused(capsys, tmp_path):
    out = tmp_path / "c"
    refused(capsys, ["compare", "--methods", "BP,bp", "--out-dir", out, *QUICK], needle="twice")
    assert not out.exists()


@pytest.mark.parametrize("make", ["loop", "dangling", "long"])
def test_out_dirs_that_cannot_be_directories_are_one_line(capsys, tmp_path, make):
    if make == "loop":
        (tmp_path / "loop").symlink_to("loop")
        target = tmp_path / "loop"
    elif make == "dangling":
        (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
        target = tmp_path / "dang"
    else:
        target = tmp_path / ("a" * 300)
    err = refused(capsys, ["train", "--epochs", 1, "--out-dir", target, *QUICK])
    assert "is a file" not in err


def test_a_full_disk_hint_fits_the_command(capsys, monkeypatch, tmp_path):
    from ssdfa.commands import compare

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(compare, "_compare", full)
    err = refused(capsys, ["compare", "--methods", "bp", "--out-dir", tmp_path / "c", *QUICK], code=1)
    assert "--resume" not in err and "same command again" in err


# == C. a file read back is validated before use ================================================
def _mutate(run_dir: Path, change):
    path = run_dir / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


JUNK = st.one_of(
    st.text(max_size=6),
    st.booleans(),
    st.none(),
    st.floats(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just("tensor"),
)
NOT_A_FRACTION = st.one_of(st.text(max_size=4), st.booleans(), st.floats().filter(lambda v: not 0 <= v <= 1))


def _value(v):
    return torch.tensor(2) if v == "tensor" else v


DAMAGE = st.one_of(
    JUNK.filter(lambda v: v != 1 or isinstance(v, bool)).map(
        lambda v: ("epoch", lambda c: c.__setitem__("epoch", _value(v)))
    ),
    JUNK.filter(lambda v: not isinstance(v, list) or v).map(
        lambda v: ("history", lambda c: c.__setitem__("history", _value(v)))
    ),
    JUNK.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: ("row", lambda c: c["history"].__setitem__(0, _value(v)))
    ),
    NOT_A_FRACTION.map(lambda v: ("test_acc", lambda c: c["history"][0].__setitem__("test_acc", v))),
    st.one_of(
        st.text(max_size=4),
        st.booleans(),
        st.floats(allow_nan=True).filter(lambda v: v != v or abs(v) == float("inf")),
    ).map(lambda v: ("train_loss", lambda c: c["history"][0].__setitem__("train_loss", v))),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=10, max_value=2**40)).map(
        lambda v: ("index", lambda c: c["model"]["feedback.0.index"].view(-1).__setitem__(3, v))
    ),
    JUNK.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: ("config", lambda c: c.__setitem__("config", _value(v)))
    ),
)


@HYP
@given(damage=DAMAGE)
def test_a_damaged_checkpoint_field_is_refused_by_evaluate_and_resume(capsys, finished, damage):
    what, change = damage
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(finished, run)
        _mutate(run, change)
        refused(capsys, ["evaluate", run], run)
        refused(capsys, ["train", "--resume", run, "--epochs", 2, *QUICK], run)


class FakeCells:
    """Stands in for the training API in a sweep: writes a cell's files; seed 0 diverges when
    ``diverge`` is set (as ``training.run`` does: summary first, then Diverged)."""

    def __init__(self, diverge=False):
        self.calls, self.diverge = [], diverge

    def __call__(self, fields):
        from ssdfa.training import Diverged

        self.calls.append(fields)
        d = Path(fields["out_dir"])
        d.mkdir(parents=True, exist_ok=True)
        if self.diverge and fields["seed"] == 0:
            (d / "summary.json").write_text(json.dumps({"status": "diverged", "epochs": 1}))
            raise Diverged("training diverged: loss is nan at epoch 2")
        acc = 0.5 + 0.1 * fields["seed"]
        (d / "metrics.json").write_text(json.dumps([{"epoch": 1, "angle/eq14/p0": 40.0}]))
        summary = {
            "status": "finished",
            "final_test_acc": acc,
            "best_test_acc": acc,
            "epochs": fields["epochs"],
        }
        (d / "summary.json").write_text(json.dumps(summary))
        return summary


SWEEP = ["sweep", "--dataset", "digits", "--rank", "10", "--sparsity", "0", "--seeds", "2", "--epochs", "1"]


def test_a_diverged_cell_is_never_a_result_however_often_the_sweep_runs(capsys, monkeypatch, tmp_path):
    import ssdfa.sweep as sweep_mod

    fake = FakeCells(diverge=True)
    monkeypatch.setattr(sweep_mod, "_train_with_api", fake)
    out = tmp_path / "S"
    for _ in range(3):
        assert call([*SWEEP, "--out", out]) == 3
        (cell,) = json.loads((out / "sweep.json").read_text())["cells"]
        assert cell["n"] == 1 and cell["diverged"] == 1
        assert cell["test_acc_mean"] == pytest.approx(0.6)  # seed 1's alone
    assert len(fake.calls) == 2  # each cell trained once


@pytest.mark.slow
def test_the_issue_sweep_with_a_diverging_lr_exits_3_every_time(capsys, tmp_path):
    """The issue's command, real training (about 20 s): ``pytest -m slow -k diverging_lr``."""
    argv = [
        "sweep",
        "--rank",
        "10",
        "--sparsity",
        "0",
        "--seeds",
        "2",
        "--dataset",
        "digits",
        "--epochs",
        "4",
        "--lr",
        "3e33",
        "--optimizer",
        "adam",
        "--limit-train",
        "200",
        "--out",
        tmp_path / "S",
    ]
    for _ in range(3):
        assert call(argv) == 3
    (cell,) = json.loads((tmp_path / "S" / "sweep.json").read_text())["cells"]
    assert cell["n"] == 0 and cell["diverged"] == 2 and cell["test_acc_mean"] is None


CELL_DAMAGE = st.one_of(
    st.sampled_from(
        [
            b"\x00\xff garbage",
            b"",
            b"[1, 2]",
            b"null",
            b'"text"',
            b"{",
            b'{"status": "running"}',
            b'{"status": "finished", "epochs": 7}',
        ]
    ).map(lambda raw: ("summary.json", raw)),
    st.one_of(
        st.text(max_size=4),
        st.booleans(),
        st.floats(allow_nan=False).filter(lambda v: not 0 <= v <= 100),
        st.lists(st.integers(), max_size=2),
    ).map(
        lambda v: (
            "summary.json",
            json.dumps({"status": "finished", "final_test_acc": v, "epochs": 1}).encode(),
        )
    ),
    st.sampled_from(
        [
            b"{}",
            b"7",
            b"[1]",
            b'[{"epoch": 1, "angle/eq14/p0": "wide"}]',
            b'[{"epoch": 1, "angle/eq14/p0": {"a": 1}}]',
            b"\xff",
        ]
    ).map(lambda raw: ("metrics.json", raw)),
)


@HYP
@given(damage=CELL_DAMAGE)
def test_a_tampered_sweep_cell_is_refused_before_any_file_is_rewritten(capsys, monkeypatch, tmp_path, damage):
    import ssdfa.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "_train_with_api", FakeCells())
    out = tmp_path / f"S-{uuid.uuid4().hex}"
    assert call([*SWEEP, "--out", out]) == 0
    name, raw = damage
    (out / "cells" / "r10_s0_seed1" / name).write_bytes(raw)
    refused(capsys, [*SWEEP, "--out", out], out)


# -- data files ---------------------------------------------------------------------------------
def _cifar10(root: Path, labels_of_first) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = labels_of_first if name == "data_batch_1" else [0, 1, 2]
        n = 3
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def _self_containing():
    x = [1, 2]
    x.append(x)
    return x


BAD_LABELS = st.one_of(
    st.lists(st.text(max_size=3), min_size=3, max_size=3),
    st.just({"a": 1}),
    st.just([float("nan")] * 3),
    st.just([2**70, 0, 1]),
    st.just([1.5, 0.0, 2.0]),
    st.just([True, False, True]),
    st.just([[0, 1, 2]]),
    st.just(np.zeros((3, 1), np.int64)),
    st.just(np.array([0.0, 1.0, 2.0])),
    st.just(_self_containing()),
    st.just("012"),
    st.lists(st.floats(), min_size=3, max_size=3),
)


@HYP
@given(labels=BAD_LABELS)
def test_cifar_labels_that_are_not_integers_are_one_line(capsys, labels):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _cifar10(Path(tmp), labels)
        refused(
            capsys,
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                folder,
                "--epochs",
                1,
                "--out-dir",
                Path(tmp) / "out",
                *QUICK,
            ],
            folder,
        )


def _idx(array: np.ndarray) -> bytes:
    return (
        struct.pack(">HBB", 0, 8, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


@pytest.mark.parametrize("case", ["zero-height", "empty-test", "zero-width-test"])
def test_idx_sets_with_a_zero_size_are_one_line(capsys, tmp_path, case):
    folder = tmp_path / "mnist"
    folder.mkdir()
    xtr, ytr = np.zeros((10, 28, 28)), np.arange(10) % 10
    xte, yte = np.zeros((4, 28, 28)), np.arange(4)
    if case == "zero-height":
        xtr = np.zeros((10, 0, 28))
    elif case == "empty-test":
        xte, yte = np.zeros((0, 28, 28)), np.zeros(0)
    else:
        xte = np.zeros((4, 28, 0))
    for name, arr in zip(
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
        (xtr, ytr, xte, yte),
    ):
        (folder / name).write_bytes(_idx(arr))
    refused(
        capsys,
        [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            folder,
            "--epochs",
            1,
            "--out-dir",
            tmp_path / "out",
            *QUICK,
        ],
        folder,
    )


def _png(width: int, height: int) -> bytes:
    """A tiny RGB PNG whose header claims ``width`` x ``height`` pixels."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(raw)


def _image_tree(root: Path, classes=("a", "b")) -> Path:
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(2):
                (root / split / c / f"{k}.png").write_bytes(_png(4, 4))
    return root


@pytest.mark.parametrize("case", ["bomb", "annotations", "one-class"])
def test_image_folders_that_cannot_train_are_one_line(capsys, tmp_path, case):
    root = _image_tree(tmp_path / "imgs", ("a",) if case == "one-class" else ("a", "b"))
    if case == "bomb":
        (root / "train" / "a" / "0.png").write_bytes(_png(100000, 100000))
    elif case == "annotations":
        shutil.rmtree(root / "val")
        (root / "val" / "images").mkdir(parents=True)
        (root / "val" / "val_annotations.txt").write_bytes(b"0.png\t\xff\xfea\n")
    refused(
        capsys,
        [
            "train",
            "--dataset",
            "imagefolder",
            "--data-dir",
            root,
            "--epochs",
            1,
            "--model",
            "mlp-800",
            "--out-dir",
            tmp_path / "out",
            *QUICK,
        ],
        root,
    )


# -- transfer runs and their init_from ---------------------------------------------------------
TRANSFER = ["--model", "drtp-conv", "--epochs", 1, *QUICK]


def test_transfer_runs_follow_their_init_from(capsys, tmp_path):
    """A transfer run whose pretrain changed is refused on --resume, retrained by reproduce's
    train_all (the row a fresh run gives); one whose pretrain moved still evaluates and resumes."""
    from dataclasses import replace

    from ssdfa.commands.compare import train_all
    from ssdfa.training import TrainConfig

    pre, row = tmp_path / "pre", tmp_path / "row"
    assert call(["train", "--method", "bp", "--out-dir", pre, *TRANSFER]) == 0
    assert (
        call(
            [
                "train",
                "--method",
                "dfa",
                "--out-dir",
                row,
                "--init-from",
                pre,
                "--train-only",
                "fc",
                *TRANSFER,
            ]
        )
        == 0
    )
    assert call(["train", "--resume", pre, "--epochs", 2, *QUICK]) == 0  # the pretrain goes on
    refused(capsys, ["train", "--resume", row, "--epochs", 2, *QUICK], row, needle="init_from")
    base = TrainConfig(
        dataset="digits",
        model="drtp-conv",
        epochs=1,
        limit_train=64,
        batch_size=32,
        threads=1,
        train_only="fc",
        init_from=str(pre),
    )
    quiet = lambda msg: None  # noqa: E731
    shutil.copytree(row, tmp_path / "rows" / "dfa" / "seed0")
    got, _ = train_all(base, ["dfa"], 1, 0, tmp_path / "rows", quiet, retrain_changed_init=True)
    fresh, _ = train_all(base, ["dfa"], 1, 0, tmp_path / "fresh", quiet)
    assert got["dfa"][0]["final_test_acc"] == fresh["dfa"][0]["final_test_acc"]
    # the pretrain moves away: the transfer run's checkpoint holds every weight it needs
    moved = tmp_path / "fresh" / "dfa" / "seed0"
    shutil.move(pre, tmp_path / "pre-moved")
    assert call(["evaluate", moved]) == 0
    assert call(["train", "--resume", moved, "--epochs", 2, *QUICK]) == 0
    del replace


# == D. children die with their parent ===========================================================
def _marked(mark: str) -> list[int]:
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"SSDFA_TEST_MARK={mark}".encode() in env.read_bytes():
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return pids


def _lock_free(run_dir: Path) -> bool:
    """Whether no process holds the run directory's lock (a non-blocking flock, let go at once)."""
    import fcntl

    fd = os.open(run_dir / rundir.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases the flock if this took it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_nproc_launcher_leaves_no_rank_and_one_run(tmp_path):
    """kill -9 of ``ssdfa train --nproc 2``: its workers die with it, and an --overwrite run
    after it leaves the directory holding that run's files alone (no dfa file beside bp's)."""
    out = tmp_path / "D"
    mark = uuid.uuid4().hex
    env = dict(os.environ, SSDFA_TEST_MARK=mark, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssdfa",
            "train",
            "--nproc",
            "2",
            "--method",
            "dfa",
            "--epochs",
            "100000",
            "--out-dir",
            str(out),
            "--threads",
            "1",
            "--limit-train",
            "128",
            "--batch-size",
            "16",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        for line in proc.stderr:
            if line.startswith("epoch 2/") or time.time() > deadline:
                break
        assert len(_marked(mark)) >= 3, "the launcher and its two workers"
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while _marked(mark) and time.time() < deadline:
            time.sleep(0.1)
        assert _marked(mark) == [], "a worker outlived the launcher"
        # a process leaves /proc's environ (its memory is freed) a moment before its open files
        # are closed, and with them the run directory's flock: wait for the lock itself
        deadline = time.time() + 10
        while not _lock_free(out) and time.time() < deadline:
            time.sleep(0.1)
        assert _lock_free(out), "the run directory stayed locked after every process of the run ended"
    finally:
        for pid in _marked(mark):
            os.kill(pid, 9)
        proc.stderr.close()
    assert (
        main(["train", "--out-dir", str(out), "--overwrite", "--method", "bp", "--epochs", "2", *QUICK]) == 0
    )
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["method"] == "bp" and ckpt["epoch"] == 2
    assert json.loads((out / "config.json").read_text())["method"] == "bp"
    assert json.loads((out / "summary.json").read_text())["method"] == "bp"
    assert len(json.loads((out / "metrics.json").read_text())) == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_die_with_parent_kills_a_worker_whose_launcher_is_killed(tmp_path):
    mark = uuid.uuid4().hex
    child = (
        "import os, subprocess, sys, time\n"
        "env = dict(os.environ, SSDFA_LAUNCHER_PID=str(os.getpid()))\n"
        "subprocess.Popen([sys.executable, '-c', 'from ssdfa.distributed import "
        "die_with_parent; die_with_parent(); print(1, flush=True); import time; "
        "time.sleep(60)'], env=env)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, SSDFA_TEST_MARK=mark, PYTHONPATH=str(ROOT / "src"))
    launcher = subprocess.Popen([sys.executable, "-c", child], env=env)
    try:
        deadline = time.time() + 30
        while len(_marked(mark)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the worker has called die_with_parent
        assert len(_marked(mark)) == 2
        launcher.kill()
        launcher.wait()
        deadline = time.time() + 5
        while _marked(mark) and time.time() < deadline:
            time.sleep(0.05)
        assert _marked(mark) == []
    finally:
        for pid in _marked(mark):
            os.kill(pid, 9)


def test_a_train_refused_before_writing_leaves_no_directory(tmp_path, no_real_data, capsys):
    """Single-process train takes its lock before the data loads; a refusal then removes the
    directory it created (it held only the lock file), and never one that existed before."""
    from ssdfa.cli import main

    out = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "none"),
        "--epochs",
        "1",
        "--threads",
        "1",
        "--out-dir",
        str(out),
    ]
    assert main(argv) == 2
    assert not out.exists()
    out.mkdir()
    assert main(argv) == 2
    assert out.is_dir()  # the user's own directory stays
    capsys.readouterr()


@pytest.mark.parametrize("bad", ["notatable", 5, None, ["x"]])
def test_evaluate_refuses_a_checkpoint_or_config_that_is_not_a_table(tmp_path, capsys, bad):
    """Item 16's evaluate half: a checkpoint (or config.json) whose config is not a table is
    one line, exit 2, and no file changes."""
    from ssdfa.cli import main

    run = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--method",
                "dfa",
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--threads",
                "1",
                "--limit-train",
                "64",
                "--out-dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    ck = torch.load(run / "checkpoint.pt", weights_only=False)
    ck["config"] = bad
    torch.save(ck, run / "checkpoint.pt")
    for damaged_json in (False, True):
        if damaged_json:
            (run / "config.json").write_text(json.dumps(bad))
        before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()}
        capsys.readouterr()
        assert main(["evaluate", str(run)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("not a table" in err[0] or "expected a table" in err[0]), err
        after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()}
        assert after == before
