"""The command line against hostile input (issue 11), case by case: no code from data files, one writer per run directory, a resume that
checks what it resumes, and every bad input one line on stderr with a nonzero exit status.

Each test recreates a case a hostile user tried and asserts the promised outcome: the exit
status, exactly one line on stderr with no traceback, and no file of the run lost or mixed.
The kill -9 crash test and the two-processes test are in test_checkpoint_crash.py.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdfa import data as D
from ssdfa import rundir, training
from ssdfa.checkpoint import load_checkpoint
from ssdfa.cli import main
from ssdfa.training import loop as training_loop  # the loop looks these names up (monkeypatched)

QUICK = ["--quiet", "--limit-train", "64", "--batch-size", "32"]


@pytest.fixture(autouse=True)
def isolated(no_real_data, monkeypatch):
    monkeypatch.chdir(no_real_data)


def call(argv) -> int:
    """``main(argv)``'s exit status, argparse's SystemExit included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def one_line_error(capsys, argv, code=2) -> str:
    """Run ``argv``; assert exit status ``code`` and exactly one line on stderr, no traceback."""
    got = call(argv)
    err = capsys.readouterr().err
    assert got == code, f"exit {got}, stderr: {err}"
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.endswith("\n"), err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch digits run, copied by each test that damages it."""
    out = tmp_path_factory.mktemp("runs") / "good"
    assert main(["train", "--epochs", "1", "--out-dir", str(out), "--lr", "0.05", *QUICK]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(finished_run, dst)
    return dst


def files(run_dir) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in Path(run_dir).iterdir() if p.is_file() and p.name != rundir.LOCK_NAME
    }


# -- 1. no code from a data file --------------------------------------------------------------
def _global_pickle(module: str, name: str) -> bytes:
    """A protocol-2 pickle that calls module.name(): what a hostile data_batch_1 holds."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."


HOSTILE = [
    ("numpy.f2py.__main__", "ndarray"),
    ("numpy.f2py.__main__", "main"),
    ("numpy.distutils.setup", "ndarray"),
    ("numpy.testing", "ndarray"),
    ("os", "system"),
    ("builtins", "eval"),
    ("numpy", "load"),
    ("numpy.lib", "_reconstruct"),
]


@pytest.mark.parametrize("module,name", HOSTILE)
def test_cifar_unpickler_imports_nothing_it_is_not_allowed(tmp_path, monkeypatch, module, name):
    path = tmp_path / "data_batch_1"
    path.write_bytes(_global_pickle(module, name))
    imported = []
    real_import = __import__

    def watch(mod, *a, **kw):  # any import during the load is a failure
        imported.append(mod)
        return real_import(mod, *a, **kw)

    before = set(sys.modules)
    monkeypatch.setattr("builtins.__import__", watch)
    with pytest.raises(D.DatasetCorrupt, match=f"refusing to load {module}.{name}"):
        D._read_pickle(path)
    monkeypatch.undo()
    assert imported == [] and set(sys.modules) == before


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_cifar_unpickler_reads_numpy1_and_numpy2_arrays(tmp_path, protocol, core):
    batch = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2], b"n": np.int64(7)}
    raw = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:  # GLOBAL opcodes are text: name the other numpy's module
        raw = raw.replace(b"numpy._core.", f"{core}.".encode())
    elif core == "numpy.core":
        pytest.skip("binary protocols name modules with a length prefix")
    path = tmp_path / "b"
    path.write_bytes(raw)
    got = D._read_pickle(path)
    assert got["data"].tolist() == [[0, 1, 2], [3, 4, 5]] and got["labels"] == [1, 2]
    assert got["n"] == 7


def test_hostile_cifar_batch_through_the_cli(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(_global_pickle("numpy.f2py.__main__", "ndarray"))
    for command in (
        ["train", "--out-dir", str(tmp_path / "r")],
        ["compare", "--methods", "bp", "--seeds", "1", "--out-dir", str(tmp_path / "c")],
    ):
        err = one_line_error(capsys, [*command, "--dataset", "cifar10", "--data-dir", str(tmp_path), *QUICK])
        assert "refusing to load numpy.f2py.__main__.ndarray" in err
    assert "numpy.f2py.__main__" not in sys.modules


# -- 2. one writer per run directory ----------------------------------------------------------
def _hold_lock(path: Path) -> int:
    """Take ``path``'s lock through another open file, as another process would."""
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / rundir.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    return fd


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--overwrite"],
        ["compare", "--methods", "bp", "--seeds", "1"],
    ],
)
def test_a_second_writer_gets_one_line_and_exit_2(tmp_path, capsys, run_copy, command):
    before = files(run_copy)
    fd = _hold_lock(run_copy)
    try:
        err = one_line_error(capsys, [*command, "--out-dir", str(run_copy), "--epochs", "1", *QUICK])
    finally:
        os.close(fd)
    assert "in use by another ssdfa process (pid 4242)" in err and "--out-dir" in err
    assert files(run_copy) == before  # nothing written, nothing removed
    # the lock dies with its holder: the same command now runs
    assert call([*command, "--out-dir", str(run_copy), "--epochs", "1", *QUICK]) == 0


def test_resume_and_sweep_take_the_lock_too(tmp_path, capsys, run_copy):
    fd = _hold_lock(run_copy)
    try:
        one_line_error(capsys, ["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"])
        one_line_error(
            capsys,
            [
                "sweep",
                "--dataset",
                "digits",
                "--rank",
                "1",
                "--sparsity",
                "0",
                "--seeds",
                "1",
                "--epochs",
                "1",
                "--out",
                str(run_copy),
            ],
        )
        with pytest.raises(rundir.RunDirBusy):
            training.run(
                training.TrainConfig(epochs=1, limit_train=64, out_dir=str(run_copy)), log=lambda m: None
            )
    finally:
        os.close(fd)


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    with rundir.locked(tmp_path / "d"):
        with rundir.locked(tmp_path / "d"):
            assert rundir.holds_lock(tmp_path / "d")
        assert rundir.holds_lock(tmp_path / "d")
    assert not rundir.holds_lock(tmp_path / "d")


def test_two_atomic_writers_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "metrics.csv"
    with rundir.open_atomic(target, "w") as a, rundir.open_atomic(target, "w") as b:
        assert a.name != b.name
        a.write("first\n")
        b.write("second\n")
    assert target.read_text() == "first\n"  # b closed first, then a replaced it: whole files only
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_files_follow_the_umask_like_any_other_file(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(["train", "--epochs", "1", "--out-dir", str(out), *QUICK]) == 0
        plain = tmp_path / "plain"
        plain.write_text("x")
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "config.json", "metrics.json", "summary.json"):
        assert (out / name).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644, name


def test_stale_temporary_files_of_a_killed_writer_are_removed(capsys, run_copy):
    stale = [
        run_copy / "checkpoint.pt.abc123.tmp",
        run_copy / ".checkpoint.pt.x.tmp",
        run_copy / ".metrics.csv.k2.tmp",
        run_copy / "metrics.csv.tmp",
    ]
    for p in stale:
        p.write_bytes(b"half")
    mine = run_copy / "notes.tmp"
    mine.write_text("the user's own file")
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"]) == 0
    assert not any(p.exists() for p in stale) and mine.exists()


# -- 3. resume trusts the checkpoint only when it belongs to config.json --------------------
def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, capsys, run_copy):
    other = tmp_path / "other"
    assert main(["train", "--epochs", "1", "--out-dir", str(other), "--lr", "0.2", *QUICK]) == 0
    shutil.copy(other / "config.json", run_copy / "config.json")  # new config, old weights
    before = files(run_copy)
    err = one_line_error(capsys, ["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"])
    assert "belongs to another run than config.json (lr 0.05 vs 0.2" in err
    assert files(run_copy) == before
    err = one_line_error(capsys, ["evaluate", str(run_copy)])
    assert "belongs to another run" in err


def test_overwrite_stopped_before_its_first_epoch_leaves_nothing_to_resume(capsys, monkeypatch, run_copy):
    def interrupt(cfg, data):
        def loss(out, y):
            raise KeyboardInterrupt

        return loss

    monkeypatch.setattr(training_loop, "make_loss", interrupt)
    assert (
        call(["train", "--overwrite", "--lr", "0.2", "--epochs", "1", "--out-dir", str(run_copy), *QUICK])
        == 130
    )
    err = capsys.readouterr().err
    assert "before the first epoch finished" in err and "--resume" not in err
    assert not (run_copy / "checkpoint.pt").exists()  # the old weights went before the new config
    assert json.loads((run_copy / "config.json").read_text())["lr"] == 0.2
    monkeypatch.undo()
    assert "with a checkpoint" in one_line_error(capsys, ["train", "--resume", str(run_copy)])


# -- 4 and 5: bad input is one line and exit 2 ------------------------------------------------
NONSENSE = [
    (["train", "--gamma", "-1", "--schedule", "step"], "gamma must be"),
    (["train", "--gamma", "0"], "gamma must be"),
    (["compare", "--seeds", "0", "--methods", "bp"], "--seeds must be a positive"),
    (["compare", "--seeds", "-2", "--methods", "bp"], "--seeds must be a positive"),
    (["train", "--lr", "inf"], "lr must be"),
    (["train", "--lr", "nan"], "lr must be"),
    (["train", "--lr", "1e39"], "lr must be"),
    (["train", "--lr", "0"], "lr must be"),
    (["train", "--momentum", "nan"], "momentum must be"),
    (["train", "--momentum", "-1"], "momentum must be"),
    (["train", "--momentum", "1"], "momentum must be"),
    (["train", "--weight-decay", "nan"], "weight_decay must be"),
    (["train", "--weight-decay", "-0.1"], "weight_decay must be"),
    (["train", "--feedback-lr", "-1", "--method", "dkp"], "feedback_lr must be"),
    (["train", "--out-dir", ""], "empty"),
    (["train", "--out-dir", "  "], "empty"),
    (["train", "--seed", "1e23"], "invalid int value"),
    (["train", "--seed", str(10**23)], "seed must be"),
    (["train", "--seed", "-1"], "seed must be"),
    (["compare", "--seed", str(2**63 - 1), "--seeds", "2", "--methods", "bp"], "2**63"),
    (["train", "--threads", "100000000"], "threads must be"),
    (["train", "--train-only", "foo"], "train_only 'foo' unknown"),
    (["train", "--device", "mps"], "mps"),
    (["train", "--device", "meta"], "device 'meta' cannot train"),
    (["train", "--device", "tpu"], "is not a device"),
    (["train", "--image-size", "0"], "image_size must be"),
    (["train", "--limit-train", "0"], "limit_train must be"),
    (["train", "--epochs", "x"], "invalid int value"),
    (["train", "--optimizer", "sgdd"], "invalid choice"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv,needle", NONSENSE, ids=[" ".join(a) for a, _ in NONSENSE])
def test_nonsense_is_refused_in_one_line(tmp_path, capsys, argv, needle):
    out = [] if "--out-dir" in argv or argv[0] == "frobnicate" else ["--out-dir", str(tmp_path / "r")]
    err = one_line_error(capsys, [argv[0], *(QUICK if argv[0] != "frobnicate" else []), *argv[1:], *out])
    assert needle in err
    assert not (tmp_path / "r").exists()  # refused before the run directory is touched


def test_argparse_errors_are_one_line_not_the_usage(capsys):
    err = one_line_error(capsys, ["train", "--lr", "abc"])
    assert err.startswith("ssdfa train: error: argument --lr: invalid float value: 'abc'")
    assert "ssdfa train --help" in err


def test_evaluate_refuses_bad_options(capsys, finished_run):
    for argv, needle in (
        (["--batch-size", "-5"], "--batch-size must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--device", "meta"], "cannot train"),
        (["--device", "mps"], "mps"),
    ):
        assert needle in one_line_error(capsys, ["evaluate", str(finished_run), *argv])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(capsys, finished_run):
    assert "no CUDA GPU" in one_line_error(capsys, ["evaluate", str(finished_run), "--device", "cuda"])
    assert "no CUDA GPU" in one_line_error(capsys, ["train", "--device", "cuda:1", *QUICK])


def _truncate(p):
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _drop_key(key):
    def damage(p):
        ckpt = torch.load(p, weights_only=True)
        del ckpt[key]
        torch.save(ckpt, p)

    return damage


def _other_weights(p):
    """The checkpoint of another architecture under this run's own config (e.g. edited)."""
    ckpt = torch.load(p, weights_only=True)
    ckpt["model"] = {k: torch.zeros(3) if v.ndim else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, p)


CHECKPOINT_DAMAGE = {
    "truncated": (_truncate, "not a readable checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable checkpoint"),
    "garbage": (lambda p: p.write_bytes(os.urandom(4096)), "not a readable checkpoint"),
    "hostile pickle": (lambda p: p.write_bytes(_global_pickle("os", "system")), "not a readable checkpoint"),
    "a list": (lambda p: torch.save([1, 2], p), "not an ssdfa checkpoint"),
    "missing optimizer": (_drop_key("optimizer"), "lacks optimizer"),
    "missing model": (_drop_key("model"), "lacks model"),
    "other weights": (_other_weights, "state does not fit"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_one_line(capsys, run_copy, case):
    damage, needle = CHECKPOINT_DAMAGE[case]
    damage(run_copy / "checkpoint.pt")
    before = files(run_copy)
    err = one_line_error(capsys, ["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"])
    assert needle in err and "checkpoint.pt" in err
    assert files(run_copy) == before  # refused before anything was written
    if case != "missing optimizer":  # evaluate needs the weights only
        assert needle in one_line_error(capsys, ["evaluate", str(run_copy)])


def test_another_architectures_checkpoint_is_one_line(tmp_path, capsys, run_copy):
    other = tmp_path / "mlp"
    assert main(["train", "--model", "mlp-800", "--epochs", "1", "--out-dir", str(other), *QUICK]) == 0
    shutil.copy(other / "checkpoint.pt", run_copy / "checkpoint.pt")
    err = one_line_error(capsys, ["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"])
    assert "model 'mlp-800' vs 'digits-fc'" in err
    assert "model 'mlp-800'" in one_line_error(capsys, ["evaluate", str(run_copy)])


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"lr": 0.1,', "is not valid JSON"),
        ("\xff\xfe garbage", "is not valid JSON"),
        ("[1, 2]", "expected a table of options"),
        ('{"lr": "fast"}', "lr = 'fast' should be float"),
        ('{"learning_rate": 1}', "unknown key(s) learning_rate"),
    ],
)
def test_a_broken_config_json_is_one_line(capsys, run_copy, text, needle):
    (run_copy / "config.json").write_bytes(text.encode("latin-1"))
    for argv in (
        ["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"],
        ["evaluate", str(run_copy)],
    ):
        assert needle in one_line_error(capsys, argv)


def test_config_files_that_are_not_toml_or_hold_the_wrong_types(tmp_path, capsys):
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "not valid TOML" in one_line_error(capsys, ["train", "--config", str(binary)])
    folder = tmp_path / "a-folder.toml"
    folder.mkdir()
    assert "not found" in one_line_error(capsys, ["train", "--config", str(folder)])
    bad = tmp_path / "m.toml"
    for text, needle in (
        ("methods = 5\n", "methods = 5 should be"),
        ('methods = ["bp", 3]\n', "should be a comma-separated string"),
        ("seeds = true\n", "--seeds must be a positive"),
        ("seeds = 0\n", "--seeds must be a positive"),
        ("lr = nan\n", "lr must be"),
        ('lr = "0.1"\n', "should be float"),
        ("momentum = [1]\n", "should be float"),
    ):
        bad.write_text(text)
        assert needle in one_line_error(capsys, ["compare", "--config", str(bad), *QUICK])


def test_an_idx_header_whose_size_overflows_is_named(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    header = struct.pack(">HBB", 0, 8, 4) + struct.pack(">4I", *([2**32 - 1] * 4))
    for name in D.IDX_FILES:  # 2**128 bytes claimed; int64 products would wrap around
        (folder / name).write_bytes(header + b"\0" * 16)
    err = one_line_error(capsys, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path), *QUICK])
    assert "header says" in err and "the file holds 16" in err


def test_out_dir_on_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert "is a file, not a directory" in one_line_error(capsys, ["train", "--out-dir", str(f), *QUICK])
    assert "afile is a file" in one_line_error(capsys, ["train", "--out-dir", str(f / "sub" / "run"), *QUICK])
    assert "is a file" in one_line_error(
        capsys, ["compare", "--methods", "bp", "--seeds", "1", "--out-dir", str(f), *QUICK]
    )
    assert f.read_text() == "keep me"


def test_read_only_out_dir(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, flags, *a):  # what a read-only folder answers (root ignores chmod)
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", read_only)
    assert "permission denied" in one_line_error(capsys, ["train", "--out-dir", str(ro), *QUICK])
    real_mkdir = Path.mkdir

    def no_mkdir(self, *a, **kw):
        if str(self).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    assert "cannot create" in one_line_error(capsys, ["train", "--out-dir", str(ro / "x"), *QUICK])


def test_a_full_disk_says_so_and_keeps_the_last_checkpoint(capsys, monkeypatch, run_copy):
    """Writes go to /dev/full, which fails like a full disk (ENOSPC) — torch's own message for
    it is "enforce fail at inline_container.cc"."""
    before = (run_copy / "checkpoint.pt").read_bytes()
    real_mkstemp = rundir.tempfile.mkstemp

    def to_dev_full(*a, **kw):
        fd, name = real_mkstemp(*a, **kw)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(rundir.tempfile, "mkstemp", to_dev_full)
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: None)  # /dev/full is not ours to chmod
    err = one_line_error(capsys, ["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"], code=1)
    assert "the disk is full" in err and "--resume" in err
    assert (run_copy / "checkpoint.pt").read_bytes() == before
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


# -- 6. smaller ---------------------------------------------------------------------------------
def test_a_nan_test_loss_stops_the_run_before_its_epoch_is_kept(tmp_path, capsys, monkeypatch):
    real = training.evaluate
    calls = {"n": 0}

    def second_epoch_nan(*a, **kw):
        calls["n"] += 1
        loss, acc = real(*a, **kw)
        return (float("nan") if calls["n"] == 2 else loss), acc

    monkeypatch.setattr(training_loop, "evaluate", second_epoch_nan)
    out = tmp_path / "run"
    assert call(["train", "--epochs", "3", "--out-dir", str(out), *QUICK]) == 3
    assert "test loss is nan at epoch 2" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert len(json.loads((out / "metrics.json").read_text())) == 1


def test_metrics_never_run_ahead_of_the_checkpoint(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real = training.save_checkpoint

    def killed_in_the_second_write(path, payload):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as a kill between "epoch 2 done" and its checkpoint
        real(path, payload)

    monkeypatch.setattr(training_loop, "save_checkpoint", killed_in_the_second_write)
    out = tmp_path / "run"
    assert call(["train", "--epochs", "3", "--out-dir", str(out), *QUICK]) == 130
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())] == [1]


def test_resume_accepts_settings_repeated_with_the_same_value(capsys, run_copy):
    saved = json.loads((run_copy / "config.json").read_text())
    assert (
        call(
            [
                "train",
                "--resume",
                str(run_copy),
                "--epochs",
                "2",
                "--threads",
                "1",
                "--lr",
                str(saved["lr"]),
                "--method",
                saved["method"].upper(),
                "--quiet",
            ]
        )
        == 0
    )
    assert "cannot change lr" in one_line_error(capsys, ["train", "--resume", str(run_copy), "--lr", "0.5"])


def test_resume_cannot_shorten_a_run_or_stretch_a_cosine_schedule(tmp_path, capsys, run_copy):
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"]) == 0
    before = files(run_copy)
    err = one_line_error(capsys, ["train", "--resume", str(run_copy), "--epochs", "1", "--quiet"])
    assert "trained 2 epochs already; --epochs must be at least 2" in err
    assert files(run_copy) == before  # config.json still says what the checkpoint holds
    cos = tmp_path / "cos"
    assert main(["train", "--schedule", "cosine", "--epochs", "1", "--out-dir", str(cos), *QUICK]) == 0
    assert "cosine schedule" in one_line_error(capsys, ["train", "--resume", str(cos), "--epochs", "3"])


def test_compare_refuses_to_mix_runs_of_other_lengths(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    common = ["compare", "--methods", "bp", "--seeds", "1", "--out-dir", out, *QUICK]
    assert main([*common, "--epochs", "2"]) == 0
    assert "# ssdfa compare: digits, digits-fc, 2 epochs" in (tmp_path / "cmp" / "results.md").read_text()
    capsys.readouterr()
    assert "--epochs must be at least 2" in one_line_error(capsys, [*common, "--epochs", "1"])


def test_corrupt_image_is_found_before_training(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imagefolder"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / split / cls / f"{i}.png")
    (root / "train" / "b" / "9.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "r"
    err = one_line_error(
        capsys,
        [
            "train",
            "--dataset",
            "imagefolder",
            "--data-dir",
            str(tmp_path),
            "--model",
            "mlp-800",
            "--out-dir",
            str(out),
            *QUICK,
        ],
    )
    assert "9.jpg: cannot be read as an image" in err
    assert not (out / "config.json").exists()


def test_reference_and_training_are_attributes_after_import_ssdfa():
    code = "import ssdfa; ssdfa.reference.check_gradients; ssdfa.training.run; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr
