"""Fixtures shared by the test files."""

pytest_plugins = ["pytester"]  # tests/test_rules_base.py runs a collection of its own

import pytest
import torch

from kinds import rule_names


def pytest_generate_tests(metafunc):
    """``@pytest.mark.rules(*kinds, where=..., without=...)``: ``method`` over the registry."""
    mark = metafunc.definition.get_closest_marker("rules")
    if mark is not None:
        metafunc.parametrize("method", rule_names(*mark.args, **mark.kwargs))


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors on a shared 2-core machine: one thread avoids waiting on a busy sibling."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_real_data(tmp_path, monkeypatch):
    """No real dataset on this machine can leak into a test: every look-up root is in tmp_path."""
    from ssdfa import data as D

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SSDFA_DATA", raising=False)
    monkeypatch.setattr(D.roots, "SYSTEM_ROOTS", (tmp_path / "system",))  # read by search_roots
    return tmp_path
