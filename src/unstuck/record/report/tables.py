"""The Findings and Actions sections (tables), and the action text the charts' markers share."""

from __future__ import annotations

import math
from typing import Any

from unstuck.record.report.doc import Doc, outcome_colour
from unstuck.record.report.text import (
    drop_missing_clauses,
    esc,
    fmt_number,
    hover,
    kv_list,
    note,
    without_missing,
)
from unstuck.types import ActionRecord, Finding

__all__ = ["action_hover", "actions_section", "findings_section", "skip_reason", "verdict"]

VERDICT_KEYS = ("verdict_change", "verdict_stderr", "verdict_log_scale")
# where a skipped action's reason may be kept (the engine writes evidence["skipped_because"])
SKIP_REASON_KEYS = ("skipped_because", "skip_reason", "why_not", "reason")
NO_REASON = "no reason recorded"
UNDECIDED = "undecided (too few points to compare)"
NOT_YET = ("pending", "probing", "unverified")  # outcomes with no verdict to show yet


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def skip_reason(a: ActionRecord) -> str:
    """Why a skipped action was not taken, from its evidence or params; else NO_REASON."""
    for source in (a.evidence, a.params):
        for key in SKIP_REASON_KEYS:
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value
    return NO_REASON


def verdict(a: ActionRecord) -> str:
    """``Δ log loss −0.056 ± 0.0027 (loss ×0.945)``; a skip with its reason; a verdict whose
    numbers are not finite (too few points after the action) as undecided."""
    if a.outcome == "skipped":
        return f"skipped: {skip_reason(a)}"
    change = _number(a.evidence.get("verdict_change"))
    stderr = _number(a.evidence.get("verdict_stderr"))
    if change is None:
        return "not verified yet" if a.outcome in NOT_YET else ""
    if not math.isfinite(change) or (stderr is not None and not math.isfinite(stderr)):
        return UNDECIDED
    log = bool(a.evidence.get("verdict_log_scale"))
    err = f" ± {fmt_number(stderr)}" if stderr is not None else ""
    text = f"Δ {'log ' if log else ''}loss {fmt_number(change)}{err}"
    if log:
        text += f" (loss ×{math.exp(change):.3g})"
    return text


def _reason(a: ActionRecord) -> str:
    return drop_missing_clauses(a.reason) if a.reason.strip() else NO_REASON


def action_label(a: ActionRecord) -> str:
    return str(a.params.get("label", a.name))


def action_hover(a: ActionRecord, x_name: str) -> str:
    """An action marker's hover text: what, when, what became of it, and why."""
    lines = [f"{x_name} {a.step}: {action_label(a)} ({a.name}) → {a.outcome.replace('_', ' ')}"]
    judged = verdict(a)
    if judged:
        lines.append(f"verdict: {judged}")
    lines.append(f"because {_reason(a)}")
    return hover(*lines)


def _finding_row(f: Finding) -> str:
    remedies = "".join(
        f"<li><code>{esc(r.action)}</code>{' (automatic)' if r.automatic else ''}"
        f"{': ' + esc(r.note) if r.note else ''}</li>"
        for r in f.remedies
    )
    details = (
        f"<details><summary>{len(f.evidence)} values</summary>{kv_list(f.evidence)}"
        + (f'<div>remedies:</div><ul class="kv">{remedies}</ul>' if remedies else "")
        + "</details>"
    )
    return (
        f'<tr><td class="num">{f.step}</td><td>{esc(f.series)}</td>'
        f"<td><code>{esc(f.cause)}</code></td>"
        f'<td class="num">{f.confidence:.2f}</td><td>{esc(f.summary)}</td>'
        f"<td>{details}</td></tr>"
    )


def findings_section(doc: Doc) -> None:
    """Every finding; shown on logs too (the analysis ran, so none found is news)."""
    findings = doc.run.findings
    if not findings:
        doc.section("Findings", note("No findings: no rule fired on this run."))
        return
    rows = "\n".join(_finding_row(f) for f in findings)
    table = (
        f"<table><thead><tr><th>{esc(doc.x_name)}</th><th>series</th><th>cause</th>"
        "<th>confidence</th><th>summary</th><th>evidence</th></tr></thead><tbody>\n"
        f"{rows}\n</tbody></table>"
    )
    tip = note("unstuck.explain('<cause>') explains each cause and its remedies.")
    doc.section("Findings", table + "\n" + tip)


def actions_section(doc: Doc) -> None:
    actions = doc.run.actions
    if not actions:
        doc.empty("Actions", "No actions: unstuck changed nothing in this run.")
        return
    rows = []
    for a in actions:
        evidence = without_missing({k: v for k, v in a.evidence.items() if k not in VERDICT_KEYS})
        details = (
            f"<details><summary>params and evidence</summary>"
            f"{kv_list(without_missing(a.params))}{kv_list(evidence)}</details>"
        )
        verified = "" if a.verified_step is None else str(a.verified_step)
        reason = _reason(a)
        reason_cell = (
            esc(reason) if reason != NO_REASON else f'<span class="note">{NO_REASON}</span>'
        )
        rows.append(
            f'<tr data-outcome="{esc(a.outcome)}"><td class="num">{a.step}</td>'
            f"<td>{esc(action_label(a))}<br><code>{esc(a.name)}</code></td>"
            f'<td><span class="badge" style="background:{outcome_colour(a.outcome)}">'
            f"{esc(a.outcome.replace('_', ' '))}</span></td>"
            f'<td class="num">{esc(verified)}</td><td class="verdict">{esc(verdict(a))}</td>'
            f"<td>{reason_cell}</td><td>{details}</td></tr>"
        )
    table = (
        f"<table><thead><tr><th>{esc(doc.x_name)}</th><th>action</th><th>outcome</th>"
        "<th>verified at</th><th>verdict (after − before)</th><th>reason</th><th>details</th>"
        "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )
    tip = note(
        "Each action is judged after its horizon on the loss before and after it; "
        "one that made the loss clearly worse is rolled back with the full training state."
    )
    doc.section("Actions", table + "\n" + tip)
