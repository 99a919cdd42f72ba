"""Property-based fuzz of ``ssdfa.convert``'s options (hypothesis); the CLI's is in test_cli_fuzz.py.

``convert`` returns a model that trains a step, or raises ``ValueError``/``TypeError``/``KeyError``
with a message — never an internal error of torch or Python.  Bounded: few examples.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ssdfa

# SSDFA_FUZZ_EXAMPLES=500 (and SSDFA_FUZZ_RANDOM=1 for new draws) for a deeper hunt
EXAMPLES = int(os.environ.get("SSDFA_FUZZ_EXAMPLES", "40"))
DERANDOMIZE = not os.environ.get("SSDFA_FUZZ_RANDOM")

OPTION_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 20),
    st.sampled_from([2**70, -(2**70), "0.5", "fc", True]),
)


@settings(max_examples=max(60, EXAMPLES), deadline=None, derandomize=DERANDOMIZE, database=None)
@given(
    method=st.one_of(st.sampled_from(list(ssdfa.METHODS)), st.sampled_from(["", "nope", 3])),
    options=st.dictionaries(
        st.sampled_from(["sparsity", "connections", "rank", "feedback_scale", "unlocked", "train_only"]),
        OPTION_VALUES,
        max_size=3,
    ),
    num_classes=st.sampled_from([10, 1, 0, -1, 11, 10.0, "10"]),
    seed=st.sampled_from([0, 1, -1, 2**63 - 1, 2**64, -(2**70), 1.5, "0"]),
)
def test_fuzz_convert_options(method, options, num_classes, seed):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 10))
    try:
        model = ssdfa.convert(net, method, num_classes=num_classes, seed=seed, **options)
    except (ValueError, TypeError, KeyError) as exc:  # documented refusals, with a message
        assert str(exc).strip(), type(exc)
        return
    x, y = torch.randn(5, 12), torch.randint(0, 10, (5,))
    loss = F.cross_entropy(model(x, target=y), y)
    loss.backward()
