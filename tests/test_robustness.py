"""Adversarial robustness (BioTorch's benchmark): FGSM and PGD with exact BP on the trained weights.

For softmax regression, ∇ₓ of the cross-entropy is (p - y)·W per example, so FGSM's perturbation
ε·sign((p - y)·W) is written here by hand.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa.cli import main
from ssdfa.robustness import adversarial_accuracy, fgsm, pgd


class Split:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def batch(self, idx):
        return self.x[idx], self.y[idx]


def softmax_regression():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4))


def by_hand_fgsm(lin, x, y, eps, low, high):
    p = torch.softmax(x @ lin.weight.detach().T + lin.bias.detach(), 1)
    grad = (p - F.one_hot(y, 4)) @ lin.weight.detach()  # ∇ₓ L up to the positive factor 1/batch
    return (x + eps * grad.sign()).clamp(low, high)


def test_fgsm_is_epsilon_times_the_sign_of_the_input_gradient():
    net = softmax_regression()
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    torch.testing.assert_close(fgsm(net, x, y, 0.3), by_hand_fgsm(net[0], x, y, 0.3, -1e9, 1e9))


@pytest.mark.parametrize("method", ["fa", "usf", "dfa", "forward_grad"])
def test_the_attack_backpropagates_exactly_whatever_rule_trained_the_weights(method):
    """An FA model's own backward would send δ·B to the input; the attack must use W."""
    net = softmax_regression()
    model = ssdfa.convert(net, method, seed=0)
    x, y = torch.randn(40, 6), torch.randint(0, 4, (40,))
    res = adversarial_accuracy(model, Split(x, y), "fgsm", 0.5, batch_size=16)
    low, high = float(x.min()), float(x.max())
    xa = by_hand_fgsm(net[0], x, y, 0.5, low, high)
    with torch.no_grad():
        want_adv = float((net(xa).argmax(1) == y).float().mean())
        want_clean = float((net(x).argmax(1) == y).float().mean())
    assert res["adv_acc"] == pytest.approx(want_adv) and res["clean_acc"] == pytest.approx(want_clean)
    assert res["input_range"] == [low, high] and model.training


def test_pgd_stays_in_the_ball_and_is_at_least_as_strong_as_fgsm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(300, 6)
    y = (x[:, :4] + 0.3 * x[:, 4:5]).argmax(1)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    xa = pgd(net, x, y, 0.2, 10, generator=torch.Generator().manual_seed(0))
    assert (xa - x).abs().max() <= 0.2 + 1e-6
    split = Split(x, y)
    clean = adversarial_accuracy(net, split, "pgd", 0.0, steps=3)
    f = adversarial_accuracy(net, split, "fgsm", 0.2)
    p = adversarial_accuracy(net, split, "pgd", 0.2, steps=10)
    assert clean["adv_acc"] == clean["clean_acc"] > 0.8
    assert p["adv_acc"] <= f["adv_acc"] + 0.01 < clean["clean_acc"]


def test_bad_attack_settings_are_refused():
    net, split = softmax_regression(), Split(torch.randn(4, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown attack"):
        adversarial_accuracy(net, split, "cw", 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        adversarial_accuracy(net, split, "fgsm", float("nan"))
    with pytest.raises(ValueError, match="steps"):
        adversarial_accuracy(net, split, "pgd", 0.1, steps=0)


def test_evaluate_cli_reports_clean_and_adversarial_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--method",
                "usf",
                "--epochs",
                "1",
                "--limit-train",
                "256",
                "--threads",
                "1",
                "--out-dir",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(out), "--attack", "pgd", "--epsilon", "0.3", "--steps", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["attack"] == "pgd" and res["steps"] == 3 and res["epsilon"] == 0.3
    assert res["clean_acc"] == pytest.approx(res["test_acc"])
    assert 0 <= res["adv_acc"] < res["clean_acc"]
    assert main(["evaluate", str(out), "--attack", "fgsm", "--epsilon", "0.1"]) == 0
    assert "adversarial accuracy" in capsys.readouterr().out
    for bad in (
        ["--epsilon", "0.1"],
        ["--attack", "fgsm"],
        ["--attack", "fgsm", "--epsilon", "-1"],
        ["--attack", "pgd", "--epsilon", "0.1", "--steps", "0"],
    ):
        assert main(["evaluate", str(out), *bad]) == 2, bad
        assert capsys.readouterr().err.count("\n") == 1
