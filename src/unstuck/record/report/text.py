"""Text for the report: escaping, number formatting, key/value lists, and short notes.

Every string that comes from the run goes through :func:`esc` (``html.escape`` with quotes, since
some of it lands in attributes) exactly once, where it is written into the page.
"""

from __future__ import annotations

import html
import math
import re
import textwrap
from collections.abc import Mapping
from typing import Any

__all__ = [
    "drop_missing_clauses",
    "esc",
    "fmt_number",
    "fmt_value",
    "hover",
    "kv_list",
    "kv_table",
    "natural_key",
    "note",
    "plural",
    "without_missing",
]

MAX_LIST_ITEMS = 8  # items of a list or dict shown in an evidence / probe value
MAX_TEXT = 400  # characters of one evidence / probe string shown
WRAP = 90  # characters per line of hover text
# "steepest ×—": a formatted value that was missing (unstuck's engine writes "—" for None)
_MISSING_CLAUSE = re.compile(r"[,;]?\s*[A-Za-z_][A-Za-z_ ]* ×—")


def esc(value: Any) -> str:
    """HTML-escape anything the run supplied (quotes too: some of it lands in attributes)."""
    return html.escape(str(value), quote=True)


def fmt_number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def fmt_value(value: Any, depth: int = 0) -> str:
    """A compact, unescaped one-line rendering of an evidence or probe value."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return fmt_number(value)
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
    if depth > 2:
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())
        shown = ", ".join(f"{k}: {fmt_value(v, depth + 1)}" for k, v in items[:MAX_LIST_ITEMS])
        more = f", … ({len(items)} keys)" if len(items) > MAX_LIST_ITEMS else ""
        return "{" + shown + more + "}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(fmt_value(v, depth + 1) for v in value[:MAX_LIST_ITEMS])
        more = f", … ({len(value)} items)" if len(value) > MAX_LIST_ITEMS else ""
        return "[" + shown + more + "]"
    return str(value)


def without_missing(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` less the keys whose value is None: a missing number is not worth a line."""
    return {k: v for k, v in data.items() if v is not None}


def drop_missing_clauses(text: str) -> str:
    """``"(steepest; steepest ×—, valley ×0.3)"`` → ``"(steepest, valley ×0.3)"``: a clause
    whose value was missing says nothing."""
    out = _MISSING_CLAUSE.sub("", text)
    return re.sub(r"\(\s*[,;]\s*", "(", out)


def kv_list(data: Mapping[str, Any]) -> str:
    """``key: value`` lines as an escaped HTML list."""
    if not data:
        return '<span class="note">none</span>'
    rows = "".join(f"<li><code>{esc(k)}</code>: {esc(fmt_value(v))}</li>" for k, v in data.items())
    return f'<ul class="kv">{rows}</ul>'


def kv_table(data: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(fmt_value(v))}</td></tr>" for k, v in data.items()
    )
    return f'<table class="kv">{rows}</table>'


def hover(*lines: str) -> str:
    """Hover text (an SVG ``<title>``, escaped where it is written): lines wrapped at WRAP."""
    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, WRAP) or [""]
    return "\n".join(out)


def natural_key(name: str) -> list[Any]:
    """``layers.10`` after ``layers.2``: digits compare as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 probe``, ``2 probes``, ``3 series``."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
