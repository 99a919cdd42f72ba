"""Rule lists for the tests, generated from the registry by kind (``ssdfa.rules.by_kind``).

A test marked ``@pytest.mark.rules("direct")`` is parametrized over ``method`` with every rule
of that kind registered when the tests are collected (``conftest.pytest_generate_tests``), so a
newly registered rule runs in every test of its kind without a list to edit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssdfa.rules import RULES, by_kind, make_rule


def rule_names(*kinds, where=None, without=()) -> list[str]:
    """Registered rules of ``kinds``; ``where(rule_class)`` keeps those with a trait, ``without``
    drops rules a test covers elsewhere (say why at the test)."""
    return [n for n in by_kind(*kinds) if n not in without and (where is None or where(RULES[n]))]


def paper_signal(method: str, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (batch, M) vector a direct rule sends through every B_l, written from its paper.

    dfa, sdfa, ssdfa and dkp feed e itself (SSDFA paper Eq. 8-9); sign-DFA sign(e)/batch and DRTP
    y*/batch (DRTP paper Sec. 2.3).  A rule registered after these formulas were written falls
    back to its own ``error_signal``: the engine around it is still checked against the formulas
    here, and the signal itself is the job of that rule's own test.
    """
    if method in ("dfa", "sdfa", "ssdfa", "dkp"):
        return e
    if method == "sign_dfa":
        return e.sign() / e.shape[0]
    if method == "drtp":
        return F.one_hot(y, e.shape[1]).to(e.dtype) / e.shape[0]
    return make_rule(method).error_signal(e, y)
