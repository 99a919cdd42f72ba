"""``ssdfa.rules.base``: a rule's kind, the booleans derived from it, and the registry by kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinds import rule_names
from ssdfa.rules import RULES, Kind, Rule, by_kind, make_rule, register_rule
from ssdfa.rules.dfa import DFA

TESTS = Path(__file__).parent

# what each rule did before it had a kind: (direct, layerwise, inject, local), written out by hand
BEFORE = {
    "bp": (False, False, True, False),
    "forward_grad": (False, False, True, False),
    "fa": (False, True, True, False),
    "kp": (False, True, True, False),
    "usf": (False, True, True, False),
    "frsf": (False, True, True, False),
    "brsf": (False, True, True, False),
    "dfa": (True, False, True, False),
    "sdfa": (True, False, True, False),
    "ssdfa": (True, False, True, False),
    "dkp": (True, False, True, False),
    "sign_dfa": (True, False, True, False),
    "drtp": (True, False, True, False),
    "fdfa": (True, False, True, False),
    "shallow": (True, False, False, False),
}


@pytest.mark.parametrize("method", sorted(BEFORE))
def test_the_booleans_derived_from_kind_are_what_each_rule_said_before(method):
    for rule in (RULES[method], make_rule(method)):  # on the class (tests read it there) and an instance
        assert (rule.direct, rule.layerwise, rule.inject, rule.local) == BEFORE[method]
    assert make_rule("drtp", unlocked=True).kind is Kind.LOCAL
    unlocked = make_rule("drtp", unlocked=True)
    assert (unlocked.direct, unlocked.inject, unlocked.local) == (True, False, True)
    assert RULES["fdfa"].forward_mode == "activities" and RULES["forward_grad"].forward_mode == "weights"
    assert RULES["dfa"].forward_mode is None


def test_every_rule_has_a_kind_and_by_kind_partitions_the_registry():
    names = [n for k in Kind for n in by_kind(k)]
    assert sorted(names) == sorted(RULES)
    assert by_kind("direct") == by_kind(Kind.DIRECT)
    assert set(by_kind("direct")) == {"dfa", "sdfa", "ssdfa", "dkp", "sign_dfa", "drtp"}
    assert set(by_kind("layerwise")) == {"fa", "kp", "usf", "frsf", "brsf"}
    assert by_kind("output_only") == ["shallow"] and by_kind("backprop") == ["bp"]
    with pytest.raises(ValueError):
        by_kind("direkt")


def test_the_derived_booleans_are_read_only_and_a_rule_cannot_shadow_them():
    rule = make_rule("dfa")
    with pytest.raises(AttributeError, match="kind"):
        rule.direct = False
    with pytest.raises(TypeError, match="set kind"):
        type("Odd", (Rule,), {"direct": False})
    with pytest.raises(TypeError, match="must be a Kind"):
        type("Odd", (Rule,), {"kind": "direct"})


@pytest.fixture
def throwaway_rule():
    """A direct rule registered for one test and removed afterwards: DFA under another name."""

    @register_rule("throwaway_dfa")
    class Throwaway(DFA):
        summary = "DFA under another name, registered by tests/test_rules_base.py"

    yield "throwaway_dfa"
    del RULES["throwaway_dfa"]


def test_a_registered_direct_rule_joins_every_generated_test_of_its_kind(throwaway_rule, pytester):
    assert throwaway_rule in rule_names("direct")
    files = [str(TESTS / f) for f in ("test_convert.py", "test_feedback.py", "test_convert_real_models.py")]
    collected = pytester.runpytest_inprocess(
        *files, "--collect-only", "-o", "addopts=", "-q", "-p", "no:cacheprovider"
    )
    ids = [
        line for line in collected.outlines if f"[{throwaway_rule}" in line or f"-{throwaway_rule}" in line
    ]
    for test in (
        "test_mlp_gradients_match_the_papers_equations",
        "test_cnn_gradients_match_the_papers_equations",
        "test_public_reference_checker_agrees",
        "test_every_point_draws_an_independent_matrix",
        "test_direct_gradients_equal_the_formulas",
        "test_public_checker_covers_hooked_and_traced_models",
    ):
        assert any(test in i for i in ids), (test, ids)
    # and the engine's gradient tests run on it and pass, against the formulas of tests/test_convert.py
    ran = pytester.runpytest_inprocess(
        str(TESTS / "test_convert.py"), "-k", f"{throwaway_rule} and not checker", "-p", "no:cacheprovider"
    )
    assert ran.parseoutcomes() == {"passed": 3, "deselected": 65}, ran.parseoutcomes()


def test_the_public_checker_takes_a_new_direct_rule(throwaway_rule, pytester):
    ran = pytester.runpytest_inprocess(
        str(TESTS / "test_convert.py"), "-k", f"{throwaway_rule} and checker", "-p", "no:cacheprovider"
    )
    assert ran.parseoutcomes() == {"passed": 2, "deselected": 66}, ran.parseoutcomes()
