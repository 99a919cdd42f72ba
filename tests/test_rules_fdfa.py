"""fdfa (Bacho & Chu 2024): DFA whose B_l follow forward-mode estimates of ∂y/∂h_l with momentum.

Expected values are computed here from the paper's update, B_l ← β·B_l + (1-β)·mean t·u_lᵀ with
t = Σ_k J_k u_k, for linear networks whose Jacobians are products of their weights.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa.metrics import angle


def linear_net(widths=(6, 5, 4, 3)):
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(widths) - 2:
            layers.append(ssdfa.FeedbackPoint())
    return nn.Sequential(*layers)


def test_one_update_is_the_papers_momentum_step():
    net = linear_net()  # x -> W1 -> p0 -> W2 -> p1 -> W3 -> y
    model = ssdfa.convert(net, "fdfa", momentum=0.25, seed=0)
    w2, w3 = net[2].weight.detach(), net[4].weight.detach()
    old = [b.clone() for b in model.feedback_matrices().values()]
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    torch.manual_seed(11)
    F.cross_entropy(model(x, target=y), y).backward()
    torch.manual_seed(11)  # the perturbations, in firing order: u_0 (9, 5), u_1 (9, 4)
    u0, u1 = torch.randn(9, 5), torch.randn(9, 4)
    t = (u0 @ w2.T + u1) @ w3.T  # the output tangent: J_0 u_0 + J_1 u_1, J_0 = W3 W2, J_1 = W3
    new = list(model.feedback_matrices().values())
    torch.testing.assert_close(new[0], 0.25 * old[0] + 0.75 * (t.T @ u0) / 9)
    torch.testing.assert_close(new[1], 0.25 * old[1] + 0.75 * (t.T @ u1) / 9)
    # and the hidden gradients are DFA's with the updated matrices
    e = (torch.softmax(x @ net[0].weight.T @ w2.T @ w3.T, 1) - F.one_hot(y, 3)) / 9
    h0 = x @ net[0].weight.detach().T
    torch.testing.assert_close(net[0].weight.grad, (e @ new[0]).T @ x)
    torch.testing.assert_close(net[2].weight.grad, (e @ new[1]).T @ h0)


def test_feedback_turns_toward_the_true_jacobian_during_training():
    """The paper's claim: on a linear network B_l → ∂y/∂h_l = W_out·…·W_{l+1}, so ∠(B_l, J_l)
    falls from about 90° (a random start) while the network trains."""
    net = linear_net((20, 30, 30, 5))
    model = ssdfa.convert(net, "fdfa", momentum=0.95, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(20, 5, generator=g)

    def angles():
        w2, w3 = net[2].weight.detach(), net[4].weight.detach()
        b = list(model.feedback_matrices().values())
        return angle(b[0], w3 @ w2), angle(b[1], w3)

    start = angles()
    for _ in range(200):
        x = torch.randn(64, 20, generator=g)
        y = (x @ teacher).argmax(1)
        opt.zero_grad()
        F.cross_entropy(model(x, target=y), y).backward()
        opt.step()
    end = angles()
    assert min(start) > 70, start
    assert max(end) < 25, (start, end)
    dfa = ssdfa.convert(linear_net((20, 30, 30, 5)), "dfa", seed=0)
    w3 = dfa.net[4].weight.detach()
    assert angle(list(dfa.feedback_matrices().values())[1], w3) > 70  # DFA's B stays random


def test_evaluation_and_backprop_leave_the_feedback_alone():
    net = linear_net()
    model = ssdfa.convert(net, "fdfa", seed=0)
    before = [b.clone() for b in model.feedback_matrices().values()]
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    with torch.no_grad():
        model(x)
    model.eval()
    F.cross_entropy(model(x, target=y), y).backward()
    model.train()
    with model.backprop():
        F.cross_entropy(model(x), y).backward()
    for a, b in zip(before, model.feedback_matrices().values()):
        assert torch.equal(a, b)


def test_fdfa_refuses_a_softmax_head_and_bad_momentum():
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.LogSoftmax(-1))
    model = ssdfa.convert(net, "fdfa", seed=0)
    with pytest.raises(ValueError, match="end it at the logits"):
        model(torch.randn(2, 4))
    with pytest.raises(ValueError, match="momentum must be"):
        ssdfa.convert(linear_net(), "fdfa", momentum=1.0)


def _ddp_worker(rank, port, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = ssdfa.convert(linear_net(), "fdfa", momentum=0.5, seed=0)
    torch.manual_seed(rank)  # each rank draws its own perturbations
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)
    for _ in range(3):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(ddp(x, target=y), y).backward()
        opt.step()
    torch.save(
        {
            "params": [p.detach().clone() for p in model.parameters()],
            "feedback": [b.clone() for b in model.feedback_matrices().values()],
        },
        f"{out}.{rank}",
    )
    dist.barrier()
    os._exit(0)


def test_ddp_replicas_keep_the_same_feedback_and_weights(tmp_path):
    """The B_l estimates are averaged over the ranks, so every replica holds the same B_l (and,
    through DDP's averaged gradients, the same weights), though each drew its own u."""
    import time

    import torch.multiprocessing as mp

    from ssdfa.pipeline import free_port

    out = str(tmp_path / "ddp")
    ctx = mp.spawn(_ddp_worker, args=(free_port(), out), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two DDP workers did not finish within 120 s")
    a, b = (torch.load(f"{out}.{r}") for r in range(2))
    for key in ("params", "feedback"):
        for s, t in zip(a[key], b[key]):
            assert torch.equal(s, t), key
    start = list(ssdfa.convert(linear_net(), "fdfa", seed=0).feedback_matrices().values())
    assert not torch.equal(a["feedback"][0], start[0])  # and they did learn


class _Pooled(nn.Module):
    """(batch, seq, 4) tokens -> a (batch, seq, 5) point -> mean over positions -> (batch, 3)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 5, bias=False)
        self.point = ssdfa.FeedbackPoint()
        self.out = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.out(self.point(self.inp(x)).mean(1))


def test_a_point_under_a_pooled_head_shares_one_b_over_positions():
    """A (batch, seq, d) point under a (batch, M) head has one (M, d) B_l for every position; the
    update is β·B + (1-β)·tᵀū with ū the perturbations' mean over positions, since
    E[t·u_pᵀ] = ∂y/∂h_p (here W_out/T at every position)."""
    torch.manual_seed(0)
    net = _Pooled()
    model = ssdfa.convert(net, "fdfa", momentum=0.5, seed=0, example_input=torch.randn(2, 6, 4))
    assert model.layout == ["broadcast"]
    old = model.feedback_matrices()["point"].clone()
    x, y = torch.randn(7, 6, 4), torch.randint(0, 3, (7,))
    torch.manual_seed(5)
    F.cross_entropy(model(x), y).backward()
    torch.manual_seed(5)
    u = torch.randn(7, 6, 5)  # the step's perturbation at the point
    t = u.mean(1) @ net.out.weight.detach().T  # the output tangent J·u
    expected = 0.5 * old + 0.5 * (t.T @ u.mean(1)) / 7
    torch.testing.assert_close(model.feedback_matrices()["point"], expected)
