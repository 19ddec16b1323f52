"""The HTML report: one small, self-contained file that shows what a run did and what unstuck
found.

``write_report(run, path)`` renders a :class:`~unstuck.record.rundata.RunData` — from unstuck's
run store (:func:`~unstuck.record.rundata.load_run`) or from any log ``unstuck analyze`` reads —
into a single HTML file with static inline SVG charts drawn here in Python: no JavaScript, no
plotting library, no network. A guarded run's report is a few hundred KB at most. Sections: the
training and validation loss (raw and smoothed, with a "without unstuck" baseline when the run
holds one) with plateaus shaded and actions marked, the learning rate and momentum, per-layer
gradient norms as a heatmap, update/weight ratios, the findings with their evidence, the actions
with their verification, probe results (LR range tests, branch trials, curvature), and every
other series. On a Guard's run a section without data is a one-line note; on another tool's log
it is left out.

Every string that comes from the run (series names, metadata, summaries, evidence, reasons,
paths) is HTML-escaped with :func:`html.escape` where it is written, in the page and inside the
SVG (labels, ``<title>`` hover text, attributes). The page has no script at all. See
``docs/report.md``.

Module layout: ``svg`` (chart primitives), ``series`` (downsampling, smoothing), ``text``
(escaping, formatting), ``doc`` (the page being built), one module per section (``loss``,
``lr``, ``grads``, ``tables``, ``probes``, ``other``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
from pathlib import Path

from unstuck.record.report.doc import Doc
from unstuck.record.report.grads import MAX_HEATMAP_COLUMNS, grad_section, update_ratio_section
from unstuck.record.report.loss import loss_section
from unstuck.record.report.lr import lr_section
from unstuck.record.report.other import other_series_section
from unstuck.record.report.probes import probes_section
from unstuck.record.report.series import MAX_POINTS
from unstuck.record.report.tables import actions_section, findings_section
from unstuck.record.report.text import esc, kv_table, plural
from unstuck.record.rundata import RunData

__all__ = ["MAX_HEATMAP_COLUMNS", "MAX_POINTS", "REPORT_FILENAME", "write_report"]

REPORT_FILENAME = "report.html"  # the name used when write_report is given a directory
DISTRIBUTION = "unstuck"  # the installed package whose version the footer names

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
svg.chart { display: block; width: 100%; height: auto; margin: 0.6em 0; overflow: visible; }
svg.chart text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
                 fill: #333; }
svg.chart .axis-title { font-size: 13px; fill: #444; }
svg.chart .span-label { font-size: 11px; fill: #555; }
svg.chart .marker-label { font-size: 11px; }
svg.chart .series:hover polyline { stroke-width: 3; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr));
        gap: 0.5em 1.5em; }
figure.small { margin: 0; } figure.small figcaption { font-family: monospace;
        font-size: 13px; word-break: break-all; }
footer { margin-top: 3em; color: #888; font-size: 12px; }
"""


def _version() -> str:
    """The installed unstuck's version, read from its metadata (no import of the package)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write_report(run: RunData, path: str | os.PathLike[str]) -> Path:
    """Write ``run`` as one self-contained HTML file and return its path.

    ``path`` is the file to write (parent folders are created); an existing directory gets
    ``report.html`` inside it. The charts are inline SVG drawn here — the file loads nothing
    and runs no script. A series of more than ``MAX_POINTS`` (2,000) points is downsampled for
    plotting to the minimum and maximum of each of 1,000 equal buckets (so spikes and dips stay
    visible), plus the first and last point; the gradient-norm heatmap merges steps into at
    most ``MAX_HEATMAP_COLUMNS`` columns (geometric mean). Tables show every finding and
    action. Needs no optional library.

    >>> from unstuck.record.rundata import load_run
    >>> write_report(load_run("runs/exp1"), "runs/exp1/report.html")  # doctest: +SKIP
    """
    if not isinstance(run, RunData):
        raise TypeError(f"write_report: run must be a RunData, got {type(run).__name__}")
    target = Path(path)
    if target.is_dir():
        target = target / REPORT_FILENAME
    doc = Doc(run)
    loss_section(doc)
    lr_section(doc)
    grad_section(doc)
    update_ratio_section(doc)
    findings_section(doc)
    actions_section(doc)
    probes_section(doc)
    other_series_section(doc)
    page = _page(run, doc)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, target)  # a browser reloading the report never sees half a file
    return target


def _page(run: RunData, doc: Doc) -> str:
    title = f"unstuck report — {run.source}"
    counts = " · ".join(
        [
            plural(len(run.series), "series", "series"),
            plural(len(run.plateaus), "plateau"),
            plural(len(run.findings), "finding"),
            plural(len(run.actions), "action"),
            plural(len(run.probes), "probe"),
        ]
    )
    meta = {"format": run.format, **run.meta}
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(doc.sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>unstuck report</h1>
<p class="source">source: {esc(run.source)}</p>
<p>{esc(counts)}</p>
<details><summary>run metadata</summary>{kv_table(meta)}</details>
</header>
{body}
<footer>Written by unstuck {esc(_version())} on {esc(generated)}.
Hover a line, a shaded span or a marker for details.
</footer>
</body>
</html>
"""
