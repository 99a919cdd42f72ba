"""Property-based fuzz of the command line (hypothesis); ``convert``'s is in test_convert_fuzz.py.

The command line, called in-process: whatever options are given, ``ssdfa`` exits 0 (trained),
2 (refused) or 3 (diverged), never with a traceback, and a nonzero exit is one line on stderr.
Bounded: tiny runs, few examples.
"""

from __future__ import annotations

import io
import itertools
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssdfa
from ssdfa.cli import main

# SSDFA_FUZZ_EXAMPLES=500 (and SSDFA_FUZZ_RANDOM=1 for new draws) for a deeper hunt
EXAMPLES = int(os.environ.get("SSDFA_FUZZ_EXAMPLES", "40"))
DERANDOMIZE = not os.environ.get("SSDFA_FUZZ_RANDOM")
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NUMBER_TEXT = st.sampled_from(
    [
        "nan",
        "inf",
        "-inf",
        "1e39",
        "-1e39",
        "1e-45",
        "0",
        "-0",
        "",
        "abc",
        "1e23",
        "0x10",
        "1_000",
        " 3 ",
        "١",
    ]
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    NUMBER_TEXT,
    st.floats(-2, 2).map(lambda v: f"{v:.3g}"),
)
SMALL_INTS = st.one_of(st.integers(-3, 4).map(str), NUMBER_TEXT)
INTS = st.one_of(st.integers(-3, 40).map(str), st.sampled_from([str(2**63), str(10**30)]), NUMBER_TEXT)
NAMES = st.sampled_from(["", " ", "nope", "../x", "\x00", "BP", "ssdfa "])

OPTIONS = {  # flag: values (epochs and sizes kept small: a valid draw trains for real)
    "--method": st.one_of(st.sampled_from(list(ssdfa.METHODS)), NAMES),
    "--dataset": st.sampled_from(
        ["digits", "Digits", "synthetic-regression", "mnist", "cifar10", "imagefolder", "nope", ""]
    ),
    "--model": st.sampled_from(
        ["digits-fc", "mlp-800", "drtp-fc1-500", "drtp-reg", "mnist-cnn", "resnet", ""]
    ),
    "--epochs": SMALL_INTS,
    "--batch-size": INTS,
    "--limit-train": SMALL_INTS,
    "--optimizer": st.sampled_from(["sgd", "nesterov", "adam", "SGD", "rmsprop"]),
    "--lr": FLOATS,
    "--momentum": FLOATS,
    "--weight-decay": FLOATS,
    "--gamma": FLOATS,
    "--schedule": st.sampled_from(["none", "step", "cosine", "linear"]),
    "--step-size": INTS,
    "--loss": st.sampled_from(["auto", "ce", "bce", "mse", "nll"]),
    "--seed": INTS,
    "--sparsity": FLOATS,
    "--connections": INTS,
    "--rank": INTS,
    "--feedback-lr": FLOATS,
    "--feedback-scale": FLOATS,
    "--train-only": st.sampled_from(["fc", "conv", ""]),
    "--alignment": SMALL_INTS,
    "--device": st.sampled_from(["cpu", "auto", "meta", "mps", "tpu", "cuda:99", "", "CPU"]),
    "--threads": st.sampled_from(["1", "0", "-1", "100000000", "x"]),
    "--image-size": SMALL_INTS,
}
FLAGS = sorted(OPTIONS) + ["--unlocked", "--download", "--overwrite", "--json"]


@st.composite
def command_lines(draw):
    chosen = draw(st.lists(st.sampled_from(FLAGS), max_size=6, unique=True))
    argv = []
    for flag in chosen:
        argv.append(flag)
        if flag in OPTIONS:
            argv.append(draw(OPTIONS[flag]))
    return argv


@pytest.fixture
def quiet_dir(no_real_data, monkeypatch):
    monkeypatch.chdir(no_real_data)
    return no_real_data


def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, err.getvalue()


CODES: list[int] = []


def _check(code, err, argv):
    CODES.append(code)
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2, 3), (argv, code, err)
    if code != 0:
        assert len(err.strip().splitlines()) == 1, (argv, err)


def test_fuzz_train_options(quiet_dir):
    counter = itertools.count()

    @SETTINGS
    @given(command_lines())
    def check(extra):
        out = str(quiet_dir / f"run{next(counter)}")
        # the fixed part first, so a fuzzed flag wins; epochs and data stay tiny
        argv = [
            "train",
            "--quiet",
            "--epochs",
            "1",
            "--limit-train",
            "32",
            "--batch-size",
            "16",
            "--out-dir",
            out,
            *extra,
        ]
        code, err = _run(argv)
        _check(code, err, argv)

    check()


def test_fuzz_compare_and_evaluate_options(quiet_dir):
    counter = itertools.count()
    assert (
        _run(
            ["train", "--quiet", "--epochs", "1", "--limit-train", "32", "--out-dir", str(quiet_dir / "done")]
        )[0]
        == 0
    )

    @SETTINGS
    @given(
        command_lines(),
        st.sampled_from(["bp", "dfa,ssdfa", "", ",", "bp,nope", "BP"]),
        SMALL_INTS,
        st.sampled_from(["-5", "0", "1", "x", "100000"]),
        st.sampled_from(["cpu", "meta", "mps", "", "cuda:7"]),
    )
    def check(extra, methods, seeds, batch, device):
        out = str(quiet_dir / f"cmp{next(counter)}")
        argv = [
            "compare",
            "--quiet",
            "--epochs",
            "1",
            "--limit-train",
            "32",
            "--batch-size",
            "16",
            "--seeds",
            "1",
            "--out-dir",
            out,
            *extra,
            "--methods",
            methods,
            "--seeds",
            seeds,
        ]
        _check(*_run(argv), argv)
        argv = ["evaluate", str(quiet_dir / "done"), "--batch-size", batch, "--device", device]
        _check(*_run(argv), argv)

    check()
