"""Learning rules by name. Each file holds one rule (or one family); importing registers it."""

from . import bp, dfa  # noqa: F401  (registration side effect)
from .base import RULES, Rule, RuleOptionError, make_rule, register_rule

__all__ = ["RULES", "Rule", "RuleOptionError", "make_rule", "register_rule"]
