"""The Learning rate section: the user's schedule, unstuck's multiplier, their product, and the
optimizer's momentum when the run recorded it or unstuck changed it."""

from __future__ import annotations

import numpy as np

from unstuck.record.report.doc import Doc, charted_actions, outcome_colour
from unstuck.record.report.series import (
    forward_fill,
    hold_to,
    move_changes,
    plot_xy,
    positive,
    start_at,
)
from unstuck.record.report.svg import Chart
from unstuck.record.report.tables import action_hover
from unstuck.record.report.text import esc, natural_key, note
from unstuck.record.rundata import RunData
from unstuck.types import ActionRecord

__all__ = ["lr_section", "momentum_series"]

GROUP_COLOURS = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
EFFECTIVE_COLOUR = "#d62728"
MULTIPLIER_COLOUR = "#555555"
MOMENTUM_COLOUR = "#2ca02c"
# Series that hold the optimizer's momentum (``momentum/<group>`` too); the Guard records none
# today, so unstuck's add_momentum actions are drawn from their params when none is there.
MOMENTUM_NAMES = ("momentum", "optimizer_momentum")
MOMENTUM_ACTION = "add_momentum"
# outcomes after which unstuck's change was undone at the verified step
UNDONE = frozenset({"rolled_back", "restored", "control_kept", "interrupted"})


def _change_steps(actions: list[ActionRecord]) -> list[int]:
    """Steps where unstuck changed the training: each action, and the undoing of one."""
    steps = [int(a.step) for a in actions]
    steps += [int(a.verified_step) for a in actions if a.outcome in UNDONE and a.verified_step]
    return steps


def _mark(doc: Doc, chart: Chart, actions: list[ActionRecord]) -> None:
    for a in actions:
        chart.vline(
            a.step,
            colour=outcome_colour(a.outcome),
            title=action_hover(a, doc.x_name),
            cls="action",
            data={"step": str(a.step), "outcome": a.outcome},
        )


def momentum_series(run: RunData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The run's momentum series by name; else one rebuilt from unstuck's add_momentum actions
    (0 before, the action's momentum from its step, 0 again where it was undone)."""
    found = {
        n: run.series[n]
        for n in sorted(run.series, key=natural_key)
        if n in MOMENTUM_NAMES or n.startswith("momentum/")
    }
    if found:
        return found
    changes = [a for a in charted_actions(run.actions) if a.name == MOMENTUM_ACTION]
    if not changes:
        return {}
    points: list[tuple[int, float]] = [(0, 0.0)]
    for a in sorted(changes, key=lambda a: a.step):
        value = a.params.get("momentum", a.evidence.get("momentum_after"))
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        points.append((int(a.step), float(value)))
        if a.outcome in UNDONE and a.verified_step is not None:
            points.append((int(a.verified_step), 0.0))
    if len(points) < 2:
        return {}
    steps = np.asarray([p[0] for p in points], dtype=np.int64)
    values = np.asarray([p[1] for p in points], dtype=np.float64)
    return {"momentum (from unstuck's add_momentum actions)": (steps, values)}


def lr_section(doc: Doc) -> None:
    run = doc.run
    groups = sorted((n for n in run.series if n.startswith("lr/")), key=natural_key)
    mult = run.series.get("lr_multiplier")
    momentum = momentum_series(run)
    if not groups and mult is None and not momentum:
        doc.empty("Learning rate", "No learning-rate series in this run.")
        return
    actions = charted_actions(run.actions)
    parts: list[str] = []
    if groups or mult is not None:
        parts.append(_lr_chart(doc, groups, mult, actions))
        if groups and mult is not None:
            parts.append(
                note(
                    "lr/<group> is your schedule as recorded; lr_multiplier is unstuck's factor "
                    "over it; their product is the learning rate the optimizer used. The "
                    "multiplier is logged once per flush: its changes are drawn at the step "
                    "of the action that made them."
                )
            )
        elif doc.guarded and mult is None:
            parts.append(note("unstuck's lr_multiplier was not recorded in this run."))
    if momentum:
        parts.append(_momentum_chart(doc, momentum, actions))
    doc.section("Learning rate", "\n".join(parts))


def _lr_chart(
    doc: Doc,
    groups: list[str],
    mult: tuple[np.ndarray, np.ndarray] | None,
    actions: list[ActionRecord],
) -> str:
    run = doc.run
    if mult is not None:
        doc.used.add("lr_multiplier")
        mult = start_at(*move_changes(*mult, _change_steps(actions)), doc.first_step)
    primary: list[np.ndarray] = [run.series[n][1] for n in groups]
    products: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in groups:
        if mult is not None:
            at = np.union1d(run.series[name][0], mult[0])
            product = forward_fill(*run.series[name], at) * forward_fill(*mult, at)
            products[name] = (at, product)
            primary.append(product)
    on_right = bool(groups) and mult is not None
    if mult is not None and not groups:
        primary.append(mult[1])
    chart = Chart(
        doc.chart_id(),
        "lr",
        x_title=doc.x_name,
        x_range=doc.x_range,
        y_title="learning rate" if groups else "multiplier",
        y_log=positive(primary),
        y2_title="multiplier" if on_right else None,
        y2_log=mult is not None and positive([mult[1]]),
        height=400,
    )
    for i, name in enumerate(groups):
        doc.used.add(name)
        colour = GROUP_COLOURS[i % len(GROUP_COLOURS)]
        x, y = plot_xy(*hold_to(*run.series[name], doc.last_step))
        chart.line(x, y, colour=colour, label=f"{name} (schedule)", step=True)
        if name in products:
            ex, ey = plot_xy(*hold_to(*products[name], doc.last_step))
            chart.line(
                ex,
                ey,
                colour=EFFECTIVE_COLOUR if len(groups) == 1 else colour,
                label=f"{name} × lr_multiplier (effective)",
                width=2.5,
                step=True,
                cls="series effective",
            )
    if mult is not None:
        mx, my = plot_xy(*hold_to(*mult, doc.last_step))
        chart.line(
            mx,
            my,
            colour=MULTIPLIER_COLOUR,
            label="lr_multiplier (unstuck)",
            dash="6 4",
            right=on_right,
            step=True,
            cls="series multiplier",
        )
    _mark(doc, chart, actions)
    return chart.render()


def _momentum_chart(
    doc: Doc, momentum: dict[str, tuple[np.ndarray, np.ndarray]], actions: list[ActionRecord]
) -> str:
    chart = Chart(
        doc.chart_id(),
        "momentum",
        x_title=doc.x_name,
        x_range=doc.x_range,
        y_title="momentum",
        height=280,
    )
    for name, (steps, values) in momentum.items():
        doc.used.add(name)
        x, y = plot_xy(*hold_to(steps, values, doc.last_step))
        chart.line(x, y, colour=MOMENTUM_COLOUR, label=name, step=True, cls="series momentum")
    _mark(doc, chart, [a for a in actions if a.name == MOMENTUM_ACTION])
    rebuilt = not any(n in doc.run.series for n in momentum)
    text = (
        "The optimizer's momentum, rebuilt from unstuck's add_momentum actions (it applies "
        "only to plain SGD without momentum, so it was 0 before)."
        if rebuilt
        else "The optimizer's momentum as recorded."
    )
    return f"<h3>{esc('Momentum')}</h3>\n{chart.render()}\n{note(text)}"
