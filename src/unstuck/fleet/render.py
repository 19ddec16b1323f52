"""The three faces of a refresh: a terminal table, JSON, and a self-contained HTML page.

The HTML page follows the report's offline rules: no script, no external font, style sheet or
image; every sparkline is inline SVG drawn here from the run's thinned series.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_table", "state_label", "to_json", "write_html"]

NAME_WIDTH = 34  # characters of a run's name shown in the table
FINDING_WIDTH = 48  # characters of the top finding shown in the table
SPARK_W, SPARK_H = 160, 32  # sparkline size in px
STATE_COLOURS = {  # the page's colour per state (the report's palette where it has one)
    "diverging": "#b2182b",
    "plateau": "#d6604d",
    "oscillating": "#f4a582",
    "unreadable": "#777777",
    "stale": "#999999",
    "slow": "#92c5de",
    "hidden_progress": "#4393c3",
    "unknown": "#bbbbbb",
    "improving": "#1b7837",
    "finished": "#5e3c99",
}


def state_label(row: dict[str, Any]) -> str:
    """``plateau since 1200``, ``stale``, ``finished`` ... as the table shows it."""
    state = str(row["state"])
    if state == "plateau" and row.get("plateau_start") is not None:
        return f"plateau since {row['plateau_start']}"
    if state == "finished" and row.get("detector_state") not in (None, "unknown"):
        return f"finished ({row['detector_state']})"
    return state.replace("_", " ")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _loss(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.4g}"


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def format_table(rows: Sequence[dict[str, Any]], *, when: float | None = None) -> list[str]:
    """The terminal table: one line per run, most urgent first, and a count per state."""
    stamp = time.strftime("%H:%M:%S", time.localtime(when if when is not None else time.time()))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items())
    lines = [f"unstuck watch  {stamp}  {len(rows)} runs: {summary or 'none yet'}"]
    header = (
        f"{'RUN':{NAME_WIDTH}}  {'SOURCE':11}  {'STEP':>8}  {'LOSS':>9}  {'STATE':24}  "
        f"{'STUCK':>14}  FINDING"
    )
    lines.append(header)
    for r in rows:
        stuck = "-"
        if r.get("stuck_steps") is not None:
            stuck = f"{r['stuck_steps']} st/{_age(r.get('stuck_seconds'))}"
        step = "-" if r.get("steps") is None else str(r["steps"])
        lines.append(
            f"{_cut(str(r['name']), NAME_WIDTH):{NAME_WIDTH}}  {r['source']!s:11}  "
            f"{step:>8}  {_loss(r.get('last_loss')):>9}  {_cut(state_label(r), 24):24}  "
            f"{stuck:>14}  {_cut(str(r.get('finding') or ''), FINDING_WIDTH)}".rstrip()
        )
    return lines


def to_json(rows: Sequence[dict[str, Any]], *, indent: int | None = 2) -> str:
    """Rows as a JSON list (non-finite numbers are strings: the output is strict JSON)."""
    return json.dumps(list(rows), indent=indent, allow_nan=False)


def _sparkline(steps: Sequence[int], values: Sequence[float], colour: str) -> str:
    pts = [
        (float(s), math.log10(v))
        for s, v in zip(steps, values)
        if isinstance(v, float) and math.isfinite(v) and v > 0
    ]
    if len(pts) < 2:
        return f'<svg width="{SPARK_W}" height="{SPARK_H}" role="img"></svg>'
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    xspan, yspan = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    pad = 2.0
    coords = " ".join(
        f"{pad + (x - x0) / xspan * (SPARK_W - 2 * pad):.1f},"
        f"{SPARK_H - pad - (y - y0) / yspan * (SPARK_H - 2 * pad):.1f}"
        for x, y in pts
    )
    return (
        f'<svg width="{SPARK_W}" height="{SPARK_H}" viewBox="0 0 {SPARK_W} {SPARK_H}" '
        f'role="img"><title>log loss, steps {int(x0)}–{int(x1)}</title>'
        f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/></svg>'
    )


def _html(
    rows: Sequence[dict[str, Any]],
    spark: Callable[[dict[str, Any]], tuple[list[int], list[float]]],
    interval: float | None,
) -> str:
    esc = html.escape
    body = []
    for r in rows:
        colour = STATE_COLOURS.get(str(r["state"]), "#333333")
        steps, values = spark(r)
        stuck = "" if r.get("stuck_steps") is None else f"{r['stuck_steps']} steps"
        body.append(
            "<tr>"
            f"<td>{esc(str(r['name']))}</td><td>{esc(str(r['source']))}</td>"
            f'<td class="n">{esc(str(r.get("steps") if r.get("steps") is not None else "-"))}</td>'
            f'<td class="n">{esc(_loss(r.get("last_loss")))}</td>'
            f'<td><span class="s" style="background:{colour}">{esc(state_label(r))}</span></td>'
            f"<td>{esc(stuck)}</td><td>{_sparkline(steps, values, colour)}</td>"
            f"<td>{esc(str(r.get('finding') or ''))}</td></tr>"
        )
    refresh = f'<meta http-equiv="refresh" content="{max(int(interval), 1)}">' if interval else ""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}
<title>unstuck watch: {len(rows)} runs</title>
<style>
body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse}}td,th{{padding:.3em .6em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:middle}}td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.s{{color:#fff;padding:.1em .5em;border-radius:.3em;white-space:nowrap}}
</style></head><body>
<h1>unstuck watch</h1><p>{len(rows)} runs, most urgent first; written {esc(stamp)}.</p>
<table><thead><tr><th>run</th><th>source</th><th>step</th><th>last loss</th><th>state</th>
<th>stuck</th><th>loss (log)</th><th>top finding</th></tr></thead><tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


def write_html(
    path: str | os.PathLike[str],
    rows: Sequence[dict[str, Any]],
    spark: Callable[[dict[str, Any]], tuple[list[int], list[float]]],
    *,
    interval: float | None = None,
) -> None:
    """Write the dashboard page atomically (a browser reloading it never sees half a page)."""
    target = Path(path)
    text = _html(rows, spark, interval)
    fd, tmp = tempfile.mkstemp(prefix=".unstuck-watch-", suffix=".html", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
