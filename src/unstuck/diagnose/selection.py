"""Which signal taps the registered rules need: a tap no rule reads costs steps for nothing.

Taps declare what they ``provide``; rules declare what they ``require`` (all of one set in
``requires_any``) and what they ``use`` when present. A tap is needed when a name it provides,
or one the evidence derives from it (``loss_initial`` from ``loss``), is among those, or among
the names the caller always needs (the detector's inputs). Names that no candidate tap, derived
name or front-end fact accounts for are reported: a misspelt requirement would otherwise keep
its rule from ever running, with no error anywhere.

Pure: it reads only class attributes, so taps and rules may be passed as classes or instances.
Like pylint's ``only_required_for_messages``, the gate is what the enabled checks declare.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from unstuck.diagnose.evidence import FACTS, derived_names

__all__ = [
    "ALWAYS_NEEDED",
    "ProvidesSignals",
    "ReadsSignals",
    "TapSelection",
    "rule_inputs",
    "select_taps",
]

# What readers other than the rules take from the taps, whatever rules are registered: the
# detector reads the loss, the parameter distance (hidden progress) and the gradient SNR; the
# report plots the LR schedule, the gradient norm and the update ratios.
ALWAYS_NEEDED = frozenset(
    {"loss", "param_distance", "grad_snr", "lr/*", "grad_norm", "update_ratio"}
)


class ProvidesSignals(Protocol):
    """What selection reads of a tap (class or instance): the names its ``finish`` returns."""

    @property
    def provides(self) -> frozenset[str]: ...


class ReadsSignals(Protocol):
    """What selection reads of a rule (class or instance)."""

    @property
    def code(self) -> str: ...
    @property
    def requires(self) -> frozenset[str]: ...
    @property
    def requires_any(self) -> tuple[frozenset[str], ...]: ...
    @property
    def uses(self) -> frozenset[str]: ...


T = TypeVar("T", bound=ProvidesSignals)


@dataclass(frozen=True)
class TapSelection(Generic[T]):
    """The candidate taps split into those to build and those no reader needs, in the given
    order, with the names nothing provides (``{rule code or "always": sorted names}``)."""

    needed: tuple[T, ...]
    dropped: tuple[T, ...]
    unknown: dict[str, tuple[str, ...]] = field(default_factory=dict)


def rule_inputs(rule: ReadsSignals) -> frozenset[str]:
    """Every name a rule may read: its requirements, each fallback set, and what it uses."""
    names = set(rule.requires) | set(rule.uses)
    for alternative in rule.requires_any:
        names |= alternative
    return frozenset(names)


def _covers(provided: str, wanted: str) -> bool:
    """``provided`` (a name or ``prefix/*``) accounts for ``wanted`` (a name or ``prefix/*``)."""
    if provided == wanted:
        return True
    if provided.endswith("/*") and wanted.startswith(provided[:-1]):
        return True
    return wanted.endswith("/*") and provided.startswith(wanted[:-1])


def _outputs(tap: ProvidesSignals) -> frozenset[str]:
    provides = frozenset(tap.provides)
    return provides | derived_names(provides)


def select_taps(
    taps: Iterable[T],
    rules: Iterable[ReadsSignals],
    *,
    always: Iterable[str] = (),
    facts: frozenset[str] = FACTS,
) -> TapSelection[T]:
    """Split ``taps`` into the ones some rule in ``rules`` reads (or that provide a name in
    ``always``) and the rest.

    ``always`` names what readers other than the rules need (the loss and ``lr/*`` for the
    detector and the report, ``param_distance`` and ``grad_snr`` for the detector's hidden
    progress). ``facts`` are names front-ends set without a tap; they select nothing.
    """
    candidates = list(taps)
    outputs = [_outputs(tap) for tap in candidates]
    wanted: dict[str, frozenset[str]] = {"always": frozenset(always)}
    for rule in rules:
        wanted[rule.code] = rule_inputs(rule)
    every = frozenset().union(*wanted.values())
    needed = [any(_covers(p, name) for p in out for name in every) for out in outputs]
    unknown: dict[str, tuple[str, ...]] = {}
    for reader, names in wanted.items():
        missing = sorted(
            name
            for name in names
            if name not in facts and not any(_covers(p, name) for out in outputs for p in out)
        )
        if missing:
            unknown[reader] = tuple(missing)
    return TapSelection(
        needed=tuple(t for t, keep in zip(candidates, needed) if keep),
        dropped=tuple(t for t, keep in zip(candidates, needed) if not keep),
        unknown=unknown,
    )
