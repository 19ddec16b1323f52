"""Diagnosis: one rule per cause reads evidence and returns a finding with its numbers."""

from unstuck.diagnose.base import Rule, all_rules, get_rule, run_rules
from unstuck.diagnose.evidence import Evidence, EvidenceBuilder
from unstuck.diagnose.explain import explain

__all__ = ["Evidence", "EvidenceBuilder", "Rule", "all_rules", "explain", "get_rule", "run_rules"]
