"""Other signals: every series no section above showed, as a grid of small charts."""

from __future__ import annotations

import numpy as np

from unstuck.record.report.doc import Doc
from unstuck.record.report.series import SMALL_MAX_POINTS, plot_xy, positive
from unstuck.record.report.svg import Chart
from unstuck.record.report.text import esc, natural_key, note, plural

__all__ = ["other_series_section"]

MAX_OTHER_CHARTS = 24  # small charts drawn; further series are listed by name
SMALL_WIDTH = 540  # viewBox width of a small chart: two to a row
SMALL_HEIGHT = 220
LOG_FROM_RATIO = 100.0  # a positive series spanning this factor or more gets a log y axis
COLOUR = "#1f77b4"


def _wants_log(values: np.ndarray) -> bool:
    f = values[np.isfinite(values)]
    return positive([values]) and bool(f.size) and float(f.max() / f.min()) >= LOG_FROM_RATIO


def other_series_section(doc: Doc) -> None:
    run = doc.run
    names = sorted((n for n in run.series if n not in doc.used), key=natural_key)
    if not names:
        return
    figures = []
    for name in names[:MAX_OTHER_CHARTS]:
        steps, values = run.series[name]
        x, y = plot_xy(steps, values, SMALL_MAX_POINTS)
        chart = Chart(
            doc.chart_id(),
            "signal",
            x_title=doc.x_name,
            x_range=doc.x_range,
            y_title="",
            y_log=_wants_log(values),
            height=SMALL_HEIGHT,
            width=SMALL_WIDTH,
        )
        chart.line(x, y, colour=COLOUR, title=name, markers=x.size <= 50)
        figures.append(
            f'<figure class="small"><figcaption>{esc(name)}</figcaption>{chart.render()}</figure>'
        )
    rest = names[MAX_OTHER_CHARTS:]
    tail = ""
    if rest:
        listed = ", ".join(f"<code>{esc(n)}</code>" for n in rest)
        more = plural(len(rest), "more series", "more series")
        tail = f'<p class="note">{more}, not drawn: {listed}</p>'
    body = '<div class="grid">\n' + "\n".join(figures) + "\n</div>"
    doc.section(
        "Other signals",
        body
        + tail
        + "\n"
        + note(f"{plural(len(names), 'series', 'series')} no section above shows."),
    )
