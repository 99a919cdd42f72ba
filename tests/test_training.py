"""The training loop does what its config says: checked against a loop written out by hand."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import ssdfa
from ssdfa.data import load_dataset
from ssdfa.feedback import FeedbackSpec, make_feedback
from ssdfa.models import create_model
from ssdfa.training import TrainConfig, make_optimizer, run


@pytest.mark.parametrize("method", ["bp", "ssdfa"])
def test_run_equals_a_hand_written_loop(tmp_path, method):
    cfg = TrainConfig(
        method=method,
        epochs=2,
        batch_size=50,
        lr=0.1,
        momentum=0.0,
        seed=3,
        limit_train=230,
        out_dir=str(tmp_path / "run"),
    )
    run(cfg, log=lambda m: None)
    got = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]

    # the same recipe, spelled out: seed, build, convert, shuffle with a seeded generator, SGD
    data = load_dataset("digits")
    torch.manual_seed(3)
    net = create_model("digits-fc", (1, 8, 8), 10)
    model = ssdfa.convert(net, method, num_classes=10, input_shape=(1, 8, 8), seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    order = torch.Generator().manual_seed(3)
    for _ in range(2):
        perm = torch.randperm(230, generator=order)
        for i in range(0, 230, 50):  # the last batch holds 30 examples
            x, y = data.train.batch(perm[i : i + 50])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    want = model.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_step_schedule_and_logged_learning_rate(tmp_path):
    cfg = TrainConfig(
        epochs=5, lr=0.1, schedule="step", step_size=2, gamma=0.5, limit_train=64, out_dir=str(tmp_path / "r")
    )
    run(cfg, log=lambda m: None)
    rows = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # the lr logged at the end of epoch e is the one the next epoch uses: 0.1 * 0.5^floor(e/2)
    assert [r["lr"] for r in rows] == pytest.approx([0.1 * 0.5 ** (e // 2) for e in range(1, 6)])


def test_learnable_feedback_gets_its_own_learning_rate():
    net = create_model("digits-fc", (1, 8, 8), 10)
    model = ssdfa.convert(net, "dfa", num_classes=10, seed=0)
    model.feedback[0] = make_feedback(
        10, 400, FeedbackSpec(learnable=True), generator=torch.Generator().manual_seed(0)
    )
    b = list(model.feedback.parameters())
    assert b, "a learnable feedback matrix is a parameter"
    for name in ("sgd", "nesterov", "adam"):
        opt = make_optimizer(TrainConfig(optimizer=name, lr=0.01, feedback_lr=1e-4, weight_decay=1e-6), model)
        forward, feedback = opt.param_groups
        assert feedback["lr"] == 1e-4 and forward["lr"] == 0.01
        assert {id(p) for p in feedback["params"]} == {id(p) for p in b}
        assert not {id(p) for p in forward["params"]} & {id(p) for p in b}
        assert forward["weight_decay"] == 1e-6
    assert make_optimizer(TrainConfig(optimizer="nesterov"), model).param_groups[0]["nesterov"]


@pytest.mark.parametrize("method", ["kp", "dkp"])
def test_run_applies_weight_decay_to_learned_feedback(tmp_path, method):
    """KP needs the same weight decay on B as on W for B to converge to W (DKP paper, Eq. 6);
    DKP's Eq. 8 decays B too.  run() must end where one plain SGD over all parameters ends."""
    cfg = TrainConfig(
        method=method,
        epochs=1,
        batch_size=50,
        lr=0.1,
        momentum=0.0,
        weight_decay=0.05,
        seed=3,
        limit_train=150,
        out_dir=str(tmp_path / "run"),
    )
    run(cfg, log=lambda m: None)
    got = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]

    data = load_dataset("digits")
    torch.manual_seed(3)
    model = ssdfa.convert(
        create_model("digits-fc", (1, 8, 8), 10), method, num_classes=10, input_shape=(1, 8, 8), seed=3
    )
    fb = ssdfa.feedback_parameters(model)
    assert fb and all(any(p is q for q in model.parameters()) for p in fb)
    start = [p.detach().clone() for p in fb]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.05)  # one group, B included
    order = torch.Generator().manual_seed(3)
    perm = torch.randperm(150, generator=order)
    for i in range(0, 150, 50):
        x, y = data.train.batch(perm[i : i + 50])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    want = model.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)
    assert not any(torch.equal(a, p) for a, p in zip(start, fb))


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
def test_feedback_group_takes_the_configured_weight_decay(optimizer):
    model = ssdfa.convert(create_model("digits-fc", (1, 8, 8), 10), "kp", num_classes=10, seed=0)
    fb = {id(p) for p in ssdfa.feedback_parameters(model)}
    opt = make_optimizer(TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.25, feedback_lr=0.2), model)
    seen = set()
    for group in opt.param_groups:
        assert group["weight_decay"] == 0.25
        seen |= {id(p) for p in group["params"]}
    assert fb <= seen and len(fb) == 2
    if optimizer == "sgd":  # zero gradients: one step multiplies B by exactly 1 - lr_B·λ
        before = [p.detach().clone() for p in ssdfa.feedback_parameters(model)]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for b0, p in zip(before, ssdfa.feedback_parameters(model)):
            torch.testing.assert_close(p.detach(), b0 * (1 - 0.2 * 0.25))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from ssdfa import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path)["epoch"] == 1  # the old one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_rng_states_round_trip():
    import random

    import numpy as np

    from ssdfa.checkpoint import capture_rng, restore_rng

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    state = capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and (first[1] == again[1]).all() and first[2] == again[2]


def test_unlocked_drtp_through_run_equals_ordinary_drtp(tmp_path):
    """The loop must zero gradients before the forward pass: unlocked DRTP writes them there."""
    finals = {}
    for unlocked in (False, True):
        cfg = TrainConfig(
            method="drtp",
            unlocked=unlocked,
            epochs=1,
            batch_size=50,
            lr=0.1,
            momentum=0.0,
            seed=1,
            limit_train=200,
            out_dir=str(tmp_path / str(unlocked)),
        )
        run(cfg, log=lambda m: None)
        finals[unlocked] = torch.load(tmp_path / str(unlocked) / "checkpoint.pt", weights_only=True)["model"]
    assert finals[False].keys() == finals[True].keys()
    for k in finals[False]:
        torch.testing.assert_close(finals[True][k], finals[False][k], rtol=1e-6, atol=1e-7, msg=k)
    first = next(k for k in finals[False] if k.endswith("weight"))
    start = create_model("digits-fc", (1, 8, 8), 10)  # hidden weights did move
    assert not torch.equal(finals[True][first], start.state_dict()[first.removeprefix("net.")])
