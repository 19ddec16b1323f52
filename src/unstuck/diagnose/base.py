"""The rule interface and the registry that discovers one rule per file in ``causes/``.

Like a pylint checker: a rule module defines its stable code (equal to the module name), its
explanation and its check, and is found by discovery, so adding a cause edits no central list.
A broken rule module fails loudly at import; it is never skipped silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from unstuck.diagnose.calibration import calibrated
from unstuck.diagnose.evidence import Evidence
from unstuck.plugins import discover_plugins
from unstuck.types import ACTING_CONFIDENCE, Finding

__all__ = [
    "EXPLAINED_FACTOR",
    "FOUND_CONFIDENCE",
    "FOUND_MARGIN",
    "MAX_FOUND_CONFIDENCE",
    "ROOT_CONFIDENCE",
    "TIE_MARGIN",
    "Rule",
    "all_rules",
    "found_confidence",
    "get_rule",
    "inputs_present",
    "run_rules",
]

ROOT_CONFIDENCE = ACTING_CONFIDENCE  # a root found at least this confident explains its symptoms
EXPLAINED_FACTOR = 0.5  # an explained symptom keeps this share of its confidence
# Findings whose confidences differ by less than this are not ordered by them: another CPU's
# kernels move a confidence by a few hundredths (dead_relu 0.88 vs vanishing_gradients 0.95 on
# one machine, the other way round on another). Within such a tie a root ranks before a cause
# that lists it in ``symptom_of``, then by code; each finding names the others it ties with.
TIE_MARGIN = 0.1


# A rule that finds its cause just past its own threshold says so this far above the acting bar,
# so a cause found at all is acted on and counts as a root, while the symptom it explains
# (EXPLAINED_FACTOR of it) and the end states capped below the bar are not.
FOUND_MARGIN = 0.1
FOUND_CONFIDENCE = ACTING_CONFIDENCE + FOUND_MARGIN
MAX_FOUND_CONFIDENCE = 0.95  # a measured reading never claims certainty (only counts do: 1.0)


def found_confidence(strength: float, *more: float, cap: float = MAX_FOUND_CONFIDENCE) -> float:
    """The confidence of a cause found ``strength`` past its rule's threshold:
    ``FOUND_CONFIDENCE`` plus ``strength`` (plus each of ``more``, added in order), within
    [0, ``cap``].

    Every rule's confidence starts here, so the base moves with the policy's acting threshold
    instead of working only because a copied 0.6 happens to sit above it. ``strength`` is in
    confidence units (0.2 per decade past the threshold, say); the terms are added left to
    right, as ``FOUND_CONFIDENCE + a + b`` would be. A NaN stays NaN (a ``Finding`` refuses it).
    """
    if not 0.0 <= cap <= 1.0:
        raise ValueError(f"found_confidence: cap must be in [0, 1], got {cap!r}")
    value = FOUND_CONFIDENCE + strength
    for term in more:
        value += term
    return float(min(max(value, 0.0), cap))


def inputs_present(ev: Evidence, names: frozenset[str]) -> bool:
    """Every name is in the evidence; a name ending in ``/*`` needs one name with that prefix
    (``lr/*``: some ``lr/<group>`` series)."""
    for name in names:
        if name.endswith("/*"):
            prefix = name[:-1]
            if not any(key.startswith(prefix) for key in ev):
                return False
        elif name not in ev:
            return False
    return True


class Rule:
    """One cause of a stalled run. Subclasses set the class attributes and implement check.

    ``continuous`` rules are cheap and run at every flush (non-finite values, frozen parameters);
    the others run when the detector reports a plateau, an oscillation or a divergence.

    A rule runs when all of its ``requires`` are in the evidence, or all of one set in
    ``requires_any``: the inputs of a weaker reading that the rule falls back on when its main
    inputs are absent (the log-level path of ``unstuck analyze``, where no framework logs
    update ratios or per-tensor norms). ``check`` takes the weaker reading only when the main
    signal it stands in for is absent, so a run that has it decides as before.
    """

    code: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()
    requires_any: ClassVar[tuple[frozenset[str], ...]] = ()
    # Inputs the rule reads when present but runs without (the clip rate behind over_clipping's
    # gradient norms): not a gate, yet their taps must be built for it (diagnose.selection).
    uses: ClassVar[frozenset[str]] = frozenset()
    continuous: ClassVar[bool] = False
    explanation: ClassVar[str] = ""
    # Causes that explain this one when found with it: a symptom ranks below its root cause
    # (tiny updates are lr_too_low only if over-clipping or saturation does not explain them).
    symptom_of: ClassVar[frozenset[str]] = frozenset()
    # The same relation declared from the root's side: the causes this one explains when found
    # with them (a new root names its symptoms here, so adding it touches no other rule file).
    explains: ClassVar[frozenset[str]] = frozenset()
    # What the rescue engine reads about the cause (declared here, so the engine names none):
    # an LR raise being judged may produce this finding itself (its effect, not a new cause);
    lr_raise_effect: ClassVar[bool] = False
    # the run's state is broken (a remedy retries from the last good state, and a rollback of
    # it refutes nothing about the remedy);
    broken_state: ClassVar[bool] = False
    # remedies (action names) that, decided within one horizon of the start, restart from the
    # run's first state: the damage of the first steps is not undone by a later change.
    restart_remedies: ClassVar[frozenset[str]] = frozenset()

    def check(self, ev: Evidence) -> Finding | None:
        raise NotImplementedError

    def applicable(self, ev: Evidence) -> bool:
        return inputs_present(ev, self.requires) or any(
            inputs_present(ev, names) for names in self.requires_any
        )


_REGISTRY: dict[str, Rule] = {}


def _validate(rule_cls: type[Rule], module_name: str) -> None:
    code = getattr(rule_cls, "code", None)
    if code != module_name:
        raise ImportError(
            f"rule {rule_cls.__name__} in causes/{module_name}.py has code {code!r}; "
            f"the code must equal the module name {module_name!r}"
        )
    if not (rule_cls.__doc__ or "").strip():
        raise ImportError(f"rule {code!r} has no docstring; say what stalls the run")
    if not rule_cls.explanation.strip():
        raise ImportError(f"rule {code!r} has no explanation; unstuck.explain needs one")
    if not isinstance(rule_cls.requires, frozenset):
        raise ImportError(f"rule {code!r}: requires must be a frozenset of signal names")
    alternatives = rule_cls.requires_any
    if not isinstance(alternatives, tuple) or not all(
        isinstance(a, frozenset) for a in alternatives
    ):
        raise ImportError(f"rule {code!r}: requires_any must be a tuple of frozensets")
    if not isinstance(rule_cls.uses, frozenset):
        raise ImportError(f"rule {code!r}: uses must be a frozenset of signal names")
    if not isinstance(rule_cls.symptom_of, frozenset):
        raise ImportError(f"rule {code!r}: symptom_of must be a frozenset of cause codes")
    if not isinstance(rule_cls.explains, frozenset):
        raise ImportError(f"rule {code!r}: explains must be a frozenset of cause codes")


def _discover() -> dict[str, Rule]:
    if _REGISTRY:
        return _REGISTRY
    from unstuck.diagnose import causes

    found: dict[str, Rule] = {}
    for name, cls in discover_plugins(causes, Rule, "causes").items():
        _validate(cls, name)
        found[name] = cls()
    _REGISTRY.update(found)
    return _REGISTRY


def all_rules() -> dict[str, Rule]:
    """Every registered rule by its cause code."""
    return dict(_discover())


def get_rule(code: str) -> Rule:
    rules = _discover()
    if code not in rules:
        raise KeyError(f"unknown cause code {code!r}; known: {', '.join(sorted(rules))}")
    return rules[code]


def raw_confidence(finding: Finding) -> float:
    """The confidence the rule itself gave, before calibration."""
    raw = finding.evidence.get("raw_confidence")
    return float(raw) if isinstance(raw, (int, float)) else finding.confidence


def run_rules(
    ev: Evidence, *, continuous_only: bool = False, known_roots: frozenset[str] = frozenset()
) -> list[Finding]:
    """Run the applicable rules and return their findings, most confident first.

    ``known_roots`` are causes found (confidently) at earlier decisions that still explain
    today's symptoms, such as exploding gradients measured at the start of a plateau.
    """
    rules = _discover()
    findings = []
    for rule in rules.values():
        if continuous_only and not rule.continuous:
            continue
        if not rule.applicable(ev):
            continue
        finding = rule.check(ev)
        if finding is not None:
            confidence = calibrated(
                finding.cause, finding.confidence, finding.evidence.get("reading")
            )
            if confidence != finding.confidence:
                finding = dataclasses.replace(
                    finding,
                    confidence=confidence,
                    evidence={**finding.evidence, "raw_confidence": finding.confidence},
                )
            findings.append(finding)
    findings = _demote_symptoms(findings, rules, known_roots)
    return _rank(findings, rules)


def _rank(findings: list[Finding], rules: dict[str, Rule]) -> list[Finding]:
    """Most confident first; findings within ``TIE_MARGIN`` of their neighbour form a tie,
    ordered root before symptom and then by code (not by a float difference), each naming the
    others in ``evidence["tied_with"]`` and the remedies they share in ``shared_remedies``."""
    ordered = sorted(findings, key=lambda f: (-f.confidence, f.cause))
    groups: list[list[Finding]] = []
    for f in ordered:
        if groups and groups[-1][-1].confidence - f.confidence < TIE_MARGIN:
            groups[-1].append(f)
        else:
            groups.append([f])
    out: list[Finding] = []
    for group in groups:
        if len(group) == 1:
            out += group
            continue
        codes = {f.cause for f in group}

        def roots_first(f: Finding, codes: set[str] = codes) -> tuple[int, str]:
            symptom = bool(roots_of(f.cause, rules) & codes)
            return (int(symptom), f.cause)

        for f in sorted(group, key=roots_first):
            others = sorted(codes - {f.cause})
            shared = sorted(
                {r.action for r in f.remedies}.intersection(
                    *({r.action for r in g.remedies} for g in group if g is not f)
                )
            )
            out.append(
                dataclasses.replace(
                    f, evidence={**f.evidence, "tied_with": others, "shared_remedies": shared}
                )
            )
    return out


def roots_of(cause: str, rules: Mapping[str, Rule]) -> frozenset[str]:
    """The causes that explain ``cause`` when found with it: its own ``symptom_of`` and every
    rule that lists it in ``explains``."""
    rule = rules.get(cause)
    own = rule.symptom_of if rule is not None else frozenset()
    return own | frozenset(code for code, r in rules.items() if cause in r.explains)


def _demote_symptoms(
    findings: list[Finding], rules: dict[str, Rule], known_roots: frozenset[str] = frozenset()
) -> list[Finding]:
    """Rank a symptom below the root cause that explains it (its evidence names the root).

    A root is a cause its rule found at ``ROOT_CONFIDENCE`` or more before calibration
    (``raw_confidence``): whether a cause is present enough to explain a symptom is the rule's
    reading; how often it is the run's real cause is what calibration measures. The symptom
    keeps ``EXPLAINED_FACTOR`` of its confidence, and of its root's when that is lower (a root
    calibrated down must still out-rank what it explains)."""
    found = {f.cause: f.confidence for f in findings if raw_confidence(f) >= ROOT_CONFIDENCE}
    roots = set(found) | set(known_roots)
    out = []
    for finding in findings:
        explained = sorted(roots_of(finding.cause, rules) & roots)
        if explained:
            ceiling = min([found[r] for r in explained if r in found] + [finding.confidence])
            finding = dataclasses.replace(
                finding,
                confidence=ceiling * EXPLAINED_FACTOR,
                evidence={
                    **finding.evidence,
                    "explained_by": explained,
                    "unexplained_confidence": finding.confidence,
                },
            )
        out.append(finding)
    return out
