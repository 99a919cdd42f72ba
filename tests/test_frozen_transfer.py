"""Transfer learning (SSDFA Table V): ``init_from`` copies a finished run's weights before convert.

With ``train_only="fc"`` only the frozen conv layers come from the source run and the FC layers
start exactly as a fresh run of the same seed would; without it every weight is copied.  The
checks read the checkpoints back and compare tensors, never the library's own bookkeeping.
"""

from __future__ import annotations

import pytest
import torch

from ssdfa.checkpoint import load_checkpoint
from ssdfa.cli import main
from ssdfa.training import ConfigError, TrainConfig, run

QUIET = {"log": lambda msg: None}


def _cfg(tmp_path, name, **kw) -> TrainConfig:
    base = dict(
        dataset="digits",
        model="mnist-cnn",
        epochs=1,
        limit_train=64,
        batch_size=32,
        threads=1,
        out_dir=str(tmp_path / name),
    )
    return TrainConfig(**(base | kw))


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One BP run of mnist-cnn on digits: the source of the conv weights."""
    tmp = tmp_path_factory.mktemp("pre")
    run(_cfg(tmp, "bp", method="bp", seed=5), **QUIET)
    return tmp / "bp"


@pytest.mark.parametrize("method", ["bp", "dfa", "ssdfa"])
def test_fc_only_takes_conv_from_source_and_fc_from_a_fresh_init(tmp_path, pretrained, method):
    src = _weights(pretrained)
    # the same run with 0 training steps would be the fresh init: build it by training on a
    # model whose lr is 0, so every FC weight stays at its seed-0 initial value
    run(_cfg(tmp_path, "fresh", method=method, lr=1e-30, train_only="fc"), **QUIET)
    run(_cfg(tmp_path, "t", method=method, lr=1e-30, train_only="fc", init_from=str(pretrained)), **QUIET)
    fresh, got = _weights(tmp_path / "fresh"), _weights(tmp_path / "t")
    for layer in ("0", "2"):  # the two convolutions, frozen
        for p in ("weight", "bias"):
            torch.testing.assert_close(
                got[f"net.frozen.{layer}.{p}"], src[f"net.{layer}.{p}"], rtol=0, atol=0
            )
            assert not torch.equal(got[f"net.frozen.{layer}.{p}"], fresh[f"net.frozen.{layer}.{p}"])
    for layer in ("6", "8"):  # the FC layers: as a fresh run of the same seed, not the source's
        torch.testing.assert_close(got[f"net.{layer}.weight"], fresh[f"net.{layer}.weight"])
        assert not torch.allclose(got[f"net.{layer}.weight"], src[f"net.{layer}.weight"])


def test_without_train_only_every_weight_is_copied(tmp_path, pretrained):
    run(_cfg(tmp_path, "ft", method="dfa", lr=1e-30, init_from=str(pretrained)), **QUIET)
    src, got = _weights(pretrained), _weights(tmp_path / "ft")
    for key, value in src.items():
        torch.testing.assert_close(got[key], value)


def test_a_transfer_run_can_itself_be_a_source(tmp_path, pretrained):
    """Its conv weights are stored as net.frozen.<i>: they are found and copied back."""
    run(_cfg(tmp_path, "t", method="dfa", train_only="fc", init_from=str(pretrained)), **QUIET)
    run(_cfg(tmp_path, "again", method="bp", lr=1e-30, init_from=str(tmp_path / "t")), **QUIET)
    t, again = _weights(tmp_path / "t"), _weights(tmp_path / "again")
    torch.testing.assert_close(again["net.0.weight"], t["net.frozen.0.weight"])
    torch.testing.assert_close(again["net.6.weight"], t["net.6.weight"])


def test_bad_sources_are_refused_in_one_line(tmp_path, pretrained, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        run(_cfg(tmp_path, "a", method="dfa", init_from=str(tmp_path / "nowhere")), **QUIET)
    with pytest.raises(ConfigError, match="trained with model 'mnist-cnn'"):
        run(_cfg(tmp_path, "b", method="dfa", model="digits-fc", init_from=str(pretrained)), **QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint"):
        run(_cfg(tmp_path, "c", method="dfa", init_from=str(tmp_path / "empty")), **QUIET)
    code = main(
        [
            "train",
            "--method",
            "dfa",
            "--dataset",
            "digits",
            "--model",
            "digits-fc",
            "--init-from",
            str(pretrained),
            "--epochs",
            "1",
            "--quiet",
            "--out-dir",
            str(tmp_path / "cli"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "use a run of the same model" in err
