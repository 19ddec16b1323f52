"""The Probes section: LR range test curves, branch trial bars, every other value in a table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unstuck.record.report.doc import Doc
from unstuck.record.report.series import as_numbers, positive
from unstuck.record.report.svg import Chart, bar_chart
from unstuck.record.report.text import (
    esc,
    fmt_number,
    fmt_value,
    hover,
    kv_table,
    note,
    without_missing,
)

__all__ = ["probes_section"]

# A probe payload with an x list and a y list of equal length is drawn as a curve (an LR range
# test: ``factors``/``losses`` from unstuck's own, ``lrs``/``losses`` elsewhere); any further
# numeric list of that length (``smoothed``) is drawn beside it; the numbers below are marked.
PROBE_X_KEYS = ("lrs", "lr", "factors", "lr_factors", "multipliers")
PROBE_Y_KEYS = ("losses", "loss")
PROBE_SUGGESTION_KEYS = (
    "suggestion",
    "suggested_lr",
    "suggested_factor",
    "factor",
    "best_lr",
    "best_factor",
)
PROBE_DIVERGED_KEYS = ("diverged_at",)
BRANCH_WINNER_KEYS = ("winner", "best", "chosen")
CURVE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
SUGGESTION_COLOUR = "#2ca02c"
DIVERGED_COLOUR = "#d62728"
BAR_COLOUR = "#1f77b4"
WINNER_COLOUR = "#2ca02c"


def _probe_curve(doc: Doc, probe: Mapping[str, Any]) -> tuple[str, set[str]]:
    """A loss-against-LR curve from the first matching pair of equal-length numeric lists."""
    for xk in PROBE_X_KEYS:
        x = as_numbers(probe.get(xk))
        if x is None:
            continue
        for yk in PROBE_Y_KEYS:
            y = as_numbers(probe.get(yk))
            if y is None or y.size != x.size:
                continue
            used = {xk, yk}
            traces = [(yk, y)] + [
                (k, arr)
                for k, v in probe.items()
                if k not in used and (arr := as_numbers(v)) is not None and arr.size == x.size
            ]
            ys = [np.where(np.isfinite(v), v, np.nan) for _, v in traces]
            chart = Chart(
                doc.chart_id(),
                "probe",
                x_title=xk,
                y_title=yk,
                x_log=positive([x]),
                y_log=positive(ys),
                integer_x=False,
                height=340,
            )
            for i, ((key, _), values) in enumerate(zip(traces, ys)):
                used.add(key)
                chart.line(
                    x,
                    values,
                    colour=CURVE_COLOURS[i % len(CURVE_COLOURS)],
                    label=key,
                    markers=key == yk,
                )
            _mark(chart, probe, PROBE_SUGGESTION_KEYS, SUGGESTION_COLOUR)
            _mark(chart, probe, PROBE_DIVERGED_KEYS, DIVERGED_COLOUR)
            return chart.render(), used
    return "", set()


def _mark(chart: Chart, probe: Mapping[str, Any], keys: Sequence[str], colour: str) -> None:
    """A dashed vertical line at the first finite number among ``keys`` (kept in the table)."""
    for key in keys:
        value = probe.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                label = f"{key} {fmt_number(float(value))}"
                chart.vline(
                    float(value),
                    colour=colour,
                    title=label,
                    dash="6 4",
                    text=label,
                    cls="probe-mark",
                    data={"x": repr(float(value))},
                )
            return


def _probe_branches(doc: Doc, probe: Mapping[str, Any]) -> str:
    """Branch trials (``branches``: a list of {label, score, ...}) as a bar chart."""
    branches = probe.get("branches")
    if not isinstance(branches, list):
        return ""
    labels: list[str] = []
    scores: list[float | None] = []
    titles: list[str] = []
    for i, b in enumerate(branches):
        if not isinstance(b, Mapping):
            continue
        score = b.get("score")
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            continue
        label = str(b.get("label", b.get("name", f"branch {i}")))
        labels.append(label)
        scores.append(float(score) if math.isfinite(float(score)) else None)
        rest = {k: v for k, v in b.items() if k not in ("label", "score")}
        titles.append(hover(f"{label}: score {fmt_number(float(score))}", fmt_value(rest)))
    if not labels:
        return ""
    best = next((probe[k] for k in BRANCH_WINNER_KEYS if probe.get(k) is not None), None)
    colours = [
        WINNER_COLOUR if best is not None and lab == str(best) else BAR_COLOUR for lab in labels
    ]
    return bar_chart(doc.chart_id(), labels, scores, colours, titles, "score")


LANDSCAPE_CAUSES = ("saddle_point", "flat_region", "capacity_limit")  # read the curvature probe


def _landscape_finding(doc: Doc, step: object) -> str:
    """The landscape cause found at the probe's step (the decision it informed), if any."""
    found = [f for f in doc.run.findings if f.cause in LANDSCAPE_CAUSES and f.step == step]
    if not found:
        return ""
    best = max(found, key=lambda f: f.confidence)
    return f"{best.cause} {best.confidence:.2f} (see Findings)"


def probes_section(doc: Doc) -> None:
    probes = doc.run.probes
    if not probes:
        doc.empty("Probes", "No probes ran (LR range test, branch trials, curvature).")
        return
    parts = []
    for probe in probes:
        name = str(probe.get("probe", probe.get("kind", "probe")))
        step = probe.get("step")
        heading = f"{name} at {doc.x_name} {step}" if step is not None else name
        curve, used = _probe_curve(doc, probe)
        bars = _probe_branches(doc, probe)
        if bars:
            used.add("branches")
        rest = without_missing(
            {k: v for k, v in probe.items() if k not in used and k not in ("probe", "step")}
        )
        if name == "curvature" and "classification" in rest:
            # The probe's own first reading used the LR of that moment; the rules judge the same
            # numbers at the effective step (momentum, unstuck's multiplier) and the gradient
            # noise. One verdict on the page: the finding's, where one was made from this probe.
            rest.pop("classification")
            verdict = _landscape_finding(doc, step)
            if verdict:
                rest = {"diagnosis": verdict, **rest}
        parts.append(f"<h3>{esc(heading)}</h3>")
        parts += [p for p in (curve, bars) if p]
        if rest:
            parts.append(kv_table(rest))
        elif not (curve or bars):
            parts.append(note("No values recorded."))
    doc.section("Probes", "\n".join(parts))
