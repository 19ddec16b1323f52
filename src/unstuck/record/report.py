"""The HTML report: one self-contained file that shows what a run did and what unstuck found.

``write_report(run, path)`` renders a :class:`~unstuck.record.rundata.RunData` — from unstuck's
run store (:func:`~unstuck.record.rundata.load_run`) or from any log ``unstuck analyze`` reads —
into a single HTML file. plotly.js is embedded inline once, so the file opens offline, from a
mail attachment or a CI artifact, with no network at all. Sections (each omitted, with a one-line
note, when the run holds no data for it): the training and validation loss with plateaus shaded
and actions marked, the learning rate, per-layer gradient norms as a heatmap, update/weight
ratios, the findings with their evidence, the actions with their verification, and probe
results (LR range tests, branch trials, curvature).

Every string that comes from the run (series names, metadata, summaries, evidence, reasons,
paths) is HTML-escaped, in the page and inside the plots (plotly.js renders a subset of HTML in
labels), and the plot JSON is written with ``<``, ``>`` and ``&`` as ``\\u`` escapes, so no
text can close the ``<script>`` it sits in. See ``docs/report.md``.
"""

from __future__ import annotations

import datetime
import html
import importlib
import math
import os
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unstuck.record.rundata import RunData
from unstuck.types import ActionRecord, Finding, Plateau

__all__ = ["MAX_POINTS", "REPORT_FILENAME", "write_report"]

REPORT_FILENAME = "report.html"  # the name used when write_report is given a directory
MAX_POINTS = 5000  # a plotted series longer than this is downsampled (min and max per bucket)
MAX_HEATMAP_COLUMNS = 1000  # steps per heatmap row; more are merged (geometric mean per bucket)
MAX_LIST_ITEMS = 8  # items of a list or dict shown in an evidence / probe value
MAX_TEXT = 400  # characters of one evidence / probe string shown
WRAP = 90  # characters per line of hover text
INSTALL_HINT = "pip install 'unstuck[report]'"

OUTCOME_COLOURS = {
    "kept": "#2ca02c",
    "rolled_back": "#d62728",
    "pending": "#7f7f7f",
    "failed": "#000000",
    "restored": "#17becf",  # a probe (range test) measured, then the state before it came back
    "control_kept": "#bcbd22",  # a branch trial found nothing better than changing nothing
    "interrupted": "#ff7f0e",
    "unverified": "#c7c7c7",  # the run ended before the horizon
    "probing": "#aec7e8",
}
OTHER_OUTCOME = "#9467bd"
SERIES_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e"}
PLATEAU_FILLS = {"train": "rgba(31,119,180,0.13)", "val": "rgba(255,127,14,0.13)"}
OTHER_FILL = "rgba(127,127,127,0.13)"
LOSS_SERIES = {"train": "loss", "val": "val_loss"}
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
PLOT_CONFIG = '{"responsive": true, "displaylogo": false, "typesetMath": false}'

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #222; margin: 0 auto; max-width: 1200px; padding: 1em 2em 3em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { margin-bottom: 0.3em; }
.source { color: #555; margin-top: 0; word-break: break-all; }
.note { color: #666; font-style: italic; }
table { border-collapse: collapse; width: 100%; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
table.kv { width: auto; } table.kv th { font-weight: normal; font-family: monospace; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { border-radius: 3px; color: #fff; padding: 1px 6px; white-space: nowrap; }
ul.kv { margin: 0.3em 0; padding-left: 1.2em; font-size: 13px; }
ul.kv code { color: #333; }
details summary { cursor: pointer; color: #1f5fa8; }
.plot { width: 100%; }
footer { margin-top: 3em; color: #888; font-size: 12px; }
"""


# --------------------------------------------------------------------------- text helpers


def _esc(value: Any) -> str:
    """HTML-escape anything the run supplied (quotes too: some of it lands in attributes)."""
    return html.escape(str(value), quote=True)


def _fmt_number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _fmt_value(value: Any, depth: int = 0) -> str:
    """A compact, unescaped one-line rendering of an evidence or probe value."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _fmt_number(value)
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
    if depth > 2:
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())
        shown = ", ".join(f"{k}: {_fmt_value(v, depth + 1)}" for k, v in items[:MAX_LIST_ITEMS])
        more = f", … ({len(items)} keys)" if len(items) > MAX_LIST_ITEMS else ""
        return "{" + shown + more + "}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_fmt_value(v, depth + 1) for v in value[:MAX_LIST_ITEMS])
        more = f", … ({len(value)} items)" if len(value) > MAX_LIST_ITEMS else ""
        return "[" + shown + more + "]"
    return str(value)


def _kv_list(data: Mapping[str, Any]) -> str:
    """``key: value`` lines as an escaped HTML list."""
    if not data:
        return '<span class="note">none</span>'
    rows = "".join(
        f"<li><code>{_esc(k)}</code>: {_esc(_fmt_value(v))}</li>" for k, v in data.items()
    )
    return f'<ul class="kv">{rows}</ul>'


def _kv_table(data: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt_value(v))}</td></tr>" for k, v in data.items()
    )
    return f'<table class="kv">{rows}</table>'


def _plot_text(*lines: str) -> str:
    """Hover / label text for plotly: each line escaped (plotly.js renders HTML tags)."""
    out: list[str] = []
    for line in lines:
        out += [_esc(part) for part in textwrap.wrap(line, WRAP) or [""]]
    return "<br>".join(out)


def _script_safe(json_text: str) -> str:
    """JSON that cannot end its ``<script>``: ``<``, ``>``, ``&`` only occur inside strings
    in JSON, where their ``\\u`` escapes mean the same characters."""
    return (
        json_text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _natural_key(name: str) -> list[Any]:
    """``layers.10`` after ``layers.2``: digits compare as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


# --------------------------------------------------------------------------- numeric helpers


def _downsample(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``MAX_POINTS`` points: the min and the max of each of ``MAX_POINTS // 2``
    buckets (so spikes and dips survive), the first and last point, and the first non-finite
    point of a bucket (so a NaN still shows as a gap)."""
    n = int(steps.size)
    if n <= MAX_POINTS:
        return steps, values
    finite = np.isfinite(values)
    low = np.where(finite, values, np.inf)
    high = np.where(finite, values, -np.inf)
    edges = np.linspace(0, n, MAX_POINTS // 2 + 1).astype(np.int64)
    keep = [0, n - 1]
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        if b <= a:
            continue
        seg = finite[a:b]
        if seg.any():
            keep += [a + int(np.argmin(low[a:b])), a + int(np.argmax(high[a:b]))]
        if not seg.all():
            keep.append(a + int(np.argmin(seg)))
    index = np.unique(np.asarray(keep, dtype=np.int64))
    return steps[index], values[index]


def _plot_xy(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Downsampled, with non-finite values as gaps (NaN) and steps in a type plotly.js reads."""
    s, v = _downsample(steps, values)
    v = np.where(np.isfinite(v), v, np.nan)
    big = bool(s.size) and (int(s.max()) >= 2**31 or int(s.min()) < -(2**31))
    return (s.astype(np.float64) if big else s.astype(np.int32)), v.astype(np.float64)


def _positive(values: Iterable[np.ndarray]) -> bool:
    """True when every finite value is > 0 and there is at least one: a log axis fits."""
    seen = False
    for v in values:
        f = v[np.isfinite(v)]
        if f.size:
            seen = True
            if (f <= 0).any():
                return False
    return seen


def _as_numbers(value: Any) -> np.ndarray | None:
    """A list of plain numbers (not bools) as float64, or None."""
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return None
    return np.asarray(value, dtype=np.float64)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Colour-bar ticks (as log10 values) at decades, or at 1-2-5 steps over a narrow range."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    ticks = [float(d) for d in decades]
    if hi - lo < 2:
        ticks = [d + math.log10(m) for d in decades for m in (1, 2, 5)]
    inside = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]
    return inside or [round(lo, 3)]


def _forward_fill(steps: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The step function ``values`` (held until the next point) read at ``at``; NaN before."""
    index = np.searchsorted(steps, at, side="right") - 1
    out = np.full(at.shape, np.nan)
    ok = index >= 0
    out[ok] = values[index[ok]]
    return out


# --------------------------------------------------------------------------- the document


class _Doc:
    """Collects sections and figures; owns the plotly module and the figure numbering."""

    def __init__(self, run: RunData, plotly: Any) -> None:
        self.run = run
        self.go = plotly
        self.sections: list[str] = []
        self.figures = 0
        steps = [int(s[-1]) for s, _ in run.series.values() if s.size]
        steps += [int(p.end if p.end is not None else p.start) for p in run.plateaus]
        steps += [int(a.step) for a in run.actions]
        self.last_step = max(steps) if steps else 0
        self.used: set[str] = set()  # series already shown by a dedicated section

    def figure(self, fig: Any, height: int = 420) -> str:
        self.figures += 1
        fig_id = f"fig-{self.figures}"
        fig.update_layout(
            template="plotly_white",
            height=height,
            margin={"l": 60, "r": 30, "t": 40, "b": 50},
            legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        )
        fig.update_yaxes(exponentformat="e")  # 1e-05, not plotly's SI "10µ"
        data = _script_safe(fig.to_json())
        return (
            f'<div id="{fig_id}" class="plot"></div>\n<script>(function () {{\n'
            f"var f = {data};\n"
            f'Plotly.newPlot("{fig_id}", f.data, f.layout, {PLOT_CONFIG});\n'
            "})();</script>"
        )

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"<section>\n<h2>{_esc(title)}</h2>\n{body}\n</section>")


def write_report(run: RunData, path: str | os.PathLike[str]) -> Path:
    """Write ``run`` as one self-contained HTML file and return its path.

    ``path`` is the file to write (parent folders are created); an existing directory gets
    ``report.html`` inside it. The file embeds plotly.js (about 4.8 MB) once and needs no
    network. A series of more than ``MAX_POINTS`` (5,000) points is downsampled for plotting
    to the minimum and maximum of each of 2,500 equal buckets (so spikes and dips stay
    visible), plus the first and last point; the gradient-norm heatmap merges steps into at
    most ``MAX_HEATMAP_COLUMNS`` columns (geometric mean). Tables show every finding and
    action. Needs plotly: ``pip install 'unstuck[report]'``.

    >>> from unstuck.record.rundata import load_run
    >>> write_report(load_run("runs/exp1"), "runs/exp1/report.html")  # doctest: +SKIP
    """
    try:
        plotly = importlib.import_module("plotly.graph_objects")
        offline = importlib.import_module("plotly.offline")
    except ImportError as exc:
        raise ImportError(f"the HTML report needs plotly: {INSTALL_HINT}") from exc
    if not isinstance(run, RunData):
        raise TypeError(f"write_report: run must be a RunData, got {type(run).__name__}")
    target = Path(path)
    if target.is_dir():
        target = target / REPORT_FILENAME
    doc = _Doc(run, plotly)
    _loss_section(doc)
    _lr_section(doc)
    _grad_section(doc)
    _update_ratio_section(doc)
    _findings_section(doc)
    _actions_section(doc)
    _probes_section(doc)
    _other_series_section(doc)
    page = _page(run, doc, str(offline.get_plotlyjs()))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, target)  # a browser reloading the report never sees half a file
    return target


def _page(run: RunData, doc: _Doc, plotly_js: str) -> str:
    from unstuck import __version__

    title = f"unstuck report — {run.source}"
    counts = (
        f"{len(run.series)} series · {len(run.plateaus)} plateaus · "
        f"{len(run.findings)} findings · {len(run.actions)} actions · {len(run.probes)} probes"
    )
    meta = {"format": run.format, **run.meta}
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(doc.sections)
    # plotly.js is our own file, not user text; "</script" cannot occur in it, but make sure.
    plotly_js = plotly_js.replace("</script", "<\\/script")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
<script>{plotly_js}</script>
</head>
<body>
<header>
<h1>unstuck report</h1>
<p class="source">source: {_esc(run.source)}</p>
<p>{_esc(counts)}</p>
<details><summary>run metadata</summary>{_kv_table(meta)}</details>
</header>
{body}
<footer>Written by unstuck {_esc(__version__)} on {_esc(generated)}.
Plots are interactive: drag to zoom, double-click to reset, click a legend entry to hide it.
</footer>
</body>
</html>
"""


# --------------------------------------------------------------------------- sections


def _loss_section(doc: _Doc) -> None:
    run, go = doc.run, doc.go
    present = {k: n for k, n in LOSS_SERIES.items() if n in run.series}
    if not present:
        doc.section("Loss", _note("No training or validation loss series in this run."))
        return
    fig = go.Figure()
    notes = []
    for series, name in present.items():
        doc.used.add(name)
        steps, values = run.series[name]
        bad = int((~np.isfinite(values)).sum())
        if bad:
            notes.append(f"{name}: {bad} non-finite values (gaps in the line).")
        x, y = _plot_xy(steps, values)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=_esc("train loss" if series == "train" else "validation loss"),
                mode="lines" if x.size > 50 else "lines+markers",
                line={"color": SERIES_COLOURS[series], "width": 1.5},
            )
        )
    log = _positive(run.series[n][1] for n in present.values())
    fig.update_yaxes(type="log" if log else "linear", title_text="loss")
    fig.update_xaxes(title_text="step")
    _shade_plateaus(doc, fig, run.plateaus)
    _mark_actions(doc, fig, run.actions, present, log)
    lines = [_note(n) for n in notes]
    if not run.plateaus:
        lines.append(_note("No plateau was detected."))
    doc.section("Loss", doc.figure(fig, 460) + "\n" + "\n".join(lines))


def _shade_plateaus(doc: _Doc, fig: Any, plateaus: Sequence[Plateau]) -> None:
    go = doc.go
    legend_done: set[str] = set()
    for p in plateaus:
        end = p.end if p.end is not None else doc.last_step
        fill = PLATEAU_FILLS.get(p.series, OTHER_FILL)
        fig.add_vrect(x0=p.start, x1=max(end, p.start), fillcolor=fill, line_width=0, layer="below")
        if p.series not in legend_done:  # shapes have no legend entry: a stand-in trace
            legend_done.add(p.series)
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    marker={"symbol": "square", "size": 12, "color": fill},
                    name=_esc(f"{p.series} plateau"),
                    hoverinfo="skip",
                )
            )
        # an invisible point at the plateau's middle carries its hover text
        label = (
            f"{p.series} plateau ({p.kind}), steps {p.start}–"
            f"{'open' if p.end is None else p.end}, confidence {p.confidence:.2f}"
        )
        fig.add_annotation(
            x=(p.start + end) / 2,
            y=1.0,
            yref="paper",
            text=_esc(f"{p.series} {p.kind}"),
            hovertext=_plot_text(label),
            showarrow=False,
            yanchor="top",
            font={"size": 10, "color": "#555"},
        )


def _mark_actions(
    doc: _Doc, fig: Any, actions: Sequence[ActionRecord], present: Mapping[str, str], log: bool
) -> None:
    """A dotted line per action plus a hoverable marker on the loss curve, by outcome."""
    go, run = doc.go, doc.run
    if not actions:
        return
    curve_name = present.get("train") or next(iter(present.values()))
    steps, values = run.series[curve_name]
    ok = np.isfinite(values) & ((values > 0) if log else True)
    cs, cv = steps[ok], values[ok]
    groups: dict[str, tuple[list[int], list[float], list[str]]] = {}
    for a in actions:
        colour = OUTCOME_COLOURS.get(a.outcome, OTHER_OUTCOME)
        fig.add_vline(x=a.step, line_color=colour, line_dash="dot", line_width=1.5)
        if not cs.size:
            continue
        y = float(np.interp(a.step, cs, np.log(cv) if log else cv))
        label = str(a.params.get("label", a.name))
        text = _plot_text(
            f"step {a.step}: {label} ({a.name}) → {a.outcome.replace('_', ' ')}",
            f"because {a.reason}",
        )
        xs, ys, texts = groups.setdefault(a.outcome, ([], [], []))
        xs.append(int(a.step))
        ys.append(math.exp(y) if log else y)
        texts.append(text)
    for outcome, (xs, ys, texts) in groups.items():
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=_esc(f"action: {outcome.replace('_', ' ')}"),
                marker={
                    "symbol": "diamond",
                    "size": 12,
                    "color": OUTCOME_COLOURS.get(outcome, OTHER_OUTCOME),
                    "line": {"width": 1, "color": "#fff"},
                },
                hovertext=texts,
                hoverinfo="text",
            )
        )


def _step_trace(steps: np.ndarray, values: np.ndarray, last: int) -> tuple[np.ndarray, np.ndarray]:
    """A step-function series (logged only when it changes) held until the run's last step."""
    x, y = _plot_xy(steps, values)
    if x.size and last > int(x[-1]):
        x = np.append(x, np.asarray([last], dtype=x.dtype))
        y = np.append(y, y[-1])
    return x, y


def _lr_section(doc: _Doc) -> None:
    run, go = doc.run, doc.go
    groups = sorted((n for n in run.series if n.startswith("lr/")), key=_natural_key)
    mult = run.series.get("lr_multiplier")
    if not groups and mult is None:
        doc.section("Learning rate", _note("No learning-rate series in this run."))
        return
    fig = go.Figure()
    primary: list[np.ndarray] = []
    for name in groups:
        doc.used.add(name)
        x, y = _step_trace(*run.series[name], doc.last_step)
        primary.append(y)
        fig.add_trace(
            go.Scatter(x=x, y=y, name=_esc(f"{name} (schedule)"), line_shape="hv", mode="lines")
        )
        if mult is not None:
            at = np.union1d(run.series[name][0], mult[0])
            product = _forward_fill(*run.series[name], at) * _forward_fill(*mult, at)
            ex, ey = _step_trace(at, product, doc.last_step)
            primary.append(ey)
            fig.add_trace(
                go.Scatter(
                    x=ex,
                    y=ey,
                    name=_esc(f"{name} × lr_multiplier (effective)"),
                    line_shape="hv",
                    mode="lines",
                    line={"width": 2.5},
                )
            )
    if mult is not None:
        doc.used.add("lr_multiplier")
        mx, my = _step_trace(*mult, doc.last_step)
        fig.add_trace(
            go.Scatter(
                x=mx,
                y=my,
                name="lr_multiplier (unstuck)",
                line_shape="hv",
                mode="lines",
                line={"dash": "dash", "color": "#555"},
                yaxis="y2" if groups else "y",
            )
        )
        mult_log = _positive([my])
        finite = my[np.isfinite(my)]
        wide = mult_log and finite.size and float(finite.max() / finite.min()) >= 10
        if groups:
            fig.update_layout(
                yaxis2={
                    "title": {"text": "multiplier"},
                    "overlaying": "y",
                    "side": "right",
                    "type": "log" if mult_log else "linear",
                    "showgrid": False,
                    **({"dtick": 1} if wide else {}),  # decades only: no crowded minor labels
                }
            )
        else:
            primary.append(my)
    fig.update_layout(
        yaxis={
            "type": "log" if _positive(primary) else "linear",
            "title": {"text": "learning rate" if groups else "multiplier"},
        }
    )
    fig.update_xaxes(title_text="step")
    note = _note(
        "lr/<group> is your schedule as recorded; lr_multiplier is unstuck's factor over it; "
        "their product is the learning rate the optimizer used."
        if groups and mult is not None
        else "Only part of the learning-rate picture was recorded."
    )
    doc.section("Learning rate", doc.figure(fig) + "\n" + note)


def _grad_section(doc: _Doc) -> None:
    run, go = doc.run, doc.go
    layers = sorted((n for n in run.series if n.startswith("grad_norm/")), key=_natural_key)
    total = run.series.get("grad_norm")
    if not layers and total is None:
        doc.section("Gradient norms", _note("No gradient-norm series in this run."))
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
        x = all_steps
        if all_steps.size > MAX_HEATMAP_COLUMNS:
            edges = np.linspace(0, all_steps.size, MAX_HEATMAP_COLUMNS + 1).astype(np.int64)
            x = all_steps[edges[:-1]]
            merged = np.full((len(layers), x.size), np.nan)
            for j, (a, b) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist())):
                block = z[:, a:b]
                has = np.isfinite(block).any(axis=1)
                if has.any():
                    merged[has, j] = np.nanmean(block[has], axis=1)
            z = merged
        finite = z[np.isfinite(z)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        ticks = _log_ticks(lo, hi)
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=x.astype(np.float64),
                y=[_esc(n.removeprefix("grad_norm/")) for n in layers],
                colorscale="Viridis",
                customdata=np.power(10.0, z),
                hovertemplate="%{y}<br>step %{x}<br>grad norm %{customdata:.3g}<extra></extra>",
                colorbar={
                    "title": {"text": "grad norm"},
                    "tickvals": ticks,
                    "ticktext": [f"{10.0**t:.0e}" for t in ticks],
                },
                hoverongaps=False,
            )
        )
        fig.update_xaxes(title_text="step")
        fig.update_yaxes(autorange="reversed", type="category")
        height = int(min(max(300, 22 * len(layers) + 140), 1600))
        parts.append(doc.figure(fig, height))
        parts.append(
            _note(
                "Per-tensor gradient norm (log colour scale; rows in parameter order by name). "
                "A first layer far below the last one points at vanishing gradients."
            )
        )
    if total is not None:
        doc.used.add("grad_norm")
        x, y = _plot_xy(*total)
        fig = go.Figure(go.Scatter(x=x, y=y, name="grad_norm (total)", mode="lines"))
        fig.update_yaxes(type="log" if _positive([y]) else "linear", title_text="total grad norm")
        fig.update_xaxes(title_text="step")
        parts.append(doc.figure(fig, 320))
    doc.section("Gradient norms", "\n".join(parts))


def _update_ratio_section(doc: _Doc) -> None:
    run, go = doc.run, doc.go
    names = sorted((n for n in run.series if n.startswith("update_ratio")), key=_natural_key)
    if not names:
        doc.section("Update/weight ratio", _note("No update/weight ratio series in this run."))
        return
    fig = go.Figure()
    ys = []
    for name in names:
        doc.used.add(name)
        x, y = _plot_xy(*run.series[name])
        ys.append(y)
        fig.add_trace(go.Scatter(x=x, y=y, name=_esc(name), mode="lines+markers"))
    fig.update_yaxes(type="log" if _positive(ys) else "linear", title_text="‖Δw‖ / ‖w‖")
    fig.update_xaxes(title_text="step")
    note = _note(
        "The size of one optimizer step relative to the weights. Far below 1e-3 the weights "
        "barely move (learning rate too low); far above 1e-2 the steps are noisy (too high)."
    )
    doc.section("Update/weight ratio", doc.figure(fig, 360) + "\n" + note)


def _finding_row(f: Finding) -> str:
    remedies = "".join(
        f"<li><code>{_esc(r.action)}</code>{' (automatic)' if r.automatic else ''}"
        f"{': ' + _esc(r.note) if r.note else ''}</li>"
        for r in f.remedies
    )
    details = (
        f"<details><summary>{len(f.evidence)} values</summary>{_kv_list(f.evidence)}"
        + (f'<div>remedies:</div><ul class="kv">{remedies}</ul>' if remedies else "")
        + "</details>"
    )
    return (
        f'<tr><td class="num">{f.step}</td><td>{_esc(f.series)}</td>'
        f"<td><code>{_esc(f.cause)}</code></td>"
        f'<td class="num">{f.confidence:.2f}</td><td>{_esc(f.summary)}</td>'
        f"<td>{details}</td></tr>"
    )


def _findings_section(doc: _Doc) -> None:
    findings = doc.run.findings
    if not findings:
        doc.section("Findings", _note("No findings: no rule fired on this run."))
        return
    rows = "\n".join(_finding_row(f) for f in findings)
    table = (
        "<table><thead><tr><th>step</th><th>series</th><th>cause</th><th>confidence</th>"
        f"<th>summary</th><th>evidence</th></tr></thead><tbody>\n{rows}\n</tbody></table>"
    )
    note = _note("unstuck.explain('<cause>') explains each cause and its remedies.")
    doc.section("Findings", table + "\n" + note)


def _verdict(a: ActionRecord) -> str:
    change = a.evidence.get("verdict_change")
    stderr = a.evidence.get("verdict_stderr")
    if not isinstance(change, (int, float)) or isinstance(change, bool):
        return "not verified yet" if a.outcome in ("pending", "probing", "unverified") else ""
    log = bool(a.evidence.get("verdict_log_scale"))
    err = (
        f" ± {_fmt_number(float(stderr))}"
        if isinstance(stderr, (int, float)) and not isinstance(stderr, bool)
        else ""
    )
    text = f"Δ {'log ' if log else ''}loss {_fmt_number(float(change))}{err}"
    if log and math.isfinite(float(change)):
        text += f" (loss ×{math.exp(float(change)):.3g})"
    return text


def _actions_section(doc: _Doc) -> None:
    actions = doc.run.actions
    if not actions:
        doc.section("Actions", _note("No actions: unstuck changed nothing in this run."))
        return
    rows = []
    for a in actions:
        colour = OUTCOME_COLOURS.get(a.outcome, OTHER_OUTCOME)
        verdict_keys = ("verdict_change", "verdict_stderr", "verdict_log_scale")
        evidence = {k: v for k, v in a.evidence.items() if k not in verdict_keys}
        details = (
            f"<details><summary>params and evidence</summary>{_kv_list(a.params)}"
            f"{_kv_list(evidence)}</details>"
        )
        verified = "" if a.verified_step is None else str(a.verified_step)
        rows.append(
            f'<tr><td class="num">{a.step}</td>'
            f"<td>{_esc(a.params.get('label', a.name))}<br><code>{_esc(a.name)}</code></td>"
            f'<td><span class="badge" style="background:{colour}">'
            f"{_esc(a.outcome.replace('_', ' '))}</span></td>"
            f'<td class="num">{_esc(verified)}</td><td>{_esc(_verdict(a))}</td>'
            f"<td>{_esc(a.reason)}</td><td>{details}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>step</th><th>action</th><th>outcome</th><th>verified at</th>"
        "<th>verdict (after − before)</th><th>reason</th><th>details</th></tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>"
    )
    note = _note(
        "Each action is judged after its horizon on the loss before and after it; "
        "one that made the loss clearly worse is rolled back with the full training state."
    )
    doc.section("Actions", table + "\n" + note)


def _probe_curve(doc: _Doc, probe: Mapping[str, Any]) -> tuple[str, set[str]]:
    """A loss-against-LR curve from the first matching pair of equal-length numeric lists."""
    go = doc.go
    for xk in PROBE_X_KEYS:
        x = _as_numbers(probe.get(xk))
        if x is None:
            continue
        for yk in PROBE_Y_KEYS:
            y = _as_numbers(probe.get(yk))
            if y is None or y.size != x.size:
                continue
            used = {xk, yk}
            traces = [(yk, y)] + [
                (k, arr)
                for k, v in probe.items()
                if k not in used and (arr := _as_numbers(v)) is not None and arr.size == x.size
            ]
            fig = go.Figure()
            ys = []
            for key, values in traces:
                used.add(key)
                ys.append(np.where(np.isfinite(values), values, np.nan))
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=ys[-1],
                        mode="lines+markers" if key == yk else "lines",
                        name=_esc(key),
                    )
                )
            _mark_probe(fig, probe, PROBE_SUGGESTION_KEYS, "#2ca02c")
            _mark_probe(fig, probe, PROBE_DIVERGED_KEYS, "#d62728")
            fig.update_xaxes(type="log" if _positive([x]) else "linear", title_text=_esc(xk))
            fig.update_yaxes(type="log" if _positive(ys) else "linear", title_text=_esc(yk))
            return doc.figure(fig, 360), used
    return "", set()


def _mark_probe(fig: Any, probe: Mapping[str, Any], keys: Sequence[str], colour: str) -> None:
    """A dashed vertical line at the first finite number among ``keys`` (kept in the table)."""
    for key in keys:
        value = probe.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                fig.add_vline(
                    x=float(value),
                    line_color=colour,
                    line_dash="dash",
                    annotation_text=_esc(f"{key} {_fmt_number(float(value))}"),
                )
            return


def _probe_branches(doc: _Doc, probe: Mapping[str, Any]) -> str:
    """Branch trials (``branches``: a list of {label, score, ...}) as a bar chart."""
    branches = probe.get("branches")
    if not isinstance(branches, list):
        return ""
    labels, scores, hovers = [], [], []
    for i, b in enumerate(branches):
        if not isinstance(b, Mapping):
            continue
        score = b.get("score")
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            continue
        label = str(b.get("label", b.get("name", f"branch {i}")))
        labels.append(_esc(label))
        scores.append(float(score) if math.isfinite(float(score)) else None)
        rest = {k: v for k, v in b.items() if k not in ("label", "score")}
        hovers.append(_plot_text(f"{label}: score {_fmt_number(float(score))}", _fmt_value(rest)))
    if not labels:
        return ""
    best = next((probe[k] for k in BRANCH_WINNER_KEYS if probe.get(k) is not None), None)
    colours = ["#2ca02c" if best is not None and lab == _esc(best) else "#1f77b4" for lab in labels]
    fig = doc.go.Figure(
        doc.go.Bar(
            x=labels, y=scores, hovertext=hovers, hoverinfo="text", marker={"color": colours}
        )
    )
    fig.update_yaxes(title_text="score")
    fig.update_xaxes(type="category")
    return doc.figure(fig, 340)


def _probes_section(doc: _Doc) -> None:
    probes = doc.run.probes
    if not probes:
        doc.section("Probes", _note("No probes ran (LR range test, branch trials, curvature)."))
        return
    parts = []
    for probe in probes:
        name = str(probe.get("probe", probe.get("kind", "probe")))
        step = probe.get("step")
        heading = f"{name} at step {step}" if step is not None else name
        curve, used = _probe_curve(doc, probe)
        bars = _probe_branches(doc, probe)
        if bars:
            used.add("branches")
        rest = {k: v for k, v in probe.items() if k not in used and k not in ("probe", "step")}
        parts.append(f"<h3>{_esc(heading)}</h3>")
        parts += [p for p in (curve, bars) if p]
        if rest:
            parts.append(_kv_table(rest))
    doc.section("Probes", "\n".join(parts))


def _other_series_section(doc: _Doc) -> None:
    run, go = doc.run, doc.go
    names = sorted((n for n in run.series if n not in doc.used), key=_natural_key)
    if not names:
        return
    fig = go.Figure()
    for i, name in enumerate(names):
        x, y = _plot_xy(*run.series[name])
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=_esc(name),
                mode="lines+markers" if x.size <= 50 else "lines",
                visible=True if i == 0 else "legendonly",
            )
        )
    fig.update_xaxes(title_text="step")
    note = _note(f"{len(names)} more series; click a legend entry to show it.")
    doc.section("Other signals", doc.figure(fig, 420) + "\n" + note)
