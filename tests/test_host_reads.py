"""A training step of a converted model reads no tensor value on the host (ssdfa.host_reads).

On a GPU each read (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, …) waits for the device
to finish all queued work, so the CPU cannot run ahead launching the next kernels and a
launch-bound step becomes CPU time plus GPU time.  These reads are visible on the CPU too:
the Python-level ones by wrapping the Tensor methods, the C++-level ones as aten operators in a
profile.  DRTP reads its labels once per step, min and max together, for a clear message about
an out-of-range label; nothing else may read anything.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.profiler import profile

import ssdfa
from ssdfa.host_reads import aten_reads, host_reads
from test_injection import CASES

ALLOWED = {"drtp": ["tolist"]}  # its labels' range, once per step (rules/drtp.check_labels)


def _step(model, opt, x, y, loss_fn):
    opt.zero_grad(set_to_none=True)
    out = model(x, target=y) if model.rule.needs_target else model(x)
    loss_fn(out, y).backward()
    opt.step()


@pytest.mark.parametrize("case", ["mlp", "cnn", "resnet", "broadcast", "token"])
@pytest.mark.parametrize("signals", ["at_once", "per_block"])
@pytest.mark.rules(
    "backprop", "layerwise", "direct", "local", "output_only", "forward_feedback", "forward_gradient"
)
def test_a_training_step_reads_no_tensor_value(method, case, signals):
    make, x, y, loss_fn = CASES[case]
    if method == "drtp" and case == "token":
        pytest.skip("drtp feeds one target of a (batch, classes) head back")
    torch.manual_seed(0)
    net = make()
    try:
        model = ssdfa.convert(copy.deepcopy(net), method, seed=0, example_input=x, signals=signals)
    except (ValueError, ssdfa.UnsupportedModelError) as refused:
        pytest.skip(f"{method} refuses {case}: {str(refused).splitlines()[0]}")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _step(model, opt, x, y, loss_fn)  # the first call builds the feedback: it may read
    _step(model, opt, x, y, loss_fn)  # the optimizer's momentum buffers exist from here
    with host_reads() as seen, profile() as prof:
        _step(model, opt, x, y, loss_fn)
    assert [name for name, _ in seen] == ALLOWED.get(method, []), f"{method} on {case} read {seen}"
    assert aten_reads(prof) == {}, f"{method} on {case}: {aten_reads(prof)}"


def test_the_check_catches_a_read(monkeypatch):
    """The guard itself: a rule that reads e's norm in backward is seen."""
    make, x, y, loss_fn = CASES["mlp"]
    model = ssdfa.convert(make(), "dfa", seed=0, example_input=x)
    honest = type(model.rule).error_signal

    def reads(self, e, target):
        if float(e.abs().max()) > 1e9:  # a value read on the host
            raise AssertionError
        return honest(self, e, target)

    monkeypatch.setattr(type(model.rule), "error_signal", reads)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    _step(model, opt, x, y, loss_fn)
    with host_reads() as seen:
        _step(model, opt, x, y, loss_fn)
    assert [name for name, _ in seen] == ["__float__"]
    assert seen[0][1] == f"test_host_reads.py:{reads.__code__.co_firstlineno + 1}"  # the caller
