"""Code shapes real projects use, written as their users write them (issue 17, items 1-6).

Each gradient is compared with one computed here: plain autograd on the user's own network with
forward hooks that cut each point's output and keep each head's output, the error e_h = ∂L/∂z_h
taken there, and the rule's signal written from its paper (δ_l = Σ_h signal(e_h)·B_{l,h}).
Nothing of ssdfa's fast path or of ``ssdfa.reference`` is used for the expected values.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa.reference import check_gradients
from ssdfa.wrapper import FeedbackModel
from zoo import GPT, TransformerClassifier


def signal(method, e, y):
    """The rule's signal from its paper, for error rows e (rows, M) and labels y (rows,)."""
    if method == "sign_dfa":
        return e.sign() / e.shape[0]
    if method == "drtp":
        return F.one_hot(y, e.shape[1]).to(e.dtype) / e.shape[0]
    return e  # dfa, sdfa, ssdfa, dkp


def formula_grads(model, call, loss_of, heads, method, y, side=None):
    """{name: gradient} of ``model.net`` under ``method``, from the formulas.  ``heads``: the
    modules whose outputs are the predictions, in the order of the model's error vector;
    ``side(k, h)``: the true gradient of a loss term on point k's own output h, if any."""
    net = model.net
    hs, zs, handles = [], {}, []
    for marker in model.points().values():

        def cut(m, i, o):
            hs.append(o)
            return o.detach()

        handles.append(marker.register_forward_hook(cut))
    for name in heads:
        handles.append(
            net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: zs.__setitem__(name, o))
        )
    try:
        out = call(net)
    finally:
        for h in handles:
            h.remove()
    loss = loss_of(out)
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    total = dict(
        zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=True))
    )
    errors = []
    for name in heads:
        g = torch.autograd.grad(loss, zs[name], retain_graph=True, allow_unused=True)[0]
        errors.append(torch.zeros_like(zs[name]) if g is None else g)
    widths = [e.shape[-1] if hs and hs[0].dim() == 3 else e[0].numel() for e in errors]
    for k, (h, b) in enumerate(zip(hs, model.feedback_matrices().values())):
        delta = torch.zeros_like(h)
        for e, bh in zip(errors, torch.split(b, widths, dim=0)):
            if h.dim() == 3 and e.dim() == 3:  # an error per position (Launay et al.)
                delta = delta + (signal(method, e.reshape(-1, e.shape[-1]), y.reshape(-1)) @ bh).view_as(h)
            elif h.dim() == 3:  # a (batch, classes) head: every position gets the example's e·B
                delta = delta + (signal(method, e, y) @ bh)[:, None, :].expand_as(h)
            else:
                delta = delta + (signal(method, e.reshape(e.shape[0], -1), y) @ bh).view_as(h)
        if side is not None:
            delta = delta + side(k, h.detach())
        for n, g in zip(
            params, torch.autograd.grad(h, list(params.values()), delta, allow_unused=True, retain_graph=True)
        ):
            if g is not None:
                total[n] = g if total[n] is None else total[n] + g
    return {n: g for n, g in total.items() if g is not None}


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.net.named_parameters() if p.grad is not None}


def assert_same(got, want, rtol=1e-4, atol=1e-6):
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=rtol, atol=atol, msg=n)


# -- 1. a loss computed inside forward ---------------------------------------------------------
class GPTWithLoss(GPT):
    """nanoGPT's own forward: ``logits, loss = model(idx, targets)``, weights tied."""

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # inference: the last position only
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


@pytest.mark.rules("direct")
def test_nanogpt_loss_inside_forward_reaches_every_block(method):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    idx, tgt = torch.randint(0, 32, (3, 10), generator=g), torch.randint(0, 32, (3, 10), generator=g)
    model = ssdfa.convert(GPTWithLoss(vocab=32), method, seed=0, example_input=idx)
    model.eval()  # GPT has no dropout; eval keeps the two passes identical anyway
    _, loss = model(idx, tgt, target=tgt)
    loss.backward()
    assert [h.name for h in model.heads] == ["lm_head"]
    got = grads_of(model)
    assert len(got) == len(list(model.net.parameters())), "every parameter must get a gradient"
    want = formula_grads(model, lambda net: net(idx, tgt), lambda out: out[1], ["lm_head"], method, tgt)
    assert_same(got, want)
    # and the hidden blocks learn (they got None, training equal to shallow's, before)
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.net.named_parameters()
        if n.startswith("h.0.")
    )


def test_nanogpt_inference_call_under_grad_is_refused_clearly():
    model = ssdfa.convert(GPTWithLoss(), "dfa", seed=0)
    idx = torch.randint(0, 40, (2, 8))
    model(idx, idx)  # builds: token-level points
    with pytest.raises(ValueError, match="lm_head.*gave shape"):
        model(idx)  # logits of the last position only, (B, 1, V), under grad
    with torch.no_grad():
        assert model(idx)[0].shape == (2, 1, 40)


# -- 2. several outputs, a loss on more than the first ---------------------------------------
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 12)
        self.p1, self.p2 = ssdfa.FeedbackPoint(), ssdfa.FeedbackPoint()
        self.head_a, self.head_b = nn.Linear(12, 3), nn.Linear(12, 5)

    def forward(self, x):
        h = self.p1(torch.tanh(self.fc1(x)))
        h = self.p2(torch.tanh(self.fc2(h)))
        return self.head_a(h), self.head_b(h)


LOSSES = {
    "b-only": lambda out, ya, yb: F.cross_entropy(out[1], yb),
    "a+10b": lambda out, ya, yb: F.cross_entropy(out[0], ya) + 10 * F.cross_entropy(out[1], yb),
}


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.rules("direct", where=lambda r: not r.needs_target)  # drtp: one head (below)
def test_each_head_feeds_back_its_own_error(method, loss):
    x = torch.randn(7, 6)
    ya, yb = torch.randint(0, 3, (7,)), torch.randint(0, 5, (7,))
    model = ssdfa.convert(TwoHeads(), method, seed=0)
    LOSSES[loss](model(x), ya, yb).backward()
    assert [h.name for h in model.heads] == ["head_a", "head_b"]
    assert [tuple(b.shape) for b in model.feedback_matrices().values()] == [(8, 16), (8, 12)]
    got = grads_of(model)
    assert got["fc1.weight"].abs().sum() > 0 and got["fc2.weight"].abs().sum() > 0
    want = formula_grads(
        model, lambda net: net(x), lambda out: LOSSES[loss](out, ya, yb), ["head_a", "head_b"], method, None
    )
    assert_same(got, want)


def test_one_head_model_keeps_its_feedback_when_a_second_head_is_added():
    """Head 0's B_{l,0} are drawn as a one-head model's: adding a head changes nothing else."""
    one = ssdfa.convert(
        nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)),
        "ssdfa",
        seed=0,
    )
    two = ssdfa.convert(TwoHeads(), "ssdfa", seed=0)
    for b1, b2 in zip(one.feedback_matrices().values(), two.feedback_matrices().values()):
        torch.testing.assert_close(b2[:3], b1)
        assert ((b2[3:] != 0).sum(0) == 1).all()  # SSDFA: one error of head b per neuron


def test_drtp_refuses_several_heads():
    with pytest.raises(ValueError, match="several output heads.*head_a, head_b"):
        ssdfa.convert(TwoHeads(), "drtp", seed=0)


class AuxFeatures(nn.Module):
    """Returns the logits and its last hidden block's output, for an auxiliary loss."""

    def __init__(self, returned="point"):
        super().__init__()
        torch.manual_seed(4)
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 4)
        self.p1, self.p2 = ssdfa.FeedbackPoint(), ssdfa.FeedbackPoint()
        self.returned = returned

    def forward(self, x):
        h = self.p1(torch.relu(self.fc1(x)))
        h = self.p2(torch.tanh(self.fc2(h)))
        return self.fc3(h), (h if self.returned == "point" else 2 * h)


@pytest.mark.parametrize("method", ["dfa", "ssdfa", "sign_dfa"])
def test_an_auxiliary_loss_on_returned_features_is_added(method):
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    model = ssdfa.convert(AuxFeatures(), method, seed=0)
    z, feats = model(x)
    (F.cross_entropy(z, y) + 0.1 * feats.pow(2).sum()).backward()
    # the auxiliary term's gradient at point 2's output, by hand: d(0.1·Σh²)/dh = 0.2·h
    want = formula_grads(
        model,
        lambda net: net(x),
        lambda out: F.cross_entropy(out[0], y),
        ["fc3"],
        method,
        y,
        side=lambda k, h: 0.2 * h if k == 1 else 0 * h,
    )
    assert_same(grads_of(model), want)


def test_a_loss_on_an_output_computed_after_the_cut_fails_loudly():
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    model = ssdfa.convert(AuxFeatures("scaled"), "dfa", seed=0)
    z, feats = model(x)
    F.cross_entropy(z, y).backward()  # unused: fine
    z, feats = model(x)
    with pytest.raises(RuntimeError, match=r"output\[1\].*feedback point's output"):
        (F.cross_entropy(z, y) + feats.pow(2).sum()).backward()


# -- 3. GradScaler on an unscaled backward ---------------------------------------------------
def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("method", ["sign_dfa", "drtp", "dfa"])
def test_the_loss_scale_is_applied_only_to_backwards_that_were_scaled(method):
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    plain = ssdfa.convert(mlp(), method, seed=0)
    F.cross_entropy(plain(x, target=y), y).backward()
    want = grads_of(plain)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    model = ssdfa.convert(mlp(), method, seed=0, grad_scaler=scaler)
    F.cross_entropy(model(x, target=y), y).backward()  # a plain fp32 step: no scale
    assert_same(grads_of(model), want)
    model.zero_grad()
    scaler.scale(F.cross_entropy(model(x, target=y), y)).backward()
    assert_same(grads_of(model), {n: g * 2.0**16 for n, g in want.items()}, rtol=1e-4, atol=1e-2)
    model.zero_grad()
    F.cross_entropy(model(x, target=y), y).backward()  # and unscaled again after a scaled one
    assert_same(grads_of(model), want)
    check_gradients(model, x, y)


# -- 4. the user's forward runs, not a trace of it -------------------------------------------
class Flagged(nn.Module):
    """pytorch/examples-style functional dropout and a flag the forward reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 32), nn.Linear(32, 16), nn.Linear(16, 4)
        self.temperature = 1.0

    def forward(self, x):
        h = F.dropout(F.relu(self.fc1(x)), 0.5, training=self.training)
        h = torch.tanh(self.fc2(h))
        return self.fc3(h) / self.temperature


@pytest.mark.parametrize("method", ["bp", "dfa", "ssdfa", "drtp", "fa"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dropout_mode_and_flags_follow_the_live_forward(method, mode):
    net = Flagged().train(mode == "train")
    model = ssdfa.convert(net, method, seed=0)
    if model.rule.direct and method != "bp":
        assert list(model.points()) == ["point0", "point1"]
    x = torch.randn(64, 6)
    model.eval()
    plain = Flagged().eval()
    torch.testing.assert_close(model(x, target=torch.zeros(64, dtype=torch.long)), plain(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x)), "dropout must apply in train mode"
    model.eval()
    # fa/kp run a copy of the module tree with each layer wrapped: its flags live on model.net
    (model.net if model.rule.layerwise else net).temperature = plain.temperature = 4.0
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


# -- 5. lazy modules -------------------------------------------------------------------------
def lazy_net():
    torch.manual_seed(6)
    return nn.Sequential(nn.LazyLinear(32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 10))


@pytest.mark.parametrize("method", ["dfa", "ssdfa", "drtp", "bp"])
def test_lazy_modules_are_sized_by_the_first_call(method):
    x, y = torch.randn(4, 12), torch.randint(0, 10, (4,))
    model = ssdfa.convert(lazy_net(), method, seed=0)
    F.cross_entropy(model(x, target=y), y).backward()
    assert model.net[0].weight.shape == (32, 12)
    if method != "bp":
        want = formula_grads(
            model,
            lambda net: net(x),
            lambda out: F.cross_entropy(out, y),
            [list(dict(model.net.named_children()))[-1]],
            method,
            y,
        )
        assert_same(grads_of(model), want)


@pytest.mark.parametrize("method", ["fa", "kp", "dkp"])
def test_lazy_modules_with_rules_that_need_shapes_now(method):
    with pytest.raises(ValueError, match="lazy modules.*example_input"):
        ssdfa.convert(lazy_net(), method, seed=0)
    model = ssdfa.convert(lazy_net(), method, seed=0, example_input=torch.randn(2, 12))
    check_gradients(model, torch.randn(4, 12), torch.randint(0, 10, (4,)))


# -- 6. a (batch, classes) output over token-level points, dynamic padding -------------------
@pytest.mark.parametrize("method", ["dfa", "ssdfa", "sign_dfa", "drtp"])
def test_classifier_over_tokens_takes_any_sequence_length(method):
    torch.manual_seed(7)
    model = ssdfa.convert(TransformerClassifier(), method, seed=0).eval()
    for length in (12, 7, 3):
        x, y = torch.randint(0, 50, (4, length)), torch.randint(0, 5, (4,))
        model.zero_grad()
        F.cross_entropy(model(x, target=y), y).backward()
        want = formula_grads(
            model,
            lambda net: net(x),  # noqa: B023  (called within this iteration)
            lambda out: F.cross_entropy(out, y),  # noqa: B023  (called within this iteration)
            ["head"],
            method,
            y,
        )
        assert_same(grads_of(model), want)
    assert all(tuple(b.shape) == (5, 32) for b in model.feedback_matrices().values())


# -- check_gradients sees a planted version of items 1-3 --------------------------------------
def test_check_gradients_catches_a_loss_inside_forward_that_skips_the_feedback(monkeypatch):
    idx = torch.randint(0, 40, (2, 8))
    model = ssdfa.convert(GPTWithLoss(), "dfa", seed=0).eval()
    loss = lambda out, y: out[1]  # noqa: E731
    check_gradients(model, (idx, idx), idx, loss)

    def at_the_return(self, k, z):  # the old bug: the loss is built before the injection
        self._fired[k] = sum(c is not None for _, c, _ in self._tape)
        return z

    monkeypatch.setattr(FeedbackModel, "_inject_head", at_the_return)
    with pytest.raises(AssertionError, match="h.0"):
        check_gradients(model, (idx, idx), idx, loss)


def test_check_gradients_catches_a_dropped_head(monkeypatch):
    x, ya, yb = torch.randn(7, 6), torch.randint(0, 3, (7,)), torch.randint(0, 5, (7,))
    model = ssdfa.convert(TwoHeads(), "dfa", seed=0)
    loss = lambda out, y: LOSSES["a+10b"](out, ya, yb)  # noqa: E731
    check_gradients(model, x, ya, loss)
    plain = FeedbackModel.error_slices
    monkeypatch.setattr(
        FeedbackModel,
        "error_slices",
        lambda self, e: [s if k == 0 else 0 * s for k, s in enumerate(plain(self, e))],
    )
    with pytest.raises(AssertionError, match="fc1.weight"):
        check_gradients(model, x, ya, loss)


def test_check_gradients_catches_a_loss_scale_on_an_unscaled_backward(monkeypatch):
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    model = ssdfa.convert(mlp(), "sign_dfa", seed=0, grad_scaler=torch.amp.GradScaler("cpu"))
    check_gradients(model, x, y)
    monkeypatch.setattr(FeedbackModel, "scaled", lambda self, s: s * 2.0**16)
    with pytest.raises(AssertionError, match="0.weight"):
        check_gradients(model, x, y)


@pytest.mark.parametrize("method", ["fa", "kp"])
def test_check_gradients_covers_layerwise_rules_on_any_model(method):
    from zoo import ExamplesNet

    torch.manual_seed(0)
    model = ssdfa.convert(ExamplesNet(), method, seed=0).eval()
    x, y = torch.randn(3, 1, 28, 28), torch.randint(0, 10, (3,))
    check_gradients(model, x, y, F.nll_loss)


# -- Hugging Face models given labels= (the `integrations` extra installs transformers) ---------
def test_hugging_face_labels_path_trains_through_the_feedback():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    net = transformers.BertForSequenceClassification(cfg)
    model = ssdfa.convert(net, "dfa", seed=0)
    y = torch.randint(0, 3, (4,))
    for length in (9, 5):  # dynamic padding: another length and a mask
        x, mask = torch.randint(0, 50, (4, length)), torch.ones(4, length, dtype=torch.long)
        mask[0, 3:] = 0
        model.zero_grad()
        model(input_ids=x, attention_mask=mask, labels=y).loss.backward()
        assert all(p.grad is not None for p in net.parameters())
        want = formula_grads(
            model,
            lambda n: n(input_ids=x, attention_mask=mask, labels=y),  # noqa: B023  (called within this iteration)
            lambda out: out.loss,
            ["classifier"],
            "dfa",
            y,
        )
        assert_same(grads_of(model), want)
    assert model.layout == ["broadcast", "broadcast"]
    gpt = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=30,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=16,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    model = ssdfa.convert(gpt, "dfa", seed=0)
    x = torch.randint(0, 30, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    assert [h.name for h in model.heads] == ["lm_head"] and model.layout == ["token", "token"]
    check_gradients(model, (), x, lambda o, y: o.loss, kwargs={"input_ids": x, "labels": x})


# -- small refusals (issue 18, item 19) -------------------------------------------------------
def test_an_out_of_range_seed_and_an_empty_batch_are_one_clear_error():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    for seed in (2**70, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            ssdfa.convert(net, "dfa", seed=seed)
    model = ssdfa.convert(net, "dfa", seed=0)
    with pytest.raises(ValueError, match="batch is empty"):
        model(torch.zeros(0, 4))
    with torch.no_grad():  # an evaluation of an empty batch is as in plain PyTorch
        assert model(torch.zeros(0, 4)).shape == (0, 3)


class Reordered(nn.Module):
    """A forward whose flags move a point after the head, or run the head twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 4)
        self.p1, self.p2 = ssdfa.FeedbackPoint(), ssdfa.FeedbackPoint()
        self.late = self.twice = False

    def forward(self, x):
        h = self.p1(torch.tanh(self.fc1(x)))
        h = torch.tanh(self.fc2(h))
        if not self.late:
            h = self.p2(h)
        z = self.fc3(h)
        if self.late:
            self.p2(h)
        return z + 0 * self.fc3(h) if self.twice else z


def test_a_point_after_the_head_or_a_head_run_twice_is_refused():
    x = torch.randn(5, 6)
    net = Reordered()
    model = ssdfa.convert(net, "dfa", seed=0)
    model(x)
    assert [h.name for h in model.heads] == ["fc3"]
    net.late = True
    with pytest.raises(RuntimeError, match="p2 ran after the output head"):
        model(x)
    net.late, net.twice = False, True
    with pytest.raises(RuntimeError, match="'fc3' ran twice"):
        model(x)
    net.twice = False
    model(x)  # and it runs again as converted
