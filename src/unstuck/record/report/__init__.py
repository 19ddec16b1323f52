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
``lr``, ``grads``, ``tables``, ``probes``, ``other``), and ``page.html``, the page shell (head,
style, header, footer) as a :class:`string.Template` that this module fills.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import importlib.resources
import os
import string
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

PAGE = "page.html"  # the page shell, a string.Template beside this module (package data)


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
    return _shell().substitute(
        title=esc(title),
        source=esc(run.source),
        counts=esc(counts),
        meta=kv_table(meta),
        body="\n".join(doc.sections),
        version=esc(_version()),
        generated=esc(generated),
    )


@functools.cache
def _shell() -> string.Template:
    """The page around the sections (head, style, header, footer), read once per process."""
    text = importlib.resources.files(__name__).joinpath(PAGE).read_text(encoding="utf-8")
    return string.Template(text)
