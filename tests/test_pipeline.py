"""``ssdfa pipeline``: K stages over gloo train exactly as one process, and send what the formula says.

Byte counts are checked against numbers written out here by hand (digits-fc: 64-400-10, one
boundary of 400 features; drtp-fc2-500 on digits: 64-500-500-10, boundaries of 500).
"""

import json
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from ssdfa.cli import main
from ssdfa.data import load_dataset
from ssdfa.errors import Diverged
from ssdfa.feedback import DenseFeedback, SparseFeedback
from ssdfa.models import create_model
from ssdfa.pipeline import (
    PIPELINE_METHODS,
    PipelineConfig,
    PipelineError,
    _feedback_grads,
    _forward_blocks,
    batches,
    block_feedback,
    boundary_widths,
    build_net,
    build_stage,
    convert_net,
    expected_bytes,
    make_optimizer,
    max_feedback_difference,
    max_weight_difference,
    model_feedback,
    run_pipeline,
    single_process,
    spawn_stages,
    stage_blocks,
    train_one_process,
    train_pipelines,
    worker_failure,
)
from ssdfa.pipeline import launch as launch_module
from ssdfa.rules import RULES, make_rule


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
    r = _reports(
        capsys,
        [
            "pipeline",
            "--stages",
            "2",
            "--methods",
            "bp,drtp",
            "--dataset",
            "digits",
            "--steps",
            "3",
            "--batch-size",
            "32",
            "--micro-batches",
            "2",
            "--json",
        ],
    )
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
    r = _reports(
        capsys,
        [
            "pipeline",
            "--stages",
            "3",
            "--methods",
            "dfa,ssdfa",
            "--dataset",
            "digits",
            "--model",
            "drtp-fc2-500",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--micro-batches",
            "4",
            "--seed",
            "3",
            "--json",
        ],
    )
    for m in ("dfa", "ssdfa"):
        assert r[m]["bytes_per_step"] == 2 * 16 * 500 * 4 + 2 * 16 * 10 * 4
        assert r[m]["bytes_per_step"] == r[m]["expected_bytes_per_step"]
        assert r[m]["matches_single_process"] is True
        assert r[m]["max_weight_difference"] < 1e-5


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--stages", "3"], "more than the model's 2 weight layers"),
        (["--stages", "0"], "--stages must be at least 1"),
        (["--methods", "bp,kp"], "choose from bp, dfa, sdfa, ssdfa, dkp, drtp"),
        (["--feedback-lr", "-1"], "--feedback-lr must be a finite number >= 0"),
        (["--micro-batches", "64"], "--micro-batches must be 1..--batch-size"),
    ],
)
def test_bad_arguments_one_line_exit_2(capsys, argv, words):
    assert main(["pipeline", "--dataset", "digits", "--steps", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_dkp_three_stages_match_one_process_weights_and_feedback():
    # dkp learns B_l on each stage from the broadcast e and its own h_l: after K-stage training
    # both W and every B_l equal one-process dkp (ssdfa.convert(net, "dkp")), and the B_l moved
    cfg = PipelineConfig(
        dataset="digits",
        model="drtp-fc2-500",
        stages=3,
        method="dkp",
        steps=3,
        batch_size=16,
        micro_batches=4,
        seed=3,
        feedback_lr=0.5,
        feedback_weight_decay=0.1,
    )
    report, net, feedback = run_pipeline(cfg)
    one_net, one_feedback = single_process(cfg)
    start = model_feedback(build_net(cfg, load_dataset("digits"))[1], (1, 8, 8), 10, "dkp", 3)
    assert [b.shape for b in feedback] == [(10, 500), (10, 500)]
    assert min(float((b - b0.detach()).abs().max()) for b, b0 in zip(feedback, start)) > 1e-3
    assert max_weight_difference(net, one_net) < 1e-5
    assert max_feedback_difference(feedback, one_feedback) < 1e-5
    # same bytes as dfa: learning B sends nothing more
    assert (
        report["bytes_per_step"]
        == report["expected_bytes_per_step"]
        == expected_bytes("dfa", [500, 500], 16, 10)
        == 2 * 16 * 500 * 4 + 2 * 16 * 10 * 4
    )


def test_dkp_stage_feedback_update_is_the_formula():
    # one stage's B step, by hand: ΔB = -η_B·(eᵀh + wd·B), h = tanh(x W1ᵀ + b1), summed over
    # micro-batches (e of each micro-batch is its share of the full-batch mean-loss gradient)
    torch.manual_seed(0)
    net = create_model("drtp-fc2-500", (1, 8, 8), 10)
    modules = [DenseFeedback(torch.randn(10, 500), learnable=True) for _ in range(2)]
    fb = [m.matrix for m in modules]  # the stage holds the library's feedback modules
    stage = build_stage(net, 0, 3, modules, make_rule("dkp"))
    b0, b1 = fb[0].detach().clone(), fb[1].detach().clone()
    x, e = torch.randn(6, 1, 8, 8), torch.randn(6, 10)
    cfg = PipelineConfig(lr=0.1, feedback_lr=0.3, feedback_weight_decay=0.05)
    opt = make_optimizer(cfg, stage.parameters(), stage.learned_feedback())
    for xm, em in zip(x.chunk(2), e.chunk(2)):
        _feedback_grads(stage, _forward_blocks(stage, xm, cut=True), em)
    opt.step()
    w, bias = net[1].weight.detach(), net[1].bias.detach()  # no backward ran: W has no grad
    h = torch.tanh(x.reshape(6, 64) @ w.t() + bias)
    want = b0 - 0.3 * (e.t() @ h + 0.05 * b0)
    assert torch.allclose(fb[0].detach(), want, atol=1e-6)
    assert stage.learned_feedback() == [fb[0]]  # stage 0 owns B_1 only
    assert torch.equal(fb[1].detach(), b1)


def test_worker_failure_is_one_line_with_the_stage_and_its_error():
    # a natural input that only fails inside a worker: dkp-cnn's FC BatchNorm1d sits on stage 1,
    # and --micro-batches 4 of a batch of 4 hands it one example (the parent's probe is in eval).
    # A real process, so that stderr is all the user sees (logging included, which pytest hides)
    argv = [
        "pipeline",
        "--stages",
        "2",
        "--methods",
        "dfa",
        "--dataset",
        "digits",
        "--model",
        "dkp-cnn",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--micro-batches",
        "4",
        "--json",
    ]
    done = subprocess.run([sys.executable, "-m", "ssdfa", *argv], capture_output=True, text=True, timeout=300)
    out, err = done.stdout, done.stderr
    assert done.returncode == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert (
        "pipeline stage 1 of 2 (dfa, model dkp-cnn) failed: ValueError: Expected more than "
        "1 value per channel when training" in err
    )
    assert "Fix the input it names" in err and "Traceback" not in err


def test_worker_failure_names_the_first_stage_to_fail(tmp_path):
    # a stage that fails makes its neighbours fail after it (closed connection): the earliest
    # recorded error is the cause, whatever order spawn noticed the exits in
    cfg = PipelineConfig(stages=3, method="bp", model="drtp-fc2-500")
    for rank, t, msg in [
        (0, 2.0, "Connection closed by peer"),
        (2, 1.0, "shape mismatch\nat x"),
        (1, 3.0, "Connection closed by peer"),
    ]:
        (tmp_path / f"rank{rank}.error.json").write_text(
            json.dumps({"rank": rank, "time": t, "type": "RuntimeError", "message": msg})
        )
    exc = worker_failure(cfg, str(tmp_path), mp.ProcessRaisedException("x", 0, 1))
    assert str(exc).startswith(
        "pipeline stage 2 of 3 (bp, model drtp-fc2-500) failed: RuntimeError: shape mismatch; at x; "
    )
    empty = tmp_path / "none"
    empty.mkdir()  # killed by a signal: no error recorded, spawn's own words
    exc = worker_failure(
        cfg,
        str(empty),
        mp.ProcessExitedException("process 1 terminated with signal SIGKILL", 1, 1, -9, "SIGKILL"),
    )
    assert "stage 1 of 3" in str(exc) and "terminated with signal SIGKILL" in str(exc)


def test_json_is_one_object_per_method_with_the_documented_keys():
    # the CLI as users run it: every stdout line is one method's JSON object, nothing else
    argv = [
        "pipeline",
        "--stages",
        "2",
        "--methods",
        "bp,dfa,dkp,drtp",
        "--dataset",
        "digits",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--micro-batches",
        "2",
        "--json",
    ]
    done = subprocess.run([sys.executable, "-m", "ssdfa", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["method"] for r in reports] == ["bp", "dfa", "dkp", "drtp"]
    keys = {
        "method",
        "model",
        "dataset",
        "stages",
        "micro_batches",
        "batch_size",
        "steps",
        "bytes_per_step",
        "expected_bytes_per_step",
        "seconds_per_step",
        "recv_wait_seconds",
        "test_accuracy",
        "max_weight_difference",
        "max_feedback_difference",
        "tolerance",
        "matches_single_process",
    }
    for r in reports:
        m = r["method"]
        assert set(r) == keys, (m, set(r) ^ keys)
        assert (r["model"], r["dataset"], r["stages"], r["steps"]) == ("digits-fc", "digits", 2, 1)
        assert type(r["bytes_per_step"]) is int and r["bytes_per_step"] > 0
        assert r["bytes_per_step"] == r["expected_bytes_per_step"], m
        assert type(r["seconds_per_step"]) is float and r["seconds_per_step"] > 0
        waits = r["recv_wait_seconds"]  # one wait per stage, in rank order
        assert len(waits) == 2 and all(type(w) is float and w >= 0 for w in waits), m
        assert 0 <= r["test_accuracy"] <= 1
        assert r["matches_single_process"] is True, m
        assert 0 <= r["max_weight_difference"] <= r["tolerance"] == 1e-5, m
        # the B_l are compared wherever there are any; bp has none
        assert (r["max_feedback_difference"] is None) == (m == "bp"), m
    by = {r["method"]: r for r in reports}
    assert by["dkp"]["bytes_per_step"] == by["dfa"]["bytes_per_step"] == 8 * 400 * 4 + 8 * 10 * 4
    assert by["bp"]["bytes_per_step"] == 2 * 8 * 400 * 4


# -- the redesign (issue 20): stages on the library's own rules and feedback modules ----------
DIRECT = ("dfa", "sdfa", "ssdfa", "dkp", "sign_dfa", "drtp", "shallow")


def test_ssdfa_stage_stores_b_as_index_value():
    # the stage holds the SparseFeedback ssdfa.convert drew: (index, value) of shape (N, S),
    # no dense (classes × neurons) tensor anywhere in it; sdfa too (S = 1 of 10 by default)
    data = load_dataset("digits")
    for method, s in (("ssdfa", 1), ("sdfa", 1)):
        model = convert_net(build_net(PipelineConfig(), data)[1], method, (1, 8, 8), 10, 0)
        stage = build_stage(model.net, 0, 2, block_feedback(model), model.rule)
        fb = stage.feedback[0]
        assert isinstance(fb, SparseFeedback) and fb is model.feedback[0]
        assert {k: tuple(v.shape) for k, v in fb.state_dict().items()} == {
            "index": (400, s),
            "value": (400, s),
        }
        assert len(stage.feedback) == 1 and build_stage(  # the output block has no B
            model.net, 1, 2, block_feedback(model), model.rule
        ).feedback == [None]
    dense = convert_net(build_net(PipelineConfig(), data)[1], "dfa", (1, 8, 8), 10, 0)
    assert isinstance(block_feedback(dense)[0], DenseFeedback)


def test_methods_come_from_the_rules_attribute():
    # the pipeline runs every rule whose stage receives e, the labels, nothing, or (bp) the
    # next stage's gradient; layer-wise and forward-mode rules need a chain and are refused
    assert set(PIPELINE_METHODS) == {"bp", *DIRECT}
    assert {m: RULES[m].stage_receives for m in ("bp", "dfa", "drtp", "shallow", "fa", "fdfa")} == {
        "bp": "gradient",
        "dfa": "error",
        "drtp": "target",
        "shallow": "nothing",
        "fa": "layer_feedback",
        "fdfa": "tangent",
    }
    assert expected_bytes("shallow", [400], 32, 10) == 32 * 400 * 4  # forward only
    assert expected_bytes("sign_dfa", [400], 32, 10) == expected_bytes("dfa", [400], 32, 10)
    with pytest.raises(PipelineError, match="does not run method 'kp'"):
        expected_bytes("kp", [400], 32, 10)


def _paper_reference(cfg: PipelineConfig):
    """digits-fc (64-400-10, tanh) trained with ``cfg.method`` by plain tensor algebra, full
    batch, from the papers' formulas: e = (softmax(z) - y*)/B (mean cross entropy); the hidden
    layer's δ = (signal·B) ⊙ (1 - h²) with signal e (DFA, SSDFA Eq. 8-9), sign(e)/B (sign-DFA),
    y*/B (DRTP Sec. 2.3) or none (shallow); ∂W = δᵀx; the output layer eᵀh; DKP ∂B = eᵀh (Eq. 7)
    with ΔB = -η_B(∂B + wd·B).  Inputs only from the library: the initial weights, the drawn B
    (dense, or scattered here from (index, value)) and the batch order.  Returns (weights, B, losses)."""
    data = load_dataset("digits")
    net = build_net(cfg, data)[1]
    w1, b1 = net[1].weight.detach().clone(), net[1].bias.detach().clone()
    w2, b2 = net[3].weight.detach().clone(), net[3].bias.detach().clone()
    fb = convert_net(build_net(cfg, data)[1], cfg.method, (1, 8, 8), 10, cfg.seed).feedback
    big_b = torch.zeros(10, 400)
    if len(fb) and isinstance(fb[0], SparseFeedback):
        for s in range(fb[0].connections):
            big_b[fb[0].index[:, s], torch.arange(400)] += fb[0].value[:, s].detach()
    elif len(fb):
        big_b = fb[0].matrix.detach().clone()
    lr_b = cfg.feedback_lr if cfg.feedback_lr is not None else cfg.lr
    losses = []
    for idx in batches(len(data.train), cfg.batch_size, cfg.steps, cfg.seed):
        x, y = data.train.batch(idx)
        x, n = x.reshape(len(idx), 64), len(idx)
        y1 = torch.nn.functional.one_hot(y, 10).float()
        h = torch.tanh(x @ w1.T + b1)
        z = h @ w2.T + b2
        losses.append(float(-(y1 * torch.log_softmax(z, 1)).sum(1).mean()))
        e = (torch.softmax(z, 1) - y1) / n
        signal = {"sign_dfa": e.sign() / n, "drtp": y1 / n, "shallow": torch.zeros_like(e)}.get(cfg.method, e)
        delta = (signal @ big_b) * (1 - h**2)
        grad_b = e.T @ h
        w1, b1 = w1 - cfg.lr * delta.T @ x, b1 - cfg.lr * delta.sum(0)
        w2, b2 = w2 - cfg.lr * e.T @ h, b2 - cfg.lr * e.sum(0)
        if cfg.method == "dkp":
            big_b = big_b - lr_b * (grad_b + cfg.feedback_weight_decay * big_b)
    return {"1.weight": w1, "1.bias": b1, "3.weight": w2, "3.bias": b2}, big_b, losses


def _config(method):
    # an uneven split (16 rows in micro-batches of 6, 6, 4) and a large lr, so that a signal
    # divided by the micro-batch instead of the batch, or one rule's signal for another's, shows
    return PipelineConfig(
        dataset="digits",
        stages=2,
        method=method,
        steps=3,
        batch_size=16,
        micro_batches=3,
        lr=0.5,
        seed=1,
        feedback_lr=0.3,
        feedback_weight_decay=0.1,
    )


def test_two_stages_equal_the_papers_formulas_for_every_direct_rule():
    # all seven rules in one set of two processes; each ends with the weights and the B_l of the
    # formula computed by hand within 1e-6, and its per-step losses (one process agrees too)
    runs = train_pipelines([_config(m) for m in DIRECT])
    start = build_net(_config("dfa"), load_dataset("digits"))[1].state_dict()
    for method, run in zip(DIRECT, runs):
        cfg = _config(method)
        want, want_b, want_losses = _paper_reference(cfg)
        got = run.net.state_dict()
        for k, w in want.items():
            torch.testing.assert_close(got[k], w, atol=1e-6, rtol=0, msg=f"{method} {k}")
        # losses within 1e-6 + 1e-6·|loss| (sign_dfa's third is 13.9, where float32's step is 1e-6)
        torch.testing.assert_close(
            torch.tensor(run.losses), torch.tensor(want_losses), atol=1e-6, rtol=1e-6, msg=method
        )
        if method == "dkp":  # the learned B_l, stage 0's, against ΔB = -η_B(eᵀh + wd·B)
            torch.testing.assert_close(run.feedback[0], want_b, atol=1e-6, rtol=0)
            assert (
                float(
                    (
                        want_b
                        - model_feedback(build_net(cfg, load_dataset("digits"))[1], (1, 8, 8), 10, "dkp", 1)[
                            0
                        ]
                    )
                    .abs()
                    .max()
                )
                > 1e-3
            )
        # the hidden layer moved for every rule but shallow, which leaves it at its init
        moved = float((got["1.weight"] - start["1.weight"]).abs().max())
        assert (moved == 0.0) if method == "shallow" else (moved > 1e-4), (method, moved)
        one = train_one_process(cfg)
        assert max_weight_difference(run.net, one.net) < 1e-6, method
        torch.testing.assert_close(
            torch.tensor(run.losses), torch.tensor(one.losses), atol=1e-6, rtol=1e-6, msg=method
        )
    by = dict(zip(DIRECT, runs))
    assert (
        by["ssdfa"].report["bytes_per_step"]
        == by["dfa"].report["bytes_per_step"]
        == 16 * 400 * 4 + 16 * 10 * 4
    )
    assert by["drtp"].report["bytes_per_step"] == 16 * 400 * 4 + 16 * 8
    assert by["shallow"].report["bytes_per_step"] == 16 * 400 * 4


def test_acceptance_command_each_rule_matches_one_process(capsys):
    r = _reports(
        capsys,
        [
            "pipeline",
            "--stages",
            "2",
            "--methods",
            "dfa,ssdfa,sign_dfa,shallow",
            "--dataset",
            "digits",
            "--steps",
            "10",
            "--json",
        ],
    )
    assert list(r) == ["dfa", "ssdfa", "sign_dfa", "shallow"]
    for m, rep in r.items():
        assert rep["matches_single_process"] is True, m
        assert rep["max_weight_difference"] <= 1e-6, m
        assert rep["bytes_per_step"] == rep["expected_bytes_per_step"], m
    assert r["shallow"]["max_feedback_difference"] is None  # shallow has no B_l
    assert r["ssdfa"]["max_feedback_difference"] == 0.0


def _nan_worker(rank, cfgs, port, outdir):
    """The library's stage worker, with a NaN planted in stage 0's hidden weight after step 1."""
    real = launch_module.train_step

    def planted(stage, *args, **kwargs):
        loss = real(stage, *args, **kwargs)
        planted.steps += 1
        if stage.first and planted.steps == 2:
            with torch.no_grad():
                stage.blocks[0][1].weight[0, 0] = float("nan")
        return loss

    planted.steps = 0
    launch_module.train_step = planted
    launch_module.stage_worker(rank, cfgs, port, outdir)


def test_planted_nan_in_a_stage_stops_the_run_with_diverged(tmp_path):
    # stage 0's weight turns NaN after its second step: it stops there with Diverged (the last
    # stage, waiting on it, is stopped), nothing is saved, and the error names stage and step
    cfg = PipelineConfig(dataset="digits", stages=2, method="dfa", steps=6, batch_size=16)
    with pytest.raises(Diverged) as info:
        spawn_stages([cfg], str(tmp_path), worker=_nan_worker)
    msg = str(info.value)
    assert "stage 0 found NaN or infinite values in 1.weight at step 2 of 6" in msg, msg
    assert len(msg.splitlines()) == 1 and "--lr" in msg
    assert not list(tmp_path.glob("0/rank*.pt"))


def test_divergence_is_exit_3_one_line(capsys):
    # lr 1e38: the loss is infinite at step 2 on the last stage, which stops the run at once
    code = main(
        [
            "pipeline",
            "--stages",
            "2",
            "--methods",
            "dfa",
            "--dataset",
            "digits",
            "--steps",
            "5",
            "--lr",
            "1e38",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 3 and out == "", err
    assert len(err.strip().splitlines()) == 1, err
    assert (
        "training diverged: dfa over 2 stages: stage 1 found NaN or infinite values in the "
        "loss at step 2 of 5" in err
    ), err


def test_stage_names_what_became_nan_weights_and_learned_b():
    # the check each stage runs after every step: its weights and its learned B_l (dkp)
    data = load_dataset("digits")
    model = convert_net(build_net(PipelineConfig(), data)[1], "dkp", (1, 8, 8), 10, 0)
    stage = build_stage(model.net, 0, 2, block_feedback(model), model.rule)
    assert stage.nonfinite() == []
    with torch.no_grad():
        model.feedback[0].matrix[3, 7] = float("inf")
        model.net[1].bias[0] = float("nan")
    assert stage.nonfinite() == ["1.bias", "the B at point0"]
