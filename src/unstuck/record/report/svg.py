"""Static SVG charts drawn from Python: the report needs no JavaScript and no plotting library.

A chart is one ``<svg>`` element with a ``viewBox``, so it scales with the page and prints;
``<title>`` children carry the hover text (every browser shows them as tooltips). Coordinates
are rounded to a tenth of a unit — a chart is about 1,100 units wide, so that is a tenth of a
pixel — which keeps a 2,000-point line near 20 KB. The callers escape nothing: every string
given here (labels, titles, axis names) is escaped here, once, with :func:`html.escape`.

The gradient-norm heatmap is a palette PNG (one byte per cell, zlib-compressed, encoded here with
``zlib`` and ``struct``) inside an ``<image>``, so its size grows with the cells, not with SVG
markup per cell.
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "WIDTH",
    "Chart",
    "bar_chart",
    "fmt_step",
    "fmt_tick",
    "heatmap",
    "linear_ticks",
    "log_ticks",
    "png_indexed",
    "viridis",
]

WIDTH = 1100  # viewBox width of a full-width chart: the page is at most 1,200 px wide
FONT = 12  # font size of tick labels and the legend, in viewBox units
CHAR_W = 6.8  # the average glyph width at FONT, to lay out the legend and clip labels
MARGIN_LEFT = 74  # room for y tick labels and the y axis title
MARGIN_RIGHT = 24  # without a second y axis
MARGIN_RIGHT_Y2 = 74  # with one
MARGIN_BOTTOM = 46  # x tick labels and the x axis title
LEGEND_ROW = 18  # height of one row of legend entries
PAD = 0.05  # share of a y range left empty above and below the data
TARGET_TICKS = 6  # about this many labelled ticks per axis
MAX_LOG_TICKS = 8  # decades labelled on a log axis before every other one is dropped
MIN_LABEL_WIDTH = 44  # a plateau span narrower than this (units) is not labelled
GRID = "#e6e6e6"  # grid lines
FRAME = "#999"  # the plot frame and tick marks
INK = "#333"  # text
MISSING_CELL = (238, 238, 238)  # heatmap cells with no value (light grey)
# viridis at ten evenly spaced points (matplotlib's table); the palette interpolates between them
VIRIDIS = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _n(value: float) -> str:
    """One coordinate: a tenth of a unit, no trailing ``.0``."""
    text = f"{round(float(value), 1):g}"
    return "0" if text == "-0" else text


# --------------------------------------------------------------------------- ticks


def _nice_step(span: float, integer: bool = False) -> float:
    """A 1-2-2.5-5 × 10^k step giving about ``TARGET_TICKS`` ticks over ``span``."""
    raw = span / TARGET_TICKS if span > 0 else 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    steps = (1.0, 2.0, 5.0, 10.0) if integer else (1.0, 2.0, 2.5, 5.0, 10.0)
    step = next(m * mag for m in steps if m * mag >= raw * (1 - 1e-9))
    return max(step, 1.0) if integer else step


def fmt_tick(value: float, step: float) -> str:
    """A tick label with as many digits as the tick spacing needs: ``0.25``, ``1.5e-4``."""
    if abs(value) < abs(step) * 1e-6:
        return "0"
    big_or_small = abs(value) >= 1e5 or abs(value) < 1e-3
    if big_or_small:
        digits = max(0, math.floor(math.log10(abs(value))) - math.floor(math.log10(abs(step))))
        mantissa, power = f"{value:.{min(digits, 6)}e}".split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(power)}"
    exponent = math.floor(math.log10(abs(step)) + 1e-9)
    decimals = max(0, -exponent)
    if abs(step / 10.0**exponent - 2.5) < 1e-6:  # 0.25-style steps need one more digit
        decimals = max(0, 1 - exponent)
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def fmt_step(value: float, step: float = 1.0) -> str:
    """A step number: whole up to a million (``250000``), then short (``2.5e6``)."""
    if abs(value) < 1e6:
        return str(round(value))
    return fmt_tick(value, step)


def linear_ticks(lo: float, hi: float, integer: bool = False) -> list[tuple[float, str]]:
    """Ticks at a nice step inside ``[lo, hi]``, with labels."""
    step = _nice_step(hi - lo, integer)
    first = math.ceil(lo / step - 1e-9)
    out: list[tuple[float, str]] = []
    k = first
    while k * step <= hi + step * 1e-9 and len(out) < 4 * TARGET_TICKS:
        value = k * step
        label = fmt_step(value, step) if integer else fmt_tick(value, step)
        out.append((value, label))
        k += 1
    return out


def _fmt_log(value: float) -> str:
    if 1e-3 <= value < 1e5:
        return f"{value:.6f}".rstrip("0").rstrip(".")
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def log_ticks(lo10: float, hi10: float) -> list[tuple[float, str]]:
    """Ticks (values, labels) over ``[10**lo10, 10**hi10]``: decades (every other one on a
    wide range), 1-2-5 within a couple of decades, and plain steps over a narrow range."""
    span = hi10 - lo10
    if span < 0.6:  # less than a factor of 4: nice linear steps read better
        return linear_ticks(10.0**lo10, 10.0**hi10)
    mantissas = (1.0, 2.0, 5.0) if span <= 2.5 else (1.0,)
    values = [
        m * 10.0**d
        for d in range(math.floor(lo10), math.ceil(hi10) + 1)
        for m in mantissas
        if lo10 - 1e-9 <= d + math.log10(m) <= hi10 + 1e-9
    ]
    if len(mantissas) == 1 and len(values) > MAX_LOG_TICKS:
        stride = math.ceil(len(values) / MAX_LOG_TICKS)
        values = values[::stride]
    if len(values) < 2:
        return linear_ticks(10.0**lo10, 10.0**hi10)
    return [(v, _fmt_log(v)) for v in values]


# --------------------------------------------------------------------------- scales


class Scale:
    """Data to viewBox units along one axis, linear or log10."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool) -> None:
        self.log = log
        self.lo = math.log10(lo) if log else lo
        self.hi = math.log10(hi) if log else hi
        self.a, self.b = a, b

    def __call__(self, values: Any) -> np.ndarray:
        """Positions of ``values``; NaN where a value is not finite (or not positive on log)."""
        v = np.asarray(values, dtype=np.float64)
        if self.log:
            ok = np.isfinite(v) & (v > 0)
            t = np.full(v.shape, np.nan)
            t[ok] = np.log10(v[ok])
        else:
            t = np.where(np.isfinite(v), v, np.nan)
        return self.a + (t - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def at(self, value: float) -> float:
        return float(self(np.asarray([value]))[0])

    def ticks(self, integer: bool = False) -> list[tuple[float, str]]:
        if self.log:
            return log_ticks(self.lo, self.hi)
        return linear_ticks(self.lo, self.hi, integer)


MAX_EXPONENT = 307.0  # decades a log axis may reach (float64's largest is ~1.8e308)


def fit_range(arrays: Iterable[np.ndarray], log: bool, pad: float = PAD) -> tuple[float, float]:
    """The data range of ``arrays`` (finite values; positive ones on a log axis), padded."""
    parts = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    values = np.concatenate(parts) if parts else np.zeros(0)
    values = values[np.isfinite(values)]
    if log:
        values = values[values > 0]
    if not values.size:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        d = (hi - lo) * pad
        # float64 ends near 1e308: a padded exponent past it would overflow
        return 10.0 ** max(lo - d, -MAX_EXPONENT), 10.0 ** min(hi + d, MAX_EXPONENT)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        delta = abs(hi) * 0.1 or 1.0
        lo, hi = lo - delta, hi + delta
    d = (hi - lo) * pad
    padded = (lo - d, hi + d)
    if not all(math.isfinite(v) for v in padded):  # a span near the float64 limit
        return (lo, hi) if math.isfinite(hi - lo) else (lo / 2, hi / 2)
    return padded


# --------------------------------------------------------------------------- the chart


@dataclass
class _Line:
    x: np.ndarray
    y: np.ndarray
    colour: str
    width: float
    dash: str | None
    opacity: float
    title: str
    right: bool
    step: bool
    markers: bool
    cls: str
    label: str  # the legend's name for it (its title when it has none)


@dataclass
class _Span:
    x0: float
    x1: float
    fill: str
    title: str
    text: str | None
    cls: str
    data: dict[str, str]
    row: int = 0  # the label's line from the top, so overlapping spans' labels do not collide


@dataclass
class _VLine:
    x: float
    colour: str
    title: str
    dash: str | None
    y: float | None
    text: str | None
    cls: str
    data: dict[str, str]


@dataclass
class _Key:
    label: str
    colour: str
    shape: str  # "line", "box" or "diamond"
    dash: str | None = None
    width: float = 2.0
    opacity: float = 1.0


def _attrs(data: dict[str, str]) -> str:
    return "".join(f' data-{k}="{_esc(v)}"' for k, v in data.items())


def _axis_attrs(name: str, scale: Scale) -> str:
    """An axis' data range and kind as attributes: with the frame's box, a reader (a test)
    can turn positions back into data."""
    lo, hi = (10.0**scale.lo, 10.0**scale.hi) if scale.log else (scale.lo, scale.hi)
    kind = "log" if scale.log else "linear"
    return f' data-{name}="{lo:.9g} {hi:.9g} {kind}"'


def _wrap_title(text: str) -> str:
    return f"<title>{_esc(text)}</title>"


def _legend_rows(keys: Sequence[_Key], width: float) -> list[list[tuple[_Key, float]]]:
    """Entries laid out left to right, wrapped at ``width``: (key, x offset) per row."""
    rows: list[list[tuple[_Key, float]]] = [[]]
    x = 0.0
    for key in keys:
        w = 30 + len(key.label) * CHAR_W + 16
        if rows[-1] and x + w > width:
            rows.append([])
            x = 0.0
        rows[-1].append((key, x))
        x += w
    return rows if rows[0] else []


def _legend(rows: list[list[tuple[_Key, float]]], left: float, top: float) -> str:
    out = ['<g class="legend">']
    for r, row in enumerate(rows):
        y = top + r * LEGEND_ROW + LEGEND_ROW / 2
        for key, dx in row:
            x = left + dx
            if key.shape == "box":
                sym = (
                    f'<rect x="{_n(x)}" y="{_n(y - 6)}" width="22" height="12" '
                    f'fill="{key.colour}"/>'
                )
            elif key.shape == "diamond":
                sym = f'<path d="{_diamond(x + 11, y, 6)}" fill="{key.colour}"/>'
            else:
                dash = f' stroke-dasharray="{key.dash}"' if key.dash else ""
                op = f' stroke-opacity="{key.opacity:g}"' if key.opacity < 1 else ""
                sym = (
                    f'<line x1="{_n(x)}" y1="{_n(y)}" x2="{_n(x + 22)}" y2="{_n(y)}" '
                    f'stroke="{key.colour}" stroke-width="{key.width:g}"{dash}{op}/>'
                )
            out.append(
                f'<g class="key">{sym}<text x="{_n(x + 30)}" y="{_n(y + 4)}">'
                f"{_esc(key.label)}</text></g>"
            )
    out.append("</g>")
    return "".join(out)


def _diamond(x: float, y: float, r: float) -> str:
    return f"M{_n(x)} {_n(y - r)}L{_n(x + r)} {_n(y)}L{_n(x)} {_n(y + r)}L{_n(x - r)} {_n(y)}Z"


def _points(px: np.ndarray, py: np.ndarray) -> list[str]:
    """Runs of finite points as ``x,y x,y`` strings: a non-finite value breaks the line."""
    ok = np.isfinite(px) & np.isfinite(py)
    out: list[str] = []
    run: list[str] = []
    for x, y, good in zip(px.tolist(), py.tolist(), ok.tolist()):
        if good:
            run.append(f"{_n(x)},{_n(y)}")
        elif run:
            out.append(" ".join(run))
            run = []
    if run:
        out.append(" ".join(run))
    return out


@dataclass
class Chart:
    """A line chart: x (a step axis), a left y axis, optionally a right one; lines, shaded
    spans, vertical markers and a legend. Build it with the methods, then :meth:`render`."""

    chart_id: str
    kind: str  # the data-chart attribute: what the chart shows, for readers and tests
    x_title: str
    y_title: str
    y_log: bool = False
    x_log: bool = False
    y2_title: str | None = None
    y2_log: bool = False
    height: int = 420
    width: int = WIDTH
    integer_x: bool = True  # steps: ticks at whole numbers
    x_range: tuple[float, float] | None = None  # at least this x range (the run's steps)
    lines: list[_Line] = field(default_factory=list)
    spans: list[_Span] = field(default_factory=list)
    vlines: list[_VLine] = field(default_factory=list)
    keys: list[_Key] = field(default_factory=list)

    def line(
        self,
        x: Any,
        y: Any,
        *,
        colour: str,
        label: str | None = None,
        title: str | None = None,
        width: float = 1.5,
        dash: str | None = None,
        opacity: float = 1.0,
        right: bool = False,
        step: bool = False,
        markers: bool = False,
        cls: str = "series",
    ) -> None:
        """A polyline (broken at non-finite values); ``step`` holds each value until the next
        x; ``right`` plots against the second y axis; a ``label`` gets a legend entry."""
        self.lines.append(
            _Line(
                np.asarray(x, dtype=np.float64),
                np.asarray(y, dtype=np.float64),
                colour,
                width,
                dash,
                opacity,
                title if title is not None else (label or ""),
                right,
                step,
                markers,
                cls,
                label or (title or ""),
            )
        )
        if label:
            self.keys.append(_Key(label, colour, "line", dash, max(width, 2.0), opacity))

    def span(
        self,
        x0: float,
        x1: float,
        *,
        fill: str,
        title: str,
        text: str | None = None,
        cls: str = "span",
        data: dict[str, str] | None = None,
        row: int = 0,
    ) -> None:
        """A shaded vertical band from ``x0`` to ``x1`` under the lines, with hover text and
        a ``text`` label on line ``row`` from the top."""
        self.spans.append(_Span(float(x0), float(x1), fill, title, text, cls, data or {}, row))

    def vline(
        self,
        x: float,
        *,
        colour: str,
        title: str,
        dash: str | None = "4 3",
        y: float | None = None,
        text: str | None = None,
        cls: str = "marker",
        data: dict[str, str] | None = None,
    ) -> None:
        """A vertical line at ``x`` with hover text; a diamond at ``y`` (left axis) when
        given, else at the top of the plot."""
        self.vlines.append(_VLine(float(x), colour, title, dash, y, text, cls, data or {}))

    def key(self, label: str, colour: str, shape: str = "box", dash: str | None = None) -> None:
        """A legend entry for something drawn without one (spans, markers)."""
        if not any(k.label == label and k.shape == shape for k in self.keys):
            self.keys.append(_Key(label, colour, shape, dash))

    def render(self) -> str:
        has_y2 = any(ln.right for ln in self.lines)
        left = MARGIN_LEFT
        # charts over the run's steps keep the second axis' margin either way, so they line up
        wide = has_y2 or self.x_range is not None
        right = self.width - (MARGIN_RIGHT_Y2 if wide else MARGIN_RIGHT)
        rows = _legend_rows(self.keys, right - left)
        top = 10 + len(rows) * LEGEND_ROW + (8 if rows else 6)
        bottom = self.height - MARGIN_BOTTOM
        xs = [ln.x for ln in self.lines] + [np.asarray([s.x0, s.x1]) for s in self.spans]
        xs += [np.asarray([v.x]) for v in self.vlines]
        if self.x_range is not None:
            xs.append(np.asarray(self.x_range, dtype=np.float64))
        x_lo, x_hi = fit_range(xs, self.x_log, pad=0.0)
        if self.x_log:  # a little room so the first and last point are not on the frame
            x_lo, x_hi = fit_range([np.asarray([x_lo, x_hi])], True, pad=0.02)
        sx = Scale(x_lo, x_hi, left, right, self.x_log)
        y_data = [ln.y for ln in self.lines if not ln.right]
        y_data += [np.asarray([v.y]) for v in self.vlines if v.y is not None]
        sy = Scale(*fit_range(y_data, self.y_log), bottom, top, self.y_log)
        sy2 = None
        if has_y2:
            y2 = fit_range([ln.y for ln in self.lines if ln.right], self.y2_log)
            sy2 = Scale(*y2, bottom, top, self.y2_log)
        out = [
            f'<svg id="{self.chart_id}" class="chart" data-chart="{_esc(self.kind)}" '
            f'viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{_esc(self.kind)} chart"{_axis_attrs("x", sx)}{_axis_attrs("y", sy)}'
            f"{_axis_attrs('y2', sy2) if sy2 else ''}>"
        ]
        out.append(self._grid(sx, sy, sy2, left, right, top, bottom))
        out += [self._span(s, sx, top, bottom) for s in self.spans]
        out += [self._line(ln, sx, sy2 if ln.right and sy2 else sy) for ln in self.lines]
        out += [self._vline(v, sx, sy, top, bottom) for v in self.vlines]
        out.append(
            f'<rect class="frame" x="{left}" y="{_n(top)}" width="{_n(right - left)}" '
            f'height="{_n(bottom - top)}" fill="none" stroke="{FRAME}"/>'
        )
        out.append(self._titles(left, right, top, bottom, has_y2))
        if rows:
            out.append(_legend(rows, left, 8))
        out.append("</svg>")
        return "".join(out)

    def _grid(
        self,
        sx: Scale,
        sy: Scale,
        sy2: Scale | None,
        left: float,
        right: float,
        top: float,
        bottom: float,
    ) -> str:
        out = ['<g class="axes">']
        for value, label in sx.ticks(self.integer_x and not self.x_log):
            x = sx.at(value)
            if not left - 0.5 <= x <= right + 0.5:
                continue
            out.append(
                f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(bottom + 4)}" '
                f'stroke="{GRID}"/><text x="{_n(x)}" y="{_n(bottom + 17)}" '
                f'text-anchor="middle">{_esc(label)}</text>'
            )
        for value, label in sy.ticks():
            y = sy.at(value)
            if not top - 0.5 <= y <= bottom + 0.5:
                continue
            out.append(
                f'<line x1="{left - 4}" y1="{_n(y)}" x2="{_n(right)}" y2="{_n(y)}" '
                f'stroke="{GRID}"/><text x="{left - 7}" y="{_n(y + 4)}" '
                f'text-anchor="end">{_esc(label)}</text>'
            )
        if sy2 is not None:
            for value, label in sy2.ticks():
                y = sy2.at(value)
                if not top - 0.5 <= y <= bottom + 0.5:
                    continue
                out.append(
                    f'<line x1="{_n(right)}" y1="{_n(y)}" x2="{_n(right + 4)}" y2="{_n(y)}" '
                    f'stroke="{FRAME}"/><text x="{_n(right + 7)}" y="{_n(y + 4)}">'
                    f"{_esc(label)}</text>"
                )
        out.append("</g>")
        return "".join(out)

    def _titles(self, left: float, right: float, top: float, bottom: float, y2: bool) -> str:
        mid_y = (top + bottom) / 2
        out = [
            f'<text class="axis-title" x="{_n((left + right) / 2)}" y="{_n(bottom + 36)}" '
            f'text-anchor="middle">{_esc(self.x_title)}</text>'
        ]
        if self.y_title:
            out.append(
                f'<text class="axis-title" transform="translate(16 {_n(mid_y)}) rotate(-90)" '
                f'text-anchor="middle">{_esc(self.y_title)}</text>'
            )
        if y2 and self.y2_title:
            out.append(
                f'<text class="axis-title" transform="translate({_n(self.width - 12)} '
                f'{_n(mid_y)}) rotate(90)" text-anchor="middle">{_esc(self.y2_title)}</text>'
            )
        return "".join(out)

    def _span(self, s: _Span, sx: Scale, top: float, bottom: float) -> str:
        x0, x1 = sx.at(s.x0), sx.at(max(s.x1, s.x0))
        if not (math.isfinite(x0) and math.isfinite(x1)):
            return ""
        w = max(x1 - x0, 1.5)
        text = ""
        if s.text and w >= MIN_LABEL_WIDTH:
            room = int(w / (CHAR_W * 0.85))
            label = s.text if len(s.text) <= room else s.text[: max(room - 1, 1)] + "…"
            text = (
                f'<text class="span-label" x="{_n(x0 + w / 2)}" y="{_n(top + 13 + 13 * s.row)}" '
                f'text-anchor="middle">{_esc(label)}</text>'
            )
        return (
            f'<g class="{s.cls}"{_attrs(s.data)}>{_wrap_title(s.title)}'
            f'<rect x="{_n(x0)}" y="{_n(top)}" width="{_n(w)}" height="{_n(bottom - top)}" '
            f'fill="{s.fill}"/>{text}</g>'
        )

    def _line(self, ln: _Line, sx: Scale, sy: Scale) -> str:
        px, py = sx(ln.x), sy(ln.y)
        if ln.step and px.size > 1:  # hold each value until the next x: (x_i, y_i-1), (x_i, y_i)
            hx = np.repeat(px, 2)[1:]
            hy = np.repeat(py, 2)[:-1]
            px, py = hx, hy
        dash = f' stroke-dasharray="{ln.dash}"' if ln.dash else ""
        opacity = f' stroke-opacity="{ln.opacity:g}"' if ln.opacity < 1 else ""
        out = [f'<g class="{ln.cls}" data-label="{_esc(ln.label)}">{_wrap_title(ln.title)}']
        for pts in _points(px, py):
            if " " not in pts:  # a lone point between gaps: a dot, or it would not show
                x, y = pts.split(",")
                out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{ln.colour}"/>')
                continue
            out.append(
                f'<polyline points="{pts}" fill="none" stroke="{ln.colour}" '
                f'stroke-width="{ln.width:g}" stroke-linejoin="round"{dash}{opacity}/>'
            )
        if ln.markers:
            ok = np.isfinite(px) & np.isfinite(py)
            out += [
                f'<circle cx="{_n(x)}" cy="{_n(y)}" r="3" fill="{ln.colour}"/>'
                for x, y in zip(px[ok].tolist(), py[ok].tolist())
            ]
        out.append("</g>")
        return "".join(out)

    def _vline(self, v: _VLine, sx: Scale, sy: Scale, top: float, bottom: float) -> str:
        x = sx.at(v.x)
        if not math.isfinite(x):
            return ""
        y = sy.at(v.y) if v.y is not None else float("nan")
        if not math.isfinite(y):
            y = top + 7
        dash = f' stroke-dasharray="{v.dash}"' if v.dash else ""
        text = (
            f'<text class="marker-label" x="{_n(x + 4)}" y="{_n(top + 26)}" '
            f'fill="{v.colour}">{_esc(v.text)}</text>'
            if v.text
            else ""
        )
        return (
            f'<g class="{v.cls}"{_attrs(v.data)}>{_wrap_title(v.title)}'
            f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(bottom)}" '
            f'stroke="{v.colour}" stroke-width="1.5"{dash}/>'
            f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(bottom)}" '
            f'stroke="transparent" stroke-width="9"/>'  # a wider target for the hover text
            f'<path d="{_diamond(x, y, 7)}" fill="{v.colour}" stroke="#fff"/>{text}</g>'
        )


# --------------------------------------------------------------------------- bar chart


def bar_chart(
    chart_id: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    colours: Sequence[str],
    titles: Sequence[str],
    y_title: str,
    height: int = 320,
) -> str:
    """Vertical bars, one per label (a missing value leaves its slot empty), hover text each."""
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    top, bottom = 16, height - MARGIN_BOTTOM
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = fit_range([np.asarray([*finite, 0.0])], False)
    lo = min(lo, 0.0) if min(finite, default=0.0) >= 0 else lo
    sy = Scale(lo, hi, bottom, top, False)
    band = (right - left) / max(len(labels), 1)
    out = [
        f'<svg id="{chart_id}" class="chart" data-chart="bars" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-label="bar chart">'
    ]
    out.append('<g class="axes">')
    for value, label in sy.ticks():
        y = sy.at(value)
        if top - 0.5 <= y <= bottom + 0.5:
            out.append(
                f'<line x1="{left - 4}" y1="{_n(y)}" x2="{right}" y2="{_n(y)}" '
                f'stroke="{GRID}"/><text x="{left - 7}" y="{_n(y + 4)}" '
                f'text-anchor="end">{_esc(label)}</text>'
            )
    out.append("</g>")
    zero = sy.at(0.0) if lo <= 0 <= hi else float(bottom)
    room = int(band / CHAR_W)
    for i, (label, score, colour, title) in enumerate(zip(labels, values, colours, titles)):
        x = left + i * band + band * 0.15
        shown = label if len(label) <= room else label[: max(room - 1, 1)] + "…"
        bar = ""
        if score is not None and math.isfinite(score):
            y = sy.at(score)
            bar = (
                f'<rect x="{_n(x)}" y="{_n(min(y, zero))}" width="{_n(band * 0.7)}" '
                f'height="{_n(max(abs(zero - y), 0.5))}" fill="{colour}"/>'
            )
        out.append(
            f'<g class="bar" data-label="{_esc(label)}">{_wrap_title(title)}{bar}'
            f'<text x="{_n(left + (i + 0.5) * band)}" y="{_n(bottom + 17)}" '
            f'text-anchor="middle">{_esc(shown)}</text></g>'
        )
    out.append(
        f'<rect class="frame" x="{left}" y="{top}" width="{right - left}" '
        f'height="{bottom - top}" fill="none" stroke="{FRAME}"/>'
        f'<text class="axis-title" transform="translate(16 {_n((top + bottom) / 2)}) '
        f'rotate(-90)" text-anchor="middle">{_esc(y_title)}</text></svg>'
    )
    return "".join(out)


# --------------------------------------------------------------------------- heatmap


def viridis(n: int) -> np.ndarray:
    """``n`` colours (uint8 RGB rows) along viridis, interpolated between its ten anchors."""
    anchors = np.asarray(
        [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in VIRIDIS], dtype=np.float64
    )
    t = np.linspace(0.0, len(VIRIDIS) - 1.0, n)
    lo = np.minimum(np.floor(t).astype(np.int64), len(VIRIDIS) - 2)
    frac = (t - lo)[:, None]
    rgb = anchors[lo] * (1 - frac) + anchors[lo + 1] * frac
    out: np.ndarray = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return out


def png_indexed(index: np.ndarray, palette: np.ndarray) -> bytes:
    """An 8-bit palette PNG of ``index`` (rows × columns of palette indices, uint8) with
    ``palette`` (up to 256 RGB rows): zlib and struct, no imaging library."""
    h, w = index.shape

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + row.tobytes() for row in index.astype(np.uint8))  # filter: none
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", palette.astype(np.uint8).tobytes())
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def heatmap(
    chart_id: str,
    z: np.ndarray,
    columns: np.ndarray,
    row_labels: Sequence[str],
    row_titles: Sequence[str],
    *,
    x_title: str,
    colour_title: str,
    height: int,
) -> str:
    """Rows × columns of log10 values as a palette PNG, rows labelled, columns at ``columns``
    (their x values, ticks at a few of them), a colour bar with decade ticks, and a hover text
    per row. Non-finite cells are light grey."""
    rows, cols = z.shape
    longest = max((len(label) for label in row_labels), default=0)
    left, right = int(min(max(longest * CHAR_W + 20, 60), 260)), WIDTH - 110
    top, bottom = 12, height - MARGIN_BOTTOM
    finite = z[np.isfinite(z)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    levels = 255
    scaled = np.clip(np.round((z - lo) / (hi - lo) * (levels - 1)), 0, levels - 1)
    index = np.where(np.isfinite(z), scaled, levels).astype(np.uint8)  # 255: missing
    palette = np.vstack([viridis(levels), np.asarray([MISSING_CELL], dtype=np.uint8)])
    png = base64.b64encode(png_indexed(index, palette)).decode("ascii")
    out = [
        f'<svg id="{chart_id}" class="chart" data-chart="heatmap" data-rows="{rows}" '
        f'data-columns="{cols}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="heatmap">'
        f'<image x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        f'preserveAspectRatio="none" style="image-rendering:pixelated" '
        f'href="data:image/png;base64,{png}"/>'
    ]
    row_h = (bottom - top) / max(rows, 1)
    every = max(1, math.ceil(14 / row_h))  # a label per row when rows are at least 14 high
    for i, (label, title) in enumerate(zip(row_labels, row_titles)):
        y = top + i * row_h
        text = ""
        if i % every == 0:
            room = int((left - 12) / CHAR_W)
            shown = label if len(label) <= room else "…" + label[-(room - 1) :]
            text = (
                f'<text x="{left - 6}" y="{_n(y + row_h / 2 + 4)}" text-anchor="end">'
                f"{_esc(shown)}</text>"
            )
        out.append(
            f'<g class="row">{_wrap_title(title)}<rect x="{left}" y="{_n(y)}" '
            f'width="{right - left}" height="{_n(row_h)}" fill="transparent"/>{text}</g>'
        )
    col_w = (right - left) / max(cols, 1)
    picks = range(0, cols, max(1, math.ceil(cols / (TARGET_TICKS + 1))))
    spacing = float(columns[-1] - columns[0]) / (TARGET_TICKS + 1) or 1.0
    out.append('<g class="axes">')
    for j in picks:
        x = left + (j + 0.5) * col_w
        out.append(
            f'<line x1="{_n(x)}" y1="{bottom}" x2="{_n(x)}" y2="{bottom + 4}" stroke="{FRAME}"/>'
            f'<text x="{_n(x)}" y="{bottom + 17}" text-anchor="middle">'
            f"{_esc(fmt_step(float(columns[j]), spacing))}</text>"
        )
    out.append("</g>")
    out.append(
        f'<rect class="frame" x="{left}" y="{top}" width="{right - left}" '
        f'height="{bottom - top}" fill="none" stroke="{FRAME}"/>'
        f'<text class="axis-title" x="{_n((left + right) / 2)}" y="{bottom + 36}" '
        f'text-anchor="middle">{_esc(x_title)}</text>'
    )
    out.append(_colour_bar(chart_id, lo, hi, right + 24, top, bottom, colour_title))
    out.append("</svg>")
    return "".join(out)


def _colour_bar(
    chart_id: str, lo: float, hi: float, x: float, top: float, bottom: float, title: str
) -> str:
    """A vertical viridis gradient with ticks at decades (``lo``/``hi`` are log10 values)."""
    grad = f"{chart_id}-scale"
    stops = "".join(
        f'<stop offset="{i / (len(VIRIDIS) - 1):.3g}" stop-color="{c}"/>'
        for i, c in enumerate(reversed(VIRIDIS))
    )
    out = [
        f'<defs><linearGradient id="{grad}" x1="0" y1="0" x2="0" y2="1">{stops}'
        f'</linearGradient></defs><rect class="colour-bar" x="{_n(x)}" y="{_n(top)}" '
        f'width="14" height="{_n(bottom - top)}" fill="url(#{grad})"/>'
    ]
    for value, label in log_ticks(lo, hi):
        t = (math.log10(value) - lo) / (hi - lo)
        y = bottom - t * (bottom - top)
        out.append(
            f'<line x1="{_n(x + 14)}" y1="{_n(y)}" x2="{_n(x + 18)}" y2="{_n(y)}" '
            f'stroke="{FRAME}"/><text x="{_n(x + 21)}" y="{_n(y + 4)}">{_esc(label)}</text>'
        )
    out.append(
        f'<text class="axis-title" x="{_n(x - 4)}" y="{_n(bottom + 17)}">{_esc(title)}</text>'
    )
    return "".join(out)
