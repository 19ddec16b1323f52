"""The Gradient norms section (a per-tensor heatmap and the total) and the Update/weight ratio."""

from __future__ import annotations

import numpy as np

from unstuck.record.report.doc import Doc
from unstuck.record.report.series import plot_xy, positive
from unstuck.record.report.svg import Chart, heatmap
from unstuck.record.report.text import natural_key, note

__all__ = ["MAX_HEATMAP_CELLS", "MAX_HEATMAP_COLUMNS", "grad_section", "update_ratio_section"]

# Steps per heatmap row; more are merged (geometric mean per bucket). The chart is ~800 units
# wide, so more columns would not show.
MAX_HEATMAP_COLUMNS = 600
# Rows × columns at most: the PNG holds a byte per cell, so this bounds it (150 KB before
# compression, 200 KB as base64 at worst) for a model with many tensors; columns are merged
# further to fit.
MAX_HEATMAP_CELLS = 150_000
MIN_HEATMAP_COLUMNS = 50  # never merge below this many columns, however many tensors
ROW_HEIGHT = 18  # units per heatmap row, within the bounds below
HEATMAP_HEIGHT = (220, 1400)
LINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _merge_columns(z: np.ndarray, steps: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` columns: each the mean of its bucket's finite log values (a geometric
    mean of the norms), headed by the bucket's first step."""
    if steps.size <= limit:
        return z, steps
    edges = np.linspace(0, steps.size, limit + 1).astype(np.int64)
    merged = np.full((z.shape[0], limit), np.nan)
    for j, (a, b) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist())):
        block = z[:, a:b]
        has = np.isfinite(block).any(axis=1)
        if has.any():
            merged[has, j] = np.nanmean(block[has], axis=1)
    return merged, steps[edges[:-1]]


def _row_title(name: str, values: np.ndarray, x_name: str) -> str:
    f = values[np.isfinite(values) & (values > 0)]
    if not f.size:
        return f"{name}: no positive gradient norm recorded"
    return (
        f"{name}: gradient norm median {np.median(f):.3g} (min {f.min():.3g}, max "
        f"{f.max():.3g}) over {f.size} {x_name}s"
    )


def grad_section(doc: Doc) -> None:
    run = doc.run
    layers = sorted((n for n in run.series if n.startswith("grad_norm/")), key=natural_key)
    total = run.series.get("grad_norm")
    if not layers and total is None:
        doc.empty("Gradient norms", "No gradient-norm series in this run.")
        return
    parts = []
    if layers:
        doc.used.update(layers)
        all_steps = np.unique(np.concatenate([run.series[n][0] for n in layers]))
        z = np.full((len(layers), all_steps.size), np.nan)
        for i, name in enumerate(layers):
            s, v = run.series[name]
            with np.errstate(divide="ignore", invalid="ignore"):
                logged = np.where(np.isfinite(v) & (v > 0), np.log10(np.abs(v)), np.nan)
            z[i, np.searchsorted(all_steps, s)] = logged
        limit = min(MAX_HEATMAP_COLUMNS, max(MIN_HEATMAP_COLUMNS, MAX_HEATMAP_CELLS // len(layers)))
        z, columns = _merge_columns(z, all_steps, limit)
        height = int(min(max(HEATMAP_HEIGHT[0], ROW_HEIGHT * len(layers) + 60), HEATMAP_HEIGHT[1]))
        parts.append(
            heatmap(
                doc.chart_id(),
                z,
                columns,
                [n.removeprefix("grad_norm/") for n in layers],
                [_row_title(n, run.series[n][1], doc.x_name) for n in layers],
                x_title=doc.x_name,
                colour_title="grad norm",
                height=height,
            )
        )
        parts.append(
            note(
                "Per-tensor gradient norm (log colour scale; rows in parameter order by name; "
                "grey: not recorded). A first layer far below the last one points at vanishing "
                "gradients. Hover a row for its range."
            )
        )
    if total is not None:
        doc.used.add("grad_norm")
        x, y = plot_xy(*total)
        chart = Chart(
            doc.chart_id(),
            "grad_norm",
            x_title=doc.x_name,
            x_range=doc.x_range,
            y_title="total grad norm",
            y_log=positive([y]),
            height=300,
        )
        chart.line(x, y, colour=LINE_COLOURS[0], label="grad_norm (total)")
        parts.append(chart.render())
    doc.section("Gradient norms", "\n".join(parts))


def update_ratio_section(doc: Doc) -> None:
    run = doc.run
    names = sorted((n for n in run.series if n.startswith("update_ratio")), key=natural_key)
    if not names:
        doc.empty("Update/weight ratio", "No update/weight ratio series in this run.")
        return
    ys = [run.series[n][1] for n in names]
    chart = Chart(
        doc.chart_id(),
        "update_ratio",
        x_title=doc.x_name,
        x_range=doc.x_range,
        y_title="‖Δw‖ / ‖w‖",
        y_log=positive(ys),
        height=340,
    )
    for i, name in enumerate(names):
        doc.used.add(name)
        x, y = plot_xy(*run.series[name])
        chart.line(
            x, y, colour=LINE_COLOURS[i % len(LINE_COLOURS)], label=name, markers=x.size <= 50
        )
    tip = note(
        "The size of one optimizer step relative to the weights. Far below 1e-3 the weights "
        "barely move (learning rate too low); far above 1e-2 the steps are noisy (too high)."
    )
    doc.section("Update/weight ratio", chart.render() + "\n" + tip)
