"""The two injection paths (ssdfa.injection): every point's signal at once from one stacked
product, or one block at a time, give the same gradients for every rule that injects, on every
model shape the engine handles (flat, conv, residual, token-level, broadcast, softmax heads,
several heads)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from graph_walk import graph_nodes
from ssdfa.feedback import DenseFeedback, FeedbackGroup, SparseFeedback, make_feedback
from zoo import GPT, TransformerClassifier, resnet18


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(6, 16),
            nn.Tanh(),
            ssdfa.FeedbackPoint(),
            nn.Linear(16, 12),
            nn.ReLU(),
            ssdfa.FeedbackPoint(),
        )
        self.a, self.b = nn.Linear(12, 4), nn.Linear(12, 3)

    def forward(self, x):
        h = self.body(x)
        return self.a(h), self.b(h)


def _mlp():
    return nn.Sequential(
        nn.Linear(6, 20),
        nn.Tanh(),
        nn.Linear(20, 16),
        nn.ReLU(),
        nn.Linear(16, 12),
        nn.Sigmoid(),
        nn.Linear(12, 4),
    )


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 4),
    )


def _log_softmax_mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4), nn.LogSoftmax(-1))


torch.manual_seed(0)
CASES = {  # name: (model factory, input, labels, loss)
    "mlp": (_mlp, torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 1]), F.cross_entropy),
    "cnn": (_cnn, torch.randn(3, 1, 7, 7), torch.tensor([0, 3, 1]), F.cross_entropy),
    "resnet": (
        lambda: resnet18(num_classes=4, in_channels=1, width=4),
        torch.randn(2, 1, 16, 16),
        torch.tensor([1, 3]),
        F.cross_entropy,
    ),
    "broadcast": (
        lambda: TransformerClassifier(d=16, heads=2, layers=2, num_classes=4, seq=6),
        torch.randint(0, 50, (3, 6)),
        torch.tensor([0, 2, 3]),
        F.cross_entropy,
    ),
    "token": (
        lambda: GPT(vocab=11, d=16, heads=2, layers=2, block_size=8),
        torch.randint(0, 11, (2, 8)),
        torch.randint(0, 11, (2, 8)),
        lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
    ),
    "log_softmax": (_log_softmax_mlp, torch.randn(4, 6), torch.tensor([0, 1, 2, 3]), F.nll_loss),
    "two_heads": (
        TwoHeads,
        torch.randn(4, 6),
        torch.tensor([0, 1, 2, 3]),
        lambda out, y: F.cross_entropy(out[0], y) + 0.5 * F.cross_entropy(out[1], y % 3),
    ),
}


def _grads(net, method, signals, x, y, loss_fn):
    model = ssdfa.convert(copy.deepcopy(net), method, seed=3, example_input=x, signals=signals)
    model.train()
    torch.manual_seed(11)  # the same dropout masks (and fdfa tangents) for both paths
    target = y if model.rule.needs_target else None
    out = model(x, target=target) if target is not None else model(x)
    loss_fn(out, y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.rules("direct", "forward_feedback")  # every rule whose signals enter in backward
def test_at_once_equals_one_block_at_a_time(method, case):
    make, x, y, loss_fn = CASES[case]
    if method == "drtp" and case in ("two_heads", "token"):
        pytest.skip("drtp feeds one target of a (batch, classes) head back")
    if method == "fdfa" and case in ("two_heads", "log_softmax"):
        pytest.skip("fdfa estimates the Jacobian of one head's logits (it refuses these)")
    torch.manual_seed(0)
    net = make()
    at_once = _grads(net, method, "at_once", x, y, loss_fn)
    per_block = _grads(net, method, "per_block", x, y, loss_fn)
    assert sorted(at_once) == sorted(per_block)
    hidden = [n for n in at_once if n.startswith("net.") and at_once[n].abs().sum() > 0]
    assert len(hidden) >= 2, hidden  # the comparison covers hidden layers, not just the head
    for name in at_once:
        torch.testing.assert_close(
            at_once[name],
            per_block[name],
            rtol=1e-6,
            atol=1e-6,
            msg=lambda m, name=name: f"{method} {case} {name}: {m}",
        )


def test_at_once_forms_every_signal_in_one_call(monkeypatch):
    """One head: a single point_signals call receives every point's feedback, as one group."""
    torch.manual_seed(0)
    model = ssdfa.convert(_mlp(), "dfa", seed=0, example_input=torch.randn(2, 6))
    calls, honest = [], type(model.rule).point_signals

    def logged(self, e, feedback, shapes, target):
        calls.append((type(feedback), len(feedback)))
        return honest(self, e, feedback, shapes, target)

    monkeypatch.setattr(type(model.rule), "point_signals", logged)
    F.cross_entropy(model(torch.randn(5, 6)), torch.tensor([0, 1, 2, 3, 0])).backward()
    assert calls == [(FeedbackGroup, 3)]


@pytest.mark.parametrize("kind", ["dense", "sparse1", "sparse3", "mixed"])
def test_group_projection_equals_each_module_and_follows_changes(kind):
    """e·[B_1 … B_L] split per module equals each e·B_l, also after a B changes in place."""
    g = torch.Generator().manual_seed(0)
    specs = {
        "dense": [ssdfa.FeedbackSpec()] * 3,
        "sparse1": [ssdfa.FeedbackSpec(connections=1)] * 3,
        "sparse3": [ssdfa.FeedbackSpec(connections=3)] * 3,
        "mixed": [ssdfa.FeedbackSpec(), ssdfa.FeedbackSpec(connections=2), ssdfa.FeedbackSpec()],
    }
    fbs = [make_feedback(5, n, spec, generator=g) for n, spec in zip((7, 5, 9), specs[kind])]
    group = FeedbackGroup(fbs)
    e = torch.randn(6, 5, generator=g)
    # the independent reference: each module's dense matrix, by plain algebra
    for got, fb in zip(group.project(e), fbs):
        torch.testing.assert_close(got, e @ fb.dense())
    with torch.no_grad():  # an optimizer step, a load_state_dict: B changes in place
        for fb in fbs:
            (fb.matrix if isinstance(fb, DenseFeedback) else fb.value).mul_(-2.0)
    for got, fb in zip(group.project(e), fbs):
        torch.testing.assert_close(got, e @ fb.dense())
    assert all(isinstance(fb, SparseFeedback) for fb in fbs) == kind.startswith("sparse")


def test_signals_option_is_checked():
    with pytest.raises(ValueError, match="signals='sideways'; choose one of: at_once, per_block"):
        ssdfa.convert(_mlp(), "dfa", signals="sideways")


@pytest.mark.parametrize("case", ["mlp", "broadcast"])
@pytest.mark.rules("direct")
def test_compiled_at_once_is_one_graph_with_no_python_backward(method, case):
    """torch.compile(fullgraph=True) captures the whole converted forward, the at-once injection
    included: its backward is one compiled graph (no InjectAll node runs Python), with eager's
    gradients (what CUDA graphs, mode="reduce-overhead", need; issue 21)."""
    make, x, y, loss_fn = CASES[case]
    torch.manual_seed(0)
    net = make()
    grads = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model = ssdfa.convert(copy.deepcopy(net), method, seed=3, example_input=x)
        model.eval()  # no dropout: the compiled and eager passes draw no masks
        run = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        with torch.enable_grad():
            out = run(x, target=y) if model.rule.needs_target else run(x)
        loss = loss_fn(out, y)
        names = {node.name() for node in graph_nodes(loss)}
        if compiled:
            assert not any("Inject" in n for n in names), names
            assert "CompiledFunctionBackward" in names, names
        else:
            assert "InjectAllBackward" in names, names  # the eager path this compares with
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert sorted(grads[0]) == sorted(grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)
