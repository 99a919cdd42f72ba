"""Learning rules by name. Each file holds one rule (or one family); importing registers it."""

from . import bp, dfa, dkp, drtp, fdfa, forward_grad, layerwise, shallow, sign_dfa, sign_symmetric  # noqa: F401  (registration)
from .base import CUT, FEEDS_BACK, RULES, Kind, Rule, RuleOptionError, by_kind, make_rule, register_rule

METHODS: tuple[str, ...] = tuple(sorted(RULES))

__all__ = [
    "CUT",
    "FEEDS_BACK",
    "METHODS",
    "RULES",
    "Kind",
    "Rule",
    "RuleOptionError",
    "by_kind",
    "make_rule",
    "register_rule",
]
