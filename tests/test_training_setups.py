"""The papers'-setup options of TrainConfig (issue 19), each against a plain-torch construction.

Adam's eps/betas, input normalisation, feedback init and the decay of B's learning rate alone;
the model-side options (activation, dropout, weight and bias init) are in test_models.py.  Each
expected value is computed here from the formula, never with the library's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import ssdfa
from ssdfa.data import Dataset, TensorSplit, check_normalization, set_normalization
from ssdfa.training import ConfigError, TrainConfig, make_optimizer, make_scheduler, resolve


def _images(n=7, c=1, h=6, w=5, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, c, h, w)).astype(np.uint8))


def _dataset(c=1, h=6, w=5) -> Dataset:
    xtr, xte = _images(9, c, h, w, 0), _images(4, c, h, w, 1)
    mean, std = xtr.float().div(255).mean((0, 2, 3)).view(c, 1, 1), torch.ones(c, 1, 1)
    return Dataset(
        "fake",
        TensorSplit(xtr, torch.zeros(9, dtype=torch.long), mean, std),
        TensorSplit(xte, torch.zeros(4, dtype=torch.long), mean, std),
        (c, h, w),
        10,
    )


# -- Adam's eps and betas -------------------------------------------------------------------
def test_adam_eps_and_betas_reach_the_optimizer_and_its_step():
    """Two Adam steps by hand: m = b1·m + (1-b1)·g, v = b2·v + (1-b2)·g², p -= lr·m̂/(√v̂ + eps)."""
    cfg = resolve(
        TrainConfig(method="bp", optimizer="adam", lr=0.01, adam_eps=1.0, adam_beta1=0.8, adam_beta2=0.99)
    )
    wrapped = ssdfa.convert(nn.Sequential(nn.Linear(3, 2)), "bp")
    net = wrapped.net[0]
    p0 = net.weight.detach().clone()
    opt = make_optimizer(cfg, wrapped)
    assert opt.param_groups[0]["eps"] == 1.0 and opt.param_groups[0]["betas"] == (0.8, 0.99)
    grads = [torch.randn(2, 3), torch.randn(2, 3)]
    m = v = torch.zeros(2, 3)
    p = p0.clone()
    for t, g in enumerate(grads, start=1):
        net.weight.grad, net.bias.grad = g.clone(), torch.zeros(2)
        opt.step()
        m = 0.8 * m + 0.2 * g
        v = 0.99 * v + 0.01 * g * g
        p = p - 0.01 * (m / (1 - 0.8**t)) / ((v / (1 - 0.99**t)).sqrt() + 1.0)
    torch.testing.assert_close(net.weight.detach(), p)


@pytest.mark.parametrize(
    "field,value",
    [
        ("adam_eps", 0.0),
        ("adam_eps", float("inf")),
        ("adam_beta1", 1.0),
        ("adam_beta2", -0.1),
        ("dropout", 1.0),
        ("bias_init", float("nan")),
        ("feedback_gamma", 0.0),
        ("activation", "gelu"),
        ("weight_init", "he"),
        ("normalization", "zca"),
        ("feedback_init", "gaussian"),
    ],
)
def test_bad_setup_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        resolve(TrainConfig(**{field: value}))


# -- input normalisation --------------------------------------------------------------------
def test_per_image_is_tfs_per_image_standardization():
    """(x - mean) / max(std, 1/√(C·H·W)) on 0-255 pixels, each image by its own numbers; an
    all-constant image meets the floor."""
    ds = _dataset()
    ds.train.x[0] = 7  # a constant image: std 0, floored at 1/sqrt(30)
    set_normalization(ds, "per-image")
    x, _ = ds.train.batch(torch.arange(9))
    raw = ds.train.x.numpy().astype(np.float64).reshape(9, -1)
    want = (raw - raw.mean(1, keepdims=True)) / np.maximum(raw.std(1, keepdims=True), 1 / math.sqrt(30))
    np.testing.assert_allclose(x.numpy().reshape(9, -1), want, rtol=1e-5, atol=1e-5)


def test_per_pixel_uses_each_splits_own_statistics():
    ds = _dataset(c=3)
    set_normalization(ds, "per-pixel")
    for split in (ds.train, ds.test):  # the SSDFA code: the test set by its own statistics
        x, _ = split.batch(torch.arange(len(split)))
        raw = split.x.numpy().astype(np.float64) / 255
        want = (raw - raw.mean(0)) / np.maximum(raw.std(0), 1e-3)
        np.testing.assert_allclose(x.numpy(), want, rtol=1e-4, atol=1e-4)


def test_none_and_fixed_mean_std():
    ds = _dataset(c=3)
    set_normalization(ds, "none")
    x, _ = ds.test.batch(torch.arange(4))
    torch.testing.assert_close(x, ds.test.x.float() / 255)
    ds = _dataset(c=3)
    set_normalization(ds, "mean-std:0.5,0.5")  # DKP's Normalize(0.5, 0.5)
    x, _ = ds.test.batch(torch.arange(4))
    torch.testing.assert_close(x, (ds.test.x.float() / 255 - 0.5) / 0.5)
    ds = _dataset(c=3)
    set_normalization(ds, "mean-std:0.1/0.2/0.3,0.5/0.25/1")
    x, _ = ds.test.batch(torch.arange(4))
    m, s = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1), torch.tensor([0.5, 0.25, 1.0]).view(3, 1, 1)
    torch.testing.assert_close(x, (ds.test.x.float() / 255 - m) / s)


def test_mean_std_default_leaves_the_dataset_and_non_images_are_refused():
    ds = _dataset()
    before = ds.train.batch(torch.arange(9))[0]
    set_normalization(ds, "mean-std")
    torch.testing.assert_close(ds.train.batch(torch.arange(9))[0], before, rtol=0, atol=0)
    flat = Dataset(
        "synth",
        TensorSplit(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
        TensorSplit(torch.randn(2, 3), torch.zeros(2, dtype=torch.long)),
        (3,),
        2,
    )
    from ssdfa.data import DatasetError

    with pytest.raises(DatasetError, match="image datasets"):
        set_normalization(flat, "per-image")
    with pytest.raises(ValueError, match="normalization"):
        check_normalization("mean-std:1,0")


# -- feedback init --------------------------------------------------------------------------
def _feedback(method, init, **kw):
    net = nn.Sequential(nn.Flatten(), nn.Linear(20, 300), nn.Tanh(), nn.Linear(300, 10))
    return (
        ssdfa.convert(net, method, num_classes=10, input_shape=(20,), seed=0, feedback_init=init, **kw)
        .feedback[0]
        .dense()
    )


@pytest.mark.parametrize(
    "init,bound", [("uniform:1/sqrt(n)", 1 / math.sqrt(300)), ("kaiming-uniform", math.sqrt(6 / 300))]
)
def test_dense_feedback_init_is_the_authors_uniform_law(init, bound):
    """Dense B (10 x 300): inside ±bound and with the std of U(±bound), bound/√3 (within 5 %
    for 3000 draws)."""
    b = _feedback("dfa", init)
    assert b.abs().max() <= bound
    assert b.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert b.abs().max() > 0.95 * bound  # it fills the interval


def test_sparse_feedback_init_has_the_ssdfa_codes_std():
    """One connection per neuron (SSDFA): non-zeros U(±(C·k)^¼/√n), so over all C·n entries the
    std is (C·k)^¼/√(3n)·√(k/C), C = 10, k = 1, n = 300."""
    b = _feedback("ssdfa", "uniform:1/sqrt(n)")
    assert ((b != 0).sum(0) == 1).all()
    want = 10**0.25 / math.sqrt(3 * 300) * math.sqrt(1 / 10)
    assert b.std(correction=0).item() == pytest.approx(want, rel=0.08)


def test_feedback_init_is_refused_where_there_is_no_direct_b():
    from ssdfa.feedback import FeedbackConfigError

    for method in ("bp", "fa", "shallow"):
        with pytest.raises(FeedbackConfigError, match="no effect"):
            ssdfa.convert(
                nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)),
                method,
                feedback_init="kaiming-uniform",
            )


# -- LR decay on B only ---------------------------------------------------------------------
def test_feedback_gamma_decays_bs_lr_alone_as_a_steplr_on_bs_own_optimizer():
    """DKP's code: StepLR(step_size=1, gamma) on B's optimizer, the weights' lr untouched."""
    cfg = resolve(
        TrainConfig(
            method="dkp", optimizer="nesterov", lr=5e-4, feedback_lr=1e-4, feedback_gamma=0.8, epochs=5
        )
    )
    net = ssdfa.convert(
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), "dkp", input_shape=(4,), seed=0
    )
    opt = make_optimizer(cfg, net)
    sched = make_scheduler(cfg, opt)
    b_only = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    ref = torch.optim.lr_scheduler.StepLR(b_only, step_size=1, gamma=0.8)
    for _ in range(4):
        opt.step()
        b_only.step()
        sched.step()
        ref.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
        assert opt.param_groups[1]["lr"] == pytest.approx(b_only.param_groups[0]["lr"])
    with pytest.raises(ConfigError, match="learns none"):
        make_scheduler(
            resolve(TrainConfig(method="dfa", feedback_gamma=0.8)),
            make_optimizer(cfg, ssdfa.convert(nn.Sequential(nn.Linear(2, 2)), "bp")),
        )


def test_feedback_gamma_keeps_the_weights_step_schedule():
    cfg = resolve(
        TrainConfig(
            method="dkp",
            lr=0.1,
            feedback_lr=0.01,
            feedback_gamma=0.5,
            schedule="step",
            step_size=2,
            gamma=0.1,
        )
    )
    net = ssdfa.convert(
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), "dkp", input_shape=(4,), seed=0
    )
    opt = make_optimizer(cfg, net)
    sched = make_scheduler(cfg, opt)
    for epoch in range(1, 5):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 ** (epoch // 2))
        assert opt.param_groups[1]["lr"] == pytest.approx(0.01 * 0.5**epoch)


@pytest.mark.parametrize("mode", ["none", "per-image"])
def test_a_run_trains_on_the_normalisation_it_names(mode, tmp_path, no_real_data, monkeypatch):
    """training.run end to end: the batches the model sees are standardised as asked."""
    from ssdfa import data as D
    from ssdfa.training import run
    from test_data import write_idx_set

    arrays = write_idx_set(tmp_path / "d" / "fashion-mnist", n_train=8, n_test=4, h=28, w=28)
    seen = []
    batch = D.TensorSplit.batch

    def spy(self, idx):
        x, y = batch(self, idx)
        seen.append((self.x[idx].float(), x))
        return x, y

    monkeypatch.setattr(D.TensorSplit, "batch", spy)
    run(
        TrainConfig(
            method="dfa",
            dataset="fashion-mnist",
            model="mnist-fc",
            epochs=1,
            batch_size=8,
            normalization=mode,
            data_dir=str(tmp_path / "d"),
            out_dir=str(tmp_path / "run"),
        ),
        log=lambda m: None,
    )
    raw, x = seen[0]
    assert raw.shape == (8, 1, 28, 28) and len(arrays["train-images-idx3-ubyte"]) == 8
    if mode == "none":
        want = raw / 255
    else:
        flat = raw.flatten(1)
        want = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, correction=0, keepdim=True)).view_as(raw)
    torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)


def test_evaluate_reads_the_inputs_the_run_trained_on(tmp_path, no_real_data, capsys):
    """`ssdfa evaluate` standardises as the run did: its accuracy and loss are the run's own."""
    import json

    from ssdfa.cli import main
    from ssdfa.training import run
    from test_data import write_idx_set

    write_idx_set(tmp_path / "d" / "fashion-mnist", n_train=16, n_test=30, h=28, w=28)
    summary = run(
        TrainConfig(
            method="bp",
            dataset="fashion-mnist",
            model="mnist-fc",
            epochs=1,
            batch_size=8,
            normalization="none",
            data_dir=str(tmp_path / "d"),
            weight_init="glorot",
            out_dir=str(tmp_path / "run"),
        ),
        log=lambda m: None,
    )
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["test_loss"] == pytest.approx(summary["final_test_loss"], rel=1e-6)
    assert got["test_acc"] == pytest.approx(summary["final_test_acc"])
