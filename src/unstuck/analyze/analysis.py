"""Offline analysis: the live pipeline's detector and rules, run over the series a log holds.

Nothing here has thresholds of its own. Each loss-like series (``loss`` as ``train``,
``val_loss`` as ``val``, any other series with "loss" in its name under its own name) goes
point by point, in step order, through a default :class:`PlateauDetector`, exactly as a live
run's would. Wherever a detector changes state, where a loss value is non-finite, and at the
last point of each series, the rules run on an :class:`Evidence` holding the series up to that
step (plus ``detector_state``, ``detector_series`` and ``detector_stats``, as the Guard builds
it): every rule when the state is one the Guard diagnoses on, else only the continuous ones.

Which rules can run is decided by their own ``requires`` (or ``requires_any``, the inputs of a
rule's log-level reading): a log from another tool gives the evidence ``loss``, ``val_loss``,
``grad_norm``, ``lr/*`` and ``nonfinite_loss`` (1 where a logged loss is NaN/inf), so
``capacity_limit``, ``overfitting`` and ``nonfinite`` run as on a live run, and
``lr_too_high``, ``converged`` and ``exploding_gradients`` run their log-level readings (hints
from the loss shape, the LR and the global gradient norm; docs/analyze.md; ``lr_too_low`` has
none: a log at one LR cannot tell a small LR from a short run, and a note says so);
``over_clipping`` is left out (:data:`LEFT_OUT_ON_LOGS` says why). unstuck's own run store gives
every series the Guard recorded, so every rule whose inputs were recorded runs. The findings
are kept once per (cause, series), at their highest confidence. The detector's oscillating and
diverging stretches of each series are reported as ``episodes``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from unstuck.analyze._common import MIN_SERIES_POINTS
from unstuck.analyze.store_replay import StoreReplay, store_replay
from unstuck.detect.detector import DEFAULT_EPSILON, PlateauDetector
from unstuck.diagnose.base import EXPLAINED_FACTOR, all_rules, inputs_present, run_rules
from unstuck.diagnose.causes._landscape import loss_drop
from unstuck.diagnose.causes._logs import ANNEALED, lr_never_changed, lr_text, schedule_annealed
from unstuck.diagnose.evidence import (
    HISTORY_POINTS,
    INITIAL_POINTS,
    Evidence,
    EvidenceBuilder,
)
from unstuck.diagnose.log import FindingLog
from unstuck.record.rundata import REFERENCE_SERIES_KEY, RunData
from unstuck.types import (
    DIAGNOSE_ON,
    FLAT_STATES,
    UNSTABLE_STATES,
    Finding,
    Plateau,
    primitive,
)

__all__ = [
    "DIAGNOSE_ON",
    "EPISODE_STATES",
    "LEFT_OUT_ON_LOGS",
    "LOG_EVIDENCE",
    "MIN_PLATEAU_POINTS",
    "NOT_LOSS_PREFIXES",
    "NOT_LOSS_WORDS",
    "SERIES_LABELS",
    "analyze",
    "loss_series",
    "summary",
]

SERIES_LABELS = {"loss": "train", "val_loss": "val"}  # the Guard's detector names
# DIAGNOSE_ON (unstuck.types): the states at which the Guard runs every rule; at the others
# only the continuous rules (non-finite values, frozen parameters) run.
# States reported as stretches of their own (plateaus are reported as Plateau objects): the loss
# bouncing or climbing, what lr_too_high reads on a log.
EPISODE_STATES = UNSTABLE_STATES
# The detector calls no plateau before 2·min_points points, on a window of 2·min_points bins.
MIN_PLATEAU_POINTS = MIN_SERIES_POINTS
NOT_LOSS_PREFIXES = ("lr/", "nonfinite_")  # names with "loss" in them that are no loss ...
NOT_LOSS_WORDS = ("scale",)  # ... nor is a mixed-precision "loss_scale"
LOG_EVIDENCE = ("loss", "val_loss", "grad_norm")  # plus every lr/* series, and nonfinite_loss
# Rules whose inputs a log seems to hold but not with the meaning the rule needs (the docs say
# more, docs/analyze.md).
LEFT_OUT_ON_LOGS: dict[str, str] = {
    "over_clipping": (
        "needs the post-clip gradient norm; logs hold the pre-clip one (clip_grad_norm_'s "
        "return value, HF's grad_norm)"
    ),
}


@dataclasses.dataclass(frozen=True)
class _Decision:
    step: int
    series: str
    state: str
    stats: dict[str, Any]
    plateau: Plateau | None = None  # the detector's open plateau then (a copy)


def loss_series(run: RunData) -> list[str]:
    """The series the detector runs on: ``loss``, ``val_loss``, then every other series with
    "loss" in its name (not ``lr/*``, unstuck's ``nonfinite_loss`` or a ``loss_scale``)."""
    names = [n for n in SERIES_LABELS if n in run.series]
    references = set(run.meta.get(REFERENCE_SERIES_KEY) or ())  # another run's curves
    for name in sorted(run.series):
        low = name.lower()
        if (
            name not in SERIES_LABELS
            and name not in references
            and "loss" in low
            and not low.startswith(NOT_LOSS_PREFIXES)
            and not any(word in low for word in NOT_LOSS_WORDS)
        ):
            names.append(name)
    return names


def _upto(pair: tuple[np.ndarray, np.ndarray], step: int) -> tuple[list[int], list[float]]:
    """The points at or before ``step``, at most the ``HISTORY_POINTS`` the Guard keeps."""
    steps, values = pair
    k = int(np.searchsorted(steps, step, side="right"))
    start = max(k - HISTORY_POINTS, 0)
    return steps[start:k].tolist(), values[start:k].tolist()


def _detect(
    name: str,
    run: RunData,
    options: Mapping[str, Any],
    replay: StoreReplay | None = None,
) -> tuple[PlateauDetector, list[_Decision]]:
    """Feed one series to a fresh detector; note where it should be diagnosed.

    A log goes point by point and is diagnosed where the state changes. A Guard's store
    (``replay``) goes as the live run went: the training loss one flush at a time, decided and
    diagnosed at every flush, the validation loss diagnosed at every point.
    """
    label = SERIES_LABELS.get(name, name)
    steps, values = run.series[name]
    # unstuck's own store holds the parameter distance and gradient SNR the Guard fed its
    # detectors; other logs do not, and the detector then skips those checks (and says so).
    dist = run.series.get("param_distance") if run.format == "unstuck" else None
    snr = run.series.get("grad_snr") if run.format == "unstuck" and label == "train" else None
    recorded = replay.detector_options if replay is not None else {}
    opts = {"distance_signal": dist is not None, **recorded, **dict(options)}
    detector = PlateauDetector(label, **opts)
    decisions: list[_Decision] = []
    live_cadence = replay is not None and label in ("train", "val")
    if replay is not None and label == "train":
        chunks = replay.chunks(steps)
    else:
        chunks = [slice(i, i + 1) for i in range(int(steps.size))]
    was_finite = True
    after = -math.inf  # the last step of the previous update
    for chunk in chunks:
        chunk_steps, chunk_values = steps[chunk], values[chunk]
        last = int(chunk_steps[-1])
        distance = _samples_between(dist, after, last)
        snr_samples = _samples_between(snr, after, last)
        gradient_snr = None if snr_samples is None else float(snr_samples[1][-1])
        after = last
        before = detector.state
        state = detector.update_many(
            chunk_steps.tolist(),
            chunk_values.tolist(),
            distance=distance,
            gradient_snr=gradient_snr,
        )
        finite = bool(np.all(np.isfinite(chunk_values)))
        if live_cadence or state != before or (was_finite and not finite):
            current = detector.current
            decisions.append(
                _Decision(
                    last,
                    label,
                    state,
                    primitive(detector.stats()),
                    None if current is None else dataclasses.replace(current),
                )
            )
        was_finite = finite
    if steps.size and (not decisions or decisions[-1].step != int(steps[-1])):
        decisions.append(
            _Decision(int(steps[-1]), label, detector.state, primitive(detector.stats()))
        )
    return detector, decisions


def _samples_between(
    pair: tuple[np.ndarray, np.ndarray] | None, after: float, last: int
) -> tuple[list[int], list[float]] | None:
    """The samples of ``pair`` taken in ``(after, last]``: since the previous update, as the
    live run's frame held them."""
    if pair is None:
        return None
    lo = int(np.searchsorted(pair[0], after, side="right"))
    hi = int(np.searchsorted(pair[0], last, side="right"))
    if hi <= lo:
        return None
    return pair[0][lo:hi].tolist(), pair[1][lo:hi].tolist()


def _evidence_series(run: RunData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if run.format == "unstuck":
        references = set(run.meta.get(REFERENCE_SERIES_KEY) or ())
        return {n: s for n, s in run.series.items() if n not in references}
    out = {n: run.series[n] for n in LOG_EVIDENCE if n in run.series}
    out.update({n: s for n, s in run.series.items() if n.startswith("lr/")})
    if "loss" in run.series:
        steps, values = run.series["loss"]
        out["nonfinite_loss"] = (steps, (~np.isfinite(values)).astype(np.float64))
    return out


def _restore_left_out(findings: list[Finding], left_out: frozenset[str]) -> list[Finding]:
    """Drop the left-out rules' findings and undo the demotions they caused."""
    out = []
    for f in findings:
        if f.cause in left_out:
            continue
        explained = f.evidence.get("explained_by")
        if isinstance(explained, list) and explained:
            kept = [c for c in explained if c not in left_out]
            if len(kept) != len(explained):
                evidence = {
                    k: v
                    for k, v in f.evidence.items()
                    if k not in ("explained_by", "unexplained_confidence")
                }
                confidence = f.confidence
                if kept:
                    evidence["explained_by"] = kept
                    evidence["unexplained_confidence"] = f.evidence.get("unexplained_confidence")
                else:
                    before = f.evidence.get("unexplained_confidence")
                    confidence = (
                        float(before)
                        if isinstance(before, (int, float))
                        else min(f.confidence / EXPLAINED_FACTOR, 1.0)
                    )
                f = dataclasses.replace(f, confidence=confidence, evidence=evidence)
        out.append(f)
    return out


def analyze(run: RunData, *, detector_options: Mapping[str, Any] | None = None) -> RunData:
    """Detect plateaus on every loss-like series of ``run`` and diagnose what its series allow.

    Fills ``run.plateaus``, ``run.findings`` and ``run.meta["analysis"]`` (per-series points,
    final state and plateau count; the rules that ran, those left out and why, and those whose
    inputs the log lacks). Returns ``run``.

    >>> from unstuck.analyze import load
    >>> run = analyze(load("logs/trainer_state.json"))  # doctest: +SKIP
    >>> [(p.series, p.start, p.end) for p in run.plateaus]  # doctest: +SKIP
    """
    options = dict(detector_options or {})
    rules = all_rules()
    left_out = frozenset() if run.format == "unstuck" else frozenset(LEFT_OUT_ON_LOGS)
    evidence_series = _evidence_series(run)
    replay = store_replay(run)
    if replay is not None:
        evidence_series = replay.evidence_series(evidence_series)
    plateaus: list[Plateau] = []
    decisions: list[_Decision] = []
    per_series: dict[str, dict[str, Any]] = {}
    for name in loss_series(run):
        detector, changes = _detect(name, run, options, replay)
        steps, values = run.series[name]
        plateaus += detector.plateaus
        decisions += changes
        per_series[name] = {
            "label": SERIES_LABELS.get(name, name),
            "episodes": _episodes(changes, int(steps[-1]) if steps.size else 0),
            "nonfinite": int((~np.isfinite(values)).sum()),
            "first_step": int(steps[0]) if steps.size else None,
            "last_step": int(steps[-1]) if steps.size else None,
            "final_state": detector.state,
            "plateaus": len(detector.plateaus),
            "too_few_points": bool(detector.n_points < MIN_PLATEAU_POINTS),
        }
    best: dict[tuple[str, str], Finding] = {}
    ran: set[str] = set()
    missing: dict[str, list[str]] = {}
    log = FindingLog()  # a store replays the live run's roots: earlier confident findings
    carried = _carried_findings(run, replay, evidence_series, rules)
    for d in sorted(decisions, key=lambda d: (d.step, d.series)):
        while carried and carried[0].step <= d.step:
            # A live finding whose inputs the store does not hold comes in at its own step:
            # it is reported, and it explains later symptoms as it did live.
            f = carried.pop(0)
            log.record([f], f.step)
            _keep_best(best, f)
        extra: dict[str, Any] = {
            "detector_state": d.state,
            "detector_series": d.series,
            "detector_stats": d.stats,
        }
        roots: frozenset[str] = frozenset()
        if replay is not None:
            extra = {**replay.extras(d.step, d.state, d.plateau), **extra}
            roots = log.roots(d.step)
        ev = _build(evidence_series, d.step, extra)
        continuous_only = d.state not in DIAGNOSE_ON
        for code, rule in rules.items():
            if code in left_out or (continuous_only and not rule.continuous):
                continue
            if rule.applicable(ev):
                ran.add(code)
        found = _restore_left_out(
            run_rules(ev, continuous_only=continuous_only, known_roots=roots), left_out
        )
        if replay is not None:
            log.record(found, d.step)
        for f in found:
            _keep_best(best, f if f.series == d.series else dataclasses.replace(f, series=d.series))
    for f in carried:  # recorded after the last point the store holds
        _keep_best(best, f)
    final_extra: dict[str, Any] = {"detector_state": "", "detector_series": ""}
    if replay is not None:
        final_extra = {**replay.extras(_last_step(run), "", None), **final_extra}
    final_ev = _build(evidence_series, _last_step(run), final_extra)
    for code, rule in rules.items():
        if code not in ran and code not in left_out:
            missing[code] = sorted(
                n for n in rule.requires if not inputs_present(final_ev, frozenset({n}))
            )
    notes = run.meta.setdefault("notes", [])
    for name in loss_series(run):
        note = _never_learned(name, SERIES_LABELS.get(name, name), run.series[name][1])
        if note is not None:
            notes.append(note)
    notes.extend(_constant_metrics(run))
    if run.format != "unstuck":  # a store has the update ratios and SNR: the rules say more
        ended = _schedule_ended(per_series.get("loss"), final_ev)
        if ended is not None and ("converged", "train") not in best:
            notes.append(ended)
        creep = _creeping(per_series.get("loss"), final_ev)
        if creep is not None:
            notes.append(creep)
    run.plateaus = sorted(plateaus, key=lambda p: (p.start, p.series))
    run.findings = sorted(best.values(), key=lambda f: (-f.confidence, f.cause, f.series))
    run.meta["analysis"] = {
        "series": per_series,
        "rules_run": sorted(ran),
        "rules_left_out": {c: LEFT_OUT_ON_LOGS[c] for c in sorted(left_out)},
        "rules_missing_inputs": {c: m for c, m in sorted(missing.items()) if m},
        "min_plateau_points": MIN_PLATEAU_POINTS,
        "evidence": sorted(evidence_series),
        "recorded_live": run.meta.pop("analysis_carried", []),
        "replayed": replay is not None,
    }
    if replay is not None and replay.rolled_back:
        run.meta.setdefault("notes", []).append(
            "the live run rolled back actions; the store keeps the steps they undid, so this "
            "replay can differ from what the live run decided after them"
        )
    return run


# A run that never left its starting level is "never learned", a fact the log shows, not a cause
# it can name: an LR far too low, dead units, a broken loss or labels all look the same there.
# Never learned: the lowest block median of the series stays within 2 % of where it started
# (ours: a run that trains at all loses more than that in its first epochs; keras_braincnn_age's
# 5.7939 → 5.7912 over 1,000 epochs is 0.05 %).
NEVER_LEARNED_DROP = 0.02
NEVER_LEARNED_BLOCKS = 16  # block medians read for the lowest level reached
CHANCE_TOLERANCE = 0.01  # a level within 1 % of ln C is "at chance" for C classes
MAX_CLASSES = 1000


def _never_learned(name: str, label: str, values: np.ndarray) -> str | None:
    """A note when the series never left its starting level, naming chance level if it sits
    at ln C (cross-entropy of a uniform guess over C classes)."""
    x = values[np.isfinite(values)]
    if x.size < MIN_PLATEAU_POINTS:
        return None
    head = float(np.median(x[: max(INITIAL_POINTS, x.size // 20)]))
    per_block = max(1, x.size // NEVER_LEARNED_BLOCKS)
    usable = x[: per_block * (x.size // per_block)].reshape(-1, per_block)
    lowest = float(np.median(usable, axis=1).min())
    if head <= 0 or (head - lowest) / head >= NEVER_LEARNED_DROP:
        return None
    tail = float(np.median(x[-per_block:]))
    chance = ""
    classes = round(math.exp(head)) if head < math.log(MAX_CLASSES + 1) else 0
    # Only where ln C is the one class count within the tolerance: past ~15 classes ln C and
    # ln (C + 1) are closer than 1 %, and any loss "matches" some class count.
    near = [c for c in (classes - 1, classes, classes + 1) if c >= 2 and _at_chance(head, c)]
    if near == [classes]:
        chance = f", chance level for {classes} classes (ln {classes} = {math.log(classes):.4g})"
    return (
        f"the {label} loss ({name}) never left its starting level ({head:.4g} → {tail:.4g}"
        f"{chance}): the run did not learn, and the log cannot tell why (an LR far too low, "
        "dead units, a broken loss or labels)"
    )


def _schedule_ended(train: Mapping[str, Any] | None, ev: Evidence) -> str | None:
    """A note when the training loss ends flat under an LR annealed to a tenth of its peak:
    the schedule running out, which the loss alone cannot tell from convergence (``converged``
    is not named from a log there; docs/causes/converged.md)."""
    if train is None or train.get("final_state") not in FLAT_STATES:
        return None
    annealed = schedule_annealed(ev)
    if annealed is None:
        return None
    name, latest, peak = annealed
    return (
        f"the training loss ends flat while {name} is at {100 * latest / peak:.2g} % of its "
        f"peak ({latest:.3g} of {peak:.3g}): the LR schedule has run out; at {ANNEALED:g} of "
        "the peak or less a step lowers the loss by that fraction of what it could, so a flat "
        "loss here cannot be told from convergence from the log alone ('converged' is not named)"
    )


# A creep from the start: the whole run fell less than the detector's progress margin
# (2·DEFAULT_EPSILON in log units, ≈ 26 %) while the detector still sees a significant fall.
CREEP_DROP = 2 * DEFAULT_EPSILON


def _creeping(train: Mapping[str, Any] | None, ev: Evidence) -> str | None:
    """A note when the training loss creeps down from its start at a constant LR: too small an
    LR or too short a run, which a log at one LR cannot tell apart (``lr_too_low`` has no log
    reading for this reason; docs/causes/lr_too_low.md)."""
    if train is None or train.get("final_state") != "slow" or not lr_never_changed(ev):
        return None
    drop = loss_drop(ev)
    if drop is None or not 0 < drop[2] < CREEP_DROP:
        return None
    head, level, _ = drop
    return (
        f"the training loss still creeps down{lr_text(ev)}, constant, and fell only "
        f"{1 - level / head:.0%} over the run ({head:.3g} → {level:.3g}): a larger LR or more "
        "steps would both take it further, and a log at one LR cannot tell which (while steps "
        "are small the loss follows LR × steps), so no cause is named"
    )


def _at_chance(level: float, classes: int) -> bool:
    return abs(level - math.log(classes)) <= CHANCE_TOLERANCE * math.log(classes)


def _constant_metrics(run: RunData) -> list[str]:
    """Accuracy-like series that never changed: a network predicting one thing throughout."""
    notes = []
    for name, (_, values) in sorted(run.series.items()):
        low = name.lower()
        if "acc" not in low or values.size < MIN_PLATEAU_POINTS:
            continue
        finite = values[np.isfinite(values)]
        if finite.size >= MIN_PLATEAU_POINTS and float(np.ptp(finite)) == 0.0:
            notes.append(
                f"{name} is {float(finite[0]):.6g} at all {finite.size} points: the model's "
                "predictions never changed"
            )
    return notes


def _keep_best(best: dict[tuple[str, str], Finding], finding: Finding) -> None:
    """Keep each (cause, series) once, at its highest confidence."""
    key = (finding.cause, finding.series)
    if key not in best or finding.confidence > best[key].confidence:
        best[key] = finding


def _carried_findings(
    run: RunData,
    replay: StoreReplay | None,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    rules: Mapping[str, Any],
) -> list[Finding]:
    """The live findings of a Guard's store that no replay can redo: those of rules whose
    inputs (per-sample losses, activation summaries, optimizer-state statistics) the live run
    read from its frames but the store does not hold. Marked ``recorded_live`` in evidence."""
    if replay is None:
        return []
    recorded = (run.meta.get("recorded") or {}).get("findings") or []
    final = _build(series, _last_step(run), replay.reachable(_last_step(run)))
    unreplayable = {code for code, rule in rules.items() if not rule.applicable(final)}
    out = []
    for data in recorded:
        try:
            finding = Finding.from_dict(data)
        except (KeyError, TypeError, ValueError):
            continue
        if finding.cause in unreplayable:
            evidence = {**finding.evidence, "recorded_live": True}
            out.append(dataclasses.replace(finding, evidence=evidence))
    run.meta.setdefault("analysis_carried", sorted({f.cause for f in out}))
    return sorted(out, key=lambda f: f.step)


def _episodes(changes: list[_Decision], last: int) -> list[dict[str, Any]]:
    """The stretches a series spent in an :data:`EPISODE_STATES` state: ``state``, ``start``
    (the step the detector entered it), ``end`` (the step it left it; None when still in it at
    the series' last step) and ``last`` (that last step)."""
    out: list[dict[str, Any]] = []
    for d in changes:
        if out and out[-1]["end"] is None and d.state != out[-1]["state"]:
            out[-1]["end"] = d.step
        if d.state in EPISODE_STATES and (
            not out or out[-1]["end"] is not None or out[-1]["state"] != d.state
        ):
            out.append({"state": d.state, "start": d.step, "end": None, "last": last})
    return out


def _last_step(run: RunData) -> int:
    ends = [int(s[-1]) for s, _ in run.series.values() if s.size]
    return max(ends) if ends else 0


def _build(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]], step: int, extra: Mapping[str, Any]
) -> Evidence:
    builder = EvidenceBuilder()
    loss = series.get("loss")
    if loss is not None:
        # The run's starting level, as the Guard keeps it for good while its history forgets.
        head = loss[1][: int(np.searchsorted(loss[0], step, side="right"))]
        head = head[np.isfinite(head)][:INITIAL_POINTS]
        if head.size >= INITIAL_POINTS:
            builder.set("loss_initial", float(np.median(head)))
    for name, pair in series.items():
        steps, values = _upto(pair, step)
        if steps:
            builder.add_series(name, steps, values)
    return builder.build(step, extra)


def _finite(value: Any) -> Any:
    """JSON without NaN/Infinity tokens (strict parsers reject them): non-finite -> None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def summary(run: RunData, report: str | None = None) -> dict[str, Any]:
    """What ``unstuck analyze --json`` prints: the analysis of ``run`` as plain JSON values."""
    analysis = run.meta.get("analysis", {})
    analyzed = loss_series(run)
    order = analyzed + sorted(n for n in run.series if n not in analyzed)
    series = []
    for name in order:
        steps = run.series[name][0]
        entry: dict[str, Any] = {
            "name": name,
            "points": int(steps.size),
            "first_step": int(steps[0]) if steps.size else None,
            "last_step": int(steps[-1]) if steps.size else None,
        }
        entry.update(analysis.get("series", {}).get(name, {}))
        series.append(entry)
    out = {
        "source": run.source,
        "format": run.format,
        "step_unit": run.meta.get("step_unit", "step"),
        "series": series,
        "plateaus": [p.to_dict() for p in run.plateaus],
        "findings": [f.to_dict() for f in run.findings],
        "rules_run": analysis.get("rules_run", []),
        "rules_left_out": analysis.get("rules_left_out", {}),
        "rules_missing_inputs": analysis.get("rules_missing_inputs", {}),
        "min_plateau_points": analysis.get("min_plateau_points", MIN_PLATEAU_POINTS),
        "names": run.meta.get("names", {}),
        "notes": list(run.meta.get("notes", [])),
        "recorded": run.meta.get("recorded"),
        "replayed": bool(analysis.get("replayed")),
        "recorded_live": list(analysis.get("recorded_live", [])),
        "report": report,
    }
    result: dict[str, Any] = _finite(primitive(out))
    return result
