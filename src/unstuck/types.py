"""The vocabulary every stage shares: plateaus, findings, remedies and action records.

All of them are plain dataclasses holding primitives (str, int, float, bool, lists and dicts of
those), so they can go into a ``state_dict`` that ``torch.load(weights_only=True)`` reads back,
into the run store as JSON, and into any framework's checkpoint. ``to_dict``/``from_dict`` are
the only (de)serialisers; nothing here pickles objects.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

__all__ = [
    "ACTING_CONFIDENCE",
    "ACTION_OUTCOMES",
    "ACT_ON_STATES",
    "DETECTOR_STATES",
    "DIAGNOSE_ON",
    "FLAT_STATES",
    "NOTABLE_STATES",
    "PLATEAU_KINDS",
    "SERIES",
    "UNSTABLE_STATES",
    "ActionRecord",
    "DetectorState",
    "EngineEvent",
    "Finding",
    "Plateau",
    "Remedy",
    "primitive",
]


class DetectorState(str, Enum):
    """What a plateau detector says of its series now.

    A ``str`` subclass: a member equals (and hashes as) its value, so states read back from a
    run store or a checkpoint as plain strings compare with these members, and JSON writes the
    value. The groupings below are the one place that says which states mean what. (An
    ``enum.StrEnum`` but for Python 3.10, which has none: ``str()`` and formatting give the
    value, as StrEnum's do.)
    """

    UNKNOWN = "unknown"  # too few points to say anything yet
    IMPROVING = "improving"
    SLOW = "slow"
    PLATEAU = "plateau"
    OSCILLATING = "oscillating"
    DIVERGING = "diverging"
    HIDDEN_PROGRESS = "hidden_progress"  # loss flat, parameters still moving steadily: wait

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return str(self.value).__format__(spec)


DETECTOR_STATES: tuple[str, ...] = tuple(state.value for state in DetectorState)
# The states the pipeline reads by group, each defined once:
# unstable: the loss swings or grows (acted on at once; an episode in the analysis).
UNSTABLE_STATES = frozenset({DetectorState.OSCILLATING, DetectorState.DIVERGING})
# flat: the loss is flat, whether or not the weights still move (the curvature probe runs).
FLAT_STATES = frozenset({DetectorState.PLATEAU, DetectorState.HIDDEN_PROGRESS})
# acted on without a confident finding: a plateau, or an unstable loss.
ACT_ON_STATES = frozenset({DetectorState.PLATEAU, *UNSTABLE_STATES})
# shown on the console when entered or left.
NOTABLE_STATES = frozenset({*ACT_ON_STATES, DetectorState.HIDDEN_PROGRESS})
# every rule is run (elsewhere only the continuous ones): anything but improving or unknown.
DIAGNOSE_ON = frozenset({*NOTABLE_STATES, DetectorState.SLOW})
PLATEAU_KINDS: tuple[str, ...] = ("early", "mid", "near_convergence")
# The bar a finding must reach to be a problem: the rescue policy acts on it, diagnosis counts it
# as a root that explains its symptoms, calibration never lifts a hint over it. A design decision
# (docs/diagnosis.md "Ranking"), defined here so that rules and the policy read the same value.
ACTING_CONFIDENCE = 0.5
SERIES: tuple[str, ...] = ("train", "val")
# pending → kept | rolled_back (verified after the horizon) | unverified (the run ended first);
# probes: probing → restored (range test measured and put back) | kept | control_kept (branch
# trial) | interrupted (the run ended or was resumed mid-probe); skipped: could not run here.
ACTION_OUTCOMES: tuple[str, ...] = (
    "pending",
    "kept",
    "rolled_back",
    "failed",
    "unverified",
    "probing",
    "restored",
    "control_kept",
    "interrupted",
    "skipped",
)


def primitive(value: Any) -> Any:
    """Turn numpy/torch scalars, tuples and nested containers into plain Python primitives.

    Non-finite floats stay floats (``nan``/``inf``): they are data, not errors.
    """
    if isinstance(value, Enum):
        value = value.value  # a DetectorState as the plain str it stands for
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): primitive(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [primitive(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalar, 0-d array or 0-d tensor
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return primitive(item())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return primitive(tolist())
    raise TypeError(
        f"cannot store a value of type {type(value).__name__} as a primitive: {value!r}"
    )


@dataclass(frozen=True)
class Plateau:
    """A stretch of a monitored series where the loss stopped making progress.

    ``end`` is ``None`` while the plateau is still open. ``kind`` is ``early`` (before the series
    first fell meaningfully), ``mid`` or ``near_convergence`` (gradient below its noise).
    """

    series: str
    start: int
    end: int | None = None
    kind: str = "mid"
    confidence: float = 0.0
    detected_at: int | None = None  # the step at which the detector first called it

    @property
    def is_open(self) -> bool:
        return self.end is None

    def to_dict(self) -> dict[str, Any]:
        return primitive(dataclasses.asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plateau:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class Remedy:
    """A suggested fix. ``action`` names a registered rescue action when ``automatic``."""

    action: str
    params: dict[str, Any] = field(default_factory=dict)
    automatic: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return primitive(dataclasses.asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Remedy:
        return cls(
            action=str(data["action"]),
            params=dict(data.get("params", {})),
            automatic=bool(data.get("automatic", False)),
            note=str(data.get("note", "")),
        )


@dataclass(frozen=True)
class Finding:
    """A diagnosed cause with the numbers behind it.

    ``cause`` is a catalog code (see ``docs/diagnosis.md``); ``confidence`` is in [0, 1];
    ``evidence`` maps names to the measured values that made the rule fire.
    """

    cause: str
    confidence: float
    evidence: dict[str, Any]
    step: int
    summary: str
    remedies: tuple[Remedy, ...] = ()
    series: str = "train"

    def __post_init__(self) -> None:
        if not (0.0 <= self.confidence <= 1.0) or math.isnan(self.confidence):
            raise ValueError(f"Finding.confidence must be in [0, 1], got {self.confidence!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "confidence": float(self.confidence),
            "evidence": primitive(self.evidence),
            "step": int(self.step),
            "summary": self.summary,
            "remedies": [r.to_dict() for r in self.remedies],
            "series": self.series,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(
            cause=str(data["cause"]),
            confidence=float(data["confidence"]),
            evidence=dict(data.get("evidence", {})),
            step=int(data["step"]),
            summary=str(data.get("summary", "")),
            remedies=tuple(Remedy.from_dict(r) for r in data.get("remedies", [])),
            series=str(data.get("series", "train")),
        )


@dataclass
class ActionRecord:
    """One rescue action taken (or probed) by unstuck, and what became of it.

    ``outcome`` moves from ``pending`` to ``kept`` or ``rolled_back`` once the action has been
    verified after its horizon.
    """

    name: str
    step: int
    reason: str
    outcome: str = "pending"
    params: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    verified_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return primitive(dataclasses.asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionRecord:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class EngineEvent:
    """One thing the rescue engine did, typed: an action taken (``kind == "action"``), its record
    updated (``"action_outcome"``: a verdict, a restore, a skip), or a probe's reading
    (``"probe"``).

    The record is copied when the event is made, so later changes to the engine's own record
    do not rewrite history; ``payload`` is its JSON form, made once for the store and sinks.
    It also reads as the ``(kind, payload)`` pair events once were: ``kind, payload = event``.
    """

    kind: str
    payload: Mapping[str, Any]
    record: ActionRecord | None = None

    ACTION: ClassVar[str] = "action"
    OUTCOME: ClassVar[str] = "action_outcome"
    PROBE: ClassVar[str] = "probe"

    @classmethod
    def action(cls, record: ActionRecord) -> EngineEvent:
        return cls._of(cls.ACTION, record)

    @classmethod
    def outcome(cls, record: ActionRecord) -> EngineEvent:
        return cls._of(cls.OUTCOME, record)

    @classmethod
    def probe(cls, reading: Mapping[str, Any]) -> EngineEvent:
        return cls(cls.PROBE, primitive(dict(reading)))

    @classmethod
    def _of(cls, kind: str, record: ActionRecord) -> EngineEvent:
        payload = record.to_dict()
        return cls(kind, payload, ActionRecord.from_dict(payload))

    @property
    def rolled_back(self) -> bool:
        return self.record is not None and self.record.outcome == "rolled_back"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.kind, self.payload))

    def __getitem__(self, index: int) -> Any:
        return (self.kind, self.payload)[index]

    def __len__(self) -> int:
        return 2
