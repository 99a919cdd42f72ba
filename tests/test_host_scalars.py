"""Host copies of seeds and step counters (ssdfa.host_scalars): a step reads no device value,
yet a checkpoint loaded into a model that already trained continues the loaded sequence."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssdfa
from ssdfa.host_scalars import HostScalars


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("n", torch.zeros((), dtype=torch.long))


def test_the_copy_follows_every_way_the_buffer_changes():
    m, host = Counter(), HostScalars()
    assert host.get(m, "n") == 0
    assert host.increment(m, "n") == 0 and host.get(m, "n") == 1 and int(m.n) == 1
    m.load_state_dict({"n": torch.tensor(41)})  # copied in place: the version moves
    assert host.get(m, "n") == 41
    with torch.no_grad():
        m.n.fill_(7)  # a user's own in-place write
    assert host.get(m, "n") == 7
    m.n = torch.tensor(3)  # a new tensor
    assert host.get(m, "n") == 3
    twin = copy.deepcopy(m)
    host.increment(m, "n")
    assert host.get(twin, "n") == 3 and host.get(m, "n") == 4


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))


def _step(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("method", ["brsf", "forward_grad"])
def test_a_loaded_checkpoint_continues_its_own_draws(method):
    """brSF redraws |R| and forward_grad its directions from (seed, count): after
    load_state_dict, a model that had already stepped under another seed (its host copy
    filled) takes the step the saved model would have taken next."""
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    saved = ssdfa.convert(_mlp(), method, seed=0)
    for _ in range(2):
        _step(saved, x, y)
    state = copy.deepcopy(saved.state_dict())
    want = _step(saved, x, y)
    resumed = ssdfa.convert(_mlp(), method, seed=5)
    _step(resumed, x, y)  # its host copy now holds seed 5, count 1
    resumed.load_state_dict(state)
    got = _step(resumed, x, y)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
