"""The benchmark scripts run in their quick modes and write well-formed JSON (nothing is timed)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module", autouse=True)
def bench_on_path():
    """The scripts import their sibling ``_common``; run them in-process (torch loads once)."""
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    yield
    sys.path.remove(str(BENCH))
    torch.set_num_threads(threads)  # the scripts set 2 threads


def run_script(name, tmp_path, *args):
    out = tmp_path / f"{name}.json"
    module = importlib.import_module(name)
    module.main(["--quick", "--out", str(out), *args])
    return json.loads(out.read_text())


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_machine(res):
    for key in ("python", "torch", "cpu", "threads", "device"):
        assert key in res["machine"], key
    assert res["command"].startswith("python bench/")


def test_step_time_quick(tmp_path):
    res = run_script("step_time", tmp_path, "--no-biotorch", "--methods", "bp,dfa,ssdfa")
    check_machine(res)
    fc = res["cases"]["fc"]
    for key in ("plain-bp", "forward-only", "floor", "bp", "dfa", "ssdfa"):
        assert positive(fc["median_step_seconds"][key]), key
        assert positive(fc["ratio_to_plain_bp"][key]), key
        assert positive(fc["ratio_to_floor"][key]), key
    med = fc["median_step_seconds"]
    for key in med:  # each ratio is its own median over the baseline's
        assert fc["ratio_to_plain_bp"][key] == pytest.approx(med[key] / med["plain-bp"]), key
        assert fc["ratio_to_floor"][key] == pytest.approx(med[key] / med["floor"]), key
    assert len(set(med.values())) > 1  # distinct measurements, not one number copied around


def test_step_time_skips_unknown_method_with_a_message(tmp_path, monkeypatch):
    import _common

    monkeypatch.setattr(_common.ssdfa, "METHODS", ("bp", "dfa"))
    have, missing = _common.available_methods(["bp", "dfa", "dkp", "drtp-unlocked"])
    assert have == ["bp", "dfa"] and missing == ["dkp", "drtp-unlocked"]


def test_feedback_cost_quick(tmp_path):
    res = run_script("feedback_cost", tmp_path, "--methods", "dfa,ssdfa")
    check_machine(res)
    assert positive(res["projection_seconds"]["dfa"])
    assert positive(res["projection_seconds"]["ssdfa"])
    st = res["storage"]
    # SSDFA stores one index and one value per neuron: O(N), less than dense M·N
    assert 0 < st["ssdfa"]["feedback_bytes"] < st["dfa"]["feedback_bytes"]
    assert st["ssdfa"]["macs_per_example"] * 10 == st["dfa"]["macs_per_example"]  # 10 classes


def test_conv_scale_quick(tmp_path):
    res = run_script("conv_scale", tmp_path)
    check_machine(res)
    rows = res["cases"]["mnist-cnn"]
    for name in ("plain-bp", "dfa", "ssdfa"):
        r = rows[name]
        assert set(r["update_ratio"]) == {"conv0", "conv1", "fc2", "fc3"}
        assert all(positive(v) for v in r["update_ratio"].values())
        assert isinstance(r["diverged"], bool) and positive(r["first_loss"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_memory_quick(tmp_path):  # one fresh subprocess per measurement
    res = run_script("memory", tmp_path)
    check_machine(res)
    fc = res["cases"]["fc"]
    assert positive(fc["plain-bp"]["peak_bytes"]) and positive(fc["plain-bp"]["step_extra_bytes"])
    assert "step_extra_bytes" in res["depth"]["bp"]["2"]


def test_epoch_time_quick(tmp_path):
    res = run_script("epoch_time", tmp_path)
    assert all(positive(v) for v in res["ratio_to_plain_bp"].values())


def test_profile_step_quick(tmp_path):
    res = run_script("profile_step", tmp_path, "--variants", "plain-bp,dfa")
    check_machine(res)
    for name in ("plain-bp", "dfa"):
        r = res["variants"][name]
        assert positive(r["step_us"]) and r["top_ops"] and 0 <= r["matmul_self_us"] <= r["step_us"] * 1.01


def test_real_models_quick(tmp_path):
    res = run_script("real_models", tmp_path, "--model", "examples-net", "--device", "cpu",
                     "--methods", "plain,dfa,shallow")
    check_machine(res)
    assert list(res["methods"]) == ["plain", "dfa", "shallow"]
    for entry in res["methods"].values():
        (epoch,) = entry["epochs"]
        assert 0 <= epoch["test_accuracy"] <= 100 and positive(epoch["seconds"])
