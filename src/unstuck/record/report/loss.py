"""The Loss section: train and validation loss, a "without unstuck" baseline, plateaus, actions."""

from __future__ import annotations

import numpy as np

from unstuck.record.report.doc import Doc, charted_actions, outcome_colour
from unstuck.record.report.series import plot_xy, positive, smooth, smoothing_span
from unstuck.record.report.svg import Chart
from unstuck.record.report.tables import action_hover
from unstuck.record.report.text import hover, note, plural

__all__ = [
    "COMPARE_SERIES",
    "LOSS_SERIES",
    "loss_section",
    "mark_actions",
    "shade_plateaus",
]

LOSS_SERIES = {"train": "loss", "val": "val_loss"}
# The same training without unstuck, recorded beside the guarded run (``unstuck demo`` does):
# drawn grey and dashed as the baseline the rescue is measured against.
COMPARE_SERIES = {"train": "compare/loss", "val": "compare/val_loss"}
LABELS = {"train": "train loss", "val": "validation loss"}
COMPARE_LABELS = {"train": "without unstuck", "val": "without unstuck (validation)"}
SERIES_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e"}
COMPARE_COLOUR = "#7f7f7f"
COMPARE_DASH = {"train": "7 4", "val": "2 3"}
PLATEAU_FILLS = {"train": "rgba(31,119,180,0.13)", "val": "rgba(255,127,14,0.13)"}
OTHER_FILL = "rgba(127,127,127,0.13)"
LABEL_ROWS = {"train": 0, "val": 1}  # a plateau label's line: train and val ones can overlap
RAW_OPACITY = 0.35  # the raw train loss, drawn light under its smoothed line
MARKERS_UP_TO = 50  # a line of at most this many points gets a dot on each (epoch logs)


def loss_section(doc: Doc) -> None:
    run = doc.run
    present = {k: n for k, n in LOSS_SERIES.items() if n in run.series}
    if not present:
        doc.empty("Loss", "No training or validation loss series in this run.")
        return
    compare = {k: n for k, n in COMPARE_SERIES.items() if n in run.series}
    log = positive(run.series[n][1] for n in [*present.values(), *compare.values()])
    chart = Chart(
        doc.chart_id(),
        "loss",
        x_title=doc.x_name,
        x_range=doc.x_range,
        y_title="loss",
        y_log=log,
        height=460,
    )
    notes: list[str] = []
    curve: tuple[np.ndarray, np.ndarray] | None = None  # where the action diamonds sit
    for kind, name in present.items():
        doc.used.add(name)
        steps, values = run.series[name]
        bad = int((~np.isfinite(values)).sum())
        if bad:
            notes.append(f"{name}: {plural(bad, 'non-finite value')} (gaps in the line).")
        colour, label = SERIES_COLOURS[kind], LABELS[kind]
        span = smoothing_span(int(steps.size)) if kind == "train" else 0
        x, y = plot_xy(steps, values)
        if span:
            smoothed = smooth(values, span, log)
            chart.line(x, y, colour=colour, label=f"{label} (raw)", width=1, opacity=RAW_OPACITY)
            sx, sy = plot_xy(steps, smoothed)
            chart.line(
                sx,
                sy,
                colour=colour,
                label=f"{label} (smoothed)",
                title=f"{label}, centred moving average over {span} {doc.x_name}s",
                width=2.2,
                cls="series smoothed",
            )
            curve = curve or (steps, smoothed)
        else:
            chart.line(x, y, colour=colour, label=label, markers=x.size <= MARKERS_UP_TO)
            curve = curve or (steps, values)
    for kind, name in compare.items():
        doc.used.add(name)
        steps, values = run.series[name]
        span = smoothing_span(int(steps.size)) if kind == "train" else 0
        x, y = plot_xy(steps, smooth(values, span, log) if span else values)
        how = f", centred moving average over {span} {doc.x_name}s" if span else ""
        chart.line(
            x,
            y,
            colour=COMPARE_COLOUR,
            label=COMPARE_LABELS[kind],
            title=f"{COMPARE_LABELS[kind]}: the same training with no rescue ({name}{how})",
            dash=COMPARE_DASH[kind],
            width=1.8,
            markers=x.size <= MARKERS_UP_TO,
            cls="series compare",
        )
    shade_plateaus(doc, chart)
    mark_actions(doc, chart, curve, log)
    skipped = sum(a.outcome == "skipped" for a in run.actions)
    if skipped:
        notes.append(
            f"{plural(skipped, 'proposed action')} skipped (not drawn); the Actions table says why."
        )
    if not run.plateaus:
        notes.append("No plateau was detected.")
    doc.section("Loss", chart.render() + "\n" + "\n".join(note(n) for n in notes))


def shade_plateaus(doc: Doc, chart: Chart) -> None:
    """Each plateau as a band in its series' colour (an open one runs to the last step)."""
    for p in doc.run.plateaus:
        end = p.end if p.end is not None else doc.last_step
        fill = PLATEAU_FILLS.get(p.series, OTHER_FILL)
        title = hover(
            f"{p.series} plateau ({p.kind}), {doc.x_name}s {p.start}–"
            f"{'open' if p.end is None else p.end}, confidence {p.confidence:.2f}"
        )
        chart.span(
            p.start,
            max(end, p.start),
            fill=fill,
            title=title,
            text=f"{p.series} {p.kind}",
            cls="plateau",
            data={"series": p.series, "start": str(p.start), "end": str(end)},
            row=LABEL_ROWS.get(p.series, len(LABEL_ROWS)),
        )
        chart.key(f"{p.series} plateau", fill, "box")


def mark_actions(
    doc: Doc, chart: Chart, curve: tuple[np.ndarray, np.ndarray] | None, log: bool
) -> None:
    """A dotted line per action at the action's own step, with a diamond on ``curve`` (at the
    top without one), coloured by outcome; the hover text says what, why and how it went."""
    cs = cv = np.zeros(0)
    if curve is not None:
        steps, values = curve
        ok = np.isfinite(values) & ((values > 0) if log else True)
        cs, cv = steps[ok].astype(np.float64), values[ok]
    for a in charted_actions(doc.run.actions):
        y = None
        if cs.size:
            y = float(np.interp(a.step, cs, np.log(cv) if log else cv))
            y = float(np.exp(y)) if log else y
        colour = outcome_colour(a.outcome)
        chart.vline(
            a.step,
            colour=colour,
            title=action_hover(a, doc.x_name),
            y=y,
            cls="action",
            data={"step": str(a.step), "outcome": a.outcome},
        )
        chart.key(f"action: {a.outcome.replace('_', ' ')}", colour, "diamond")
