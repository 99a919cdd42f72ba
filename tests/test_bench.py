"""The benchmark scripts run in their quick modes and write well-formed JSON (nothing is timed)."""

from __future__ import annotations

import importlib
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

from graph_walk import graph_nodes

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
    times = fc["all_step_seconds"]
    for key, pr in fc["paired_ratio_to_plain_bp"].items():  # repetition by repetition
        ratios = sorted(a / b for a, b in zip(times[key], times["plain-bp"]))
        assert pr["median"] == pytest.approx(statistics.median(ratios)), key
        assert pr["q1"] <= pr["median"] <= pr["q3"], key
    assert fc["paired_ratio_to_plain_bp"]["plain-bp"]["median"] == 1.0


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
    res = run_script(
        "real_models",
        tmp_path,
        "--model",
        "examples-net",
        "--device",
        "cpu",
        "--methods",
        "plain,dfa,shallow",
    )
    check_machine(res)
    assert list(res["methods"]) == ["plain", "dfa", "shallow"]
    for entry in res["methods"].values():
        (epoch,) = entry["epochs"]
        assert 0 <= epoch["test_accuracy"] <= 100 and positive(epoch["seconds"])


# -- issue 21: the launch-bound case ----------------------------------------------------------
def test_step_time_launch_bound_quick(tmp_path):
    """Both launch-bound models run end to end (one tiny step each, nothing timed)."""
    res = run_script(
        "step_time",
        tmp_path,
        "--cases",
        "launch-bound",
        "--batch",
        "2",
        "--no-biotorch",
        "--methods",
        "dfa,ssdfa",
        "--threads",
        "1",
    )
    check_machine(res)
    assert set(res["cases"]) == {"launch-bound/resnet18", "launch-bound/transformer"}
    for entry in res["cases"].values():
        assert entry["batch"] == 2 and not entry["failed"]
        med = entry["median_step_seconds"]
        assert set(med) == {"plain-bp", "forward-only", "floor", "dfa", "ssdfa"}
        for key in med:
            assert positive(med[key]), key
            assert entry["ratio_to_plain_bp"][key] == pytest.approx(med[key] / med["plain-bp"])


@pytest.mark.slow  # torch.compile of two models: a minute or more on 2 cores
def test_step_time_launch_bound_compiled(tmp_path):
    """python bench/step_time.py --cases launch-bound/transformer --compile --quick"""
    res = run_script(
        "step_time",
        tmp_path,
        "--cases",
        "launch-bound/transformer",
        "--batch",
        "2",
        "--no-biotorch",
        "--methods",
        "dfa",
        "--compile",
        "--threads",
        "1",
    )
    entry = res["cases"]["launch-bound/transformer"]
    assert not entry["failed"]
    assert set(entry["ratio_to_compiled_plain_bp"]) == {"plain-bp+compile", "dfa+compile"}


def _launch_models():
    import _launch

    return [_launch.CASES["resnet18"], _launch.CASES["transformer"]]


@pytest.mark.parametrize("which", [0, 1], ids=["resnet18", "transformer"])
def test_detached_floor_computes_only_dw(which):
    """The floor's ∂W: at the head, BP's (eᵀ·a with e = softmax - onehot over the batch); at a
    hidden layer, δᵀ·a for its own fixed δ; and δ at a layer reaches that layer's parameters only
    (no input gradient, no other layer's ∂W)."""
    import copy

    from torch import nn

    import _common

    case = _launch_models()[which]
    torch.manual_seed(0)
    net = case.build()
    x, y = _common.make_data(case, 2, seed=3)
    floor_net = copy.deepcopy(net)
    seen = {}  # module -> (input, output) in the plain BP model

    def keep(m, i, o):
        seen[m] = (i[0].detach(), o.detach())

    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.register_forward_hook(keep)
    torch.manual_seed(7)
    z = net(x)
    torch.nn.functional.cross_entropy(z, y).backward()

    floor = _common.DetachedFloor(floor_net, case.head)
    floor.keep_roots = True
    torch.manual_seed(7)
    floor.grads(x, y)

    head, head_bp = floor_net.get_submodule(case.head), net.get_submodule(case.head)
    a = seen[head_bp][0]
    e = torch.softmax(z.detach(), 1) - torch.nn.functional.one_hot(y, 10).float()
    torch.testing.assert_close(head.weight.grad, (e / len(y)).t() @ a)
    torch.testing.assert_close(head.weight.grad, head_bp.weight.grad)

    deltas = {name: d for (name, _), d in floor.deltas.items()}
    if which == 0:  # a hidden conv: ∂W = conv2d_weight(a, δ)
        name = "layer3.1.conv2"
        conv, conv_bp = floor_net.get_submodule(name), net.get_submodule(name)
        expect = torch.nn.grad.conv2d_weight(
            seen[conv_bp][0], conv.weight.shape, deltas[name], conv.stride, conv.padding
        )
        torch.testing.assert_close(conv.weight.grad, expect, rtol=1e-4, atol=1e-7)
    else:  # a hidden Linear: ∂W = δᵀ·a over batch and tokens, ∂b = Σδ
        name = "encoder.layers.1.linear2"
        lin, lin_bp = floor_net.get_submodule(name), net.get_submodule(name)
        d, a = deltas[name].reshape(-1, lin.out_features), seen[lin_bp][0].reshape(-1, lin.in_features)
        torch.testing.assert_close(lin.weight.grad, d.t() @ a)
        torch.testing.assert_close(lin.bias.grad, d.sum(0))

    own = {}  # root name -> ids of the parameters its δ may reach
    for name, m in floor.layers:
        if isinstance(m, nn.MultiheadAttention):
            own[f"{name}.in_proj"] = {id(m.in_proj_weight), id(m.in_proj_bias)}
            own[f"{name}.out_proj"] = {id(p) for p in m.out_proj.parameters()}
        elif name != case.head:
            own[name] = {id(p) for p in m.parameters(recurse=False)}
    assert sorted(n for n, _ in floor.roots) == sorted(own)  # every weight layer, once
    for name, z in floor.roots:  # δ_l reaches only layer l's own parameters: no input gradient
        leaves = {id(fn.variable) for fn in graph_nodes(z) if hasattr(fn, "variable")}
        assert leaves == own[name], name


def test_point_cost_quick(tmp_path):
    """The per-point profile runs, and DFA written by hand (and the hook-free ideal) gives
    ssdfa's gradients."""
    res = run_script("point_cost", tmp_path, "--models", "transformer", "--threads", "1")
    check_machine(res)
    t = res["models"]["transformer"]
    assert len(t["points"]) == 4 and t["by_hand_max_grad_difference"] < 1e-5
    assert {"plain-bp", "floor", "dfa", "by-hand", "ideal", "bp-loop"} == set(t["median_step_seconds"])
    assert t["ideal_max_grad_difference"] < 1e-5
    assert t["aten_calls_per_step"]["ideal"] <= t["aten_calls_per_step"]["dfa"]
    assert t["graph"]["bp-loop"]["total"] == t["graph"]["plain-bp"]["total"]  # the same BP graph
    # signals at once: one InjectAll node per step and no per-point node
    assert t["graph"]["dfa"]["by_kind"].get("InjectAllBackward") == 1
    assert "PointBackward" not in t["graph"]["dfa"]["by_kind"]
    assert t["profile"]["point wraps (fwd: detach; per block: Point.apply, carrier)"]["calls_per_step"] == 4
    assert t["profile"]["head wrap (fwd: InjectAll.apply, or Inject.apply per block)"]["calls_per_step"] == 1
    assert t["profile"]["InjectAll.backward node (at once)"]["calls_per_step"] == 1
    assert t["profile"]["Point.backward nodes (per block)"]["calls_per_step"] == 0
    assert t["profile"]["  of which e·B_l (point_signals)"]["calls_per_step"] >= 1
    assert all(positive(c) for c in t["aten_calls_per_step"].values())


def test_sync_check_quick(tmp_path):
    res = run_script("sync_check", tmp_path)
    check_machine(res)
    fc = res["cases"]["fc"]
    assert not fc["plain-bp"]["syncs"] and not fc["dfa"]["syncs"] and not fc["bp"]["syncs"]
    assert fc["drtp"]["syncs"] and fc["drtp"]["python_reads"] == [fc["drtp"]["python_reads"][0]]
    assert fc["drtp"]["python_reads"][0].startswith("tolist at drtp.py:")  # its one label check
