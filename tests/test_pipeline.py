"""``ssdfa pipeline``: K stages over gloo train exactly as one process, and send what the formula says.

Byte counts are checked against numbers written out here by hand (digits-fc: 64-400-10, one
boundary of 400 features; drtp-fc2-500 on digits: 64-500-500-10, boundaries of 500).
"""

import json

import pytest
import torch

from ssdfa.cli import main
from ssdfa.models import create_model
from ssdfa.pipeline import (PipelineError, boundary_widths, expected_bytes, stage_blocks)


def _reports(capsys, argv):
    assert main(argv) == 0
    return {r["method"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}


def test_stages_split_at_weight_layers():
    net = create_model("drtp-fc2-500", (1, 16, 16), 10)  # Flatten, L, Tanh, L, Tanh, L
    assert stage_blocks(net, 3) == [[[0, 1, 2]], [[3, 4]], [[5]]]
    assert stage_blocks(net, 2) == [[[0, 1, 2], [3, 4]], [[5]]]
    assert boundary_widths(net, (1, 16, 16), 3) == [500, 500]
    with pytest.raises(PipelineError, match="more than the model's 3 weight layers"):
        stage_blocks(net, 4)


def test_byte_formula():
    # bp: forward + backward; dfa: + e to K-1 stages; drtp: + int64 labels to K-1 stages
    assert expected_bytes("bp", [400], 32, 10) == 2 * 32 * 400 * 4
    assert expected_bytes("dfa", [500, 500], 16, 10) == 2 * 16 * 500 * 4 + 2 * 16 * 10 * 4
    assert expected_bytes("drtp", [500, 500], 16, 10) == 2 * 16 * 500 * 4 + 2 * 16 * 8


def test_two_stages_match_one_process_and_bytes(capsys):
    torch.manual_seed(0)
    r = _reports(capsys, ["pipeline", "--stages", "2", "--methods", "bp,drtp", "--dataset",
                          "digits", "--steps", "3", "--batch-size", "32", "--micro-batches", "2",
                          "--json"])
    assert set(r) == {"bp", "drtp"}
    assert r["bp"]["bytes_per_step"] == 2 * 32 * 400 * 4
    assert r["drtp"]["bytes_per_step"] == 32 * 400 * 4 + 32 * 8
    for m, rep in r.items():
        assert rep["bytes_per_step"] == rep["expected_bytes_per_step"], m
        assert rep["matches_single_process"] is True, m
        assert rep["max_weight_difference"] < 1e-5, m
        assert len(rep["recv_wait_seconds"]) == 2 and rep["seconds_per_step"] > 0
        assert 0 <= rep["test_accuracy"] <= 1


def test_three_stages_two_hidden_blocks_dfa_ssdfa(capsys):
    # each hidden stage gets its own B_l: the one ssdfa.convert(net, method, seed) draws there
    r = _reports(capsys, ["pipeline", "--stages", "3", "--methods", "dfa,ssdfa", "--dataset",
                          "digits", "--model", "drtp-fc2-500", "--steps", "2",
                          "--batch-size", "16", "--micro-batches", "4", "--seed", "3", "--json"])
    for m in ("dfa", "ssdfa"):
        assert r[m]["bytes_per_step"] == 2 * 16 * 500 * 4 + 2 * 16 * 10 * 4
        assert r[m]["bytes_per_step"] == r[m]["expected_bytes_per_step"]
        assert r[m]["matches_single_process"] is True
        assert r[m]["max_weight_difference"] < 1e-5


@pytest.mark.parametrize("argv, words", [
    (["--stages", "3"], "more than the model's 2 weight layers"),
    (["--stages", "0"], "--stages must be at least 1"),
    (["--methods", "bp,kp"], "choose from bp, dfa, sdfa, ssdfa, drtp"),
    (["--micro-batches", "64"], "--micro-batches must be 1..--batch-size"),
])
def test_bad_arguments_one_line_exit_2(capsys, argv, words):
    assert main(["pipeline", "--dataset", "digits", "--steps", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
