"""One concise console line per event, through the standard ``logging`` logger ``unstuck``.

Example::

    unstuck: step 1200 plateau (mid, train) · lr_too_low 0.87 · lr ×3 (kept)

Nothing else is logged at INFO. The Guard installs a stream handler on the ``unstuck`` logger
only when neither it nor the root logger has one, so an application's own logging setup wins.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from unstuck.types import ActionRecord, Finding, Plateau

__all__ = ["LOGGER_NAME", "ensure_console_handler", "format_event_line"]

LOGGER_NAME = "unstuck"
_HANDLER_NAME = "unstuck-console"


def ensure_console_handler(level: int = logging.INFO) -> None:
    """Print unstuck's lines to stderr unless the application configured logging itself."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("unstuck: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(level)


def format_event_line(
    step: int,
    *,
    series: str = "train",
    state: str | None = None,
    plateau: Plateau | None = None,
    findings: Sequence[Finding] = (),
    actions: Sequence[ActionRecord] = (),
) -> str:
    """Compose the parts that happened at one flush into one line."""
    parts: list[str] = []
    if state is not None:
        if state == "plateau" and plateau is not None:
            parts.append(f"plateau ({plateau.kind}, {series})")
        else:
            parts.append(f"{state.replace('_', ' ')} ({series})")
    parts += [f"{f.cause} {f.confidence:.2f}" for f in findings]
    for a in actions:
        label = str(a.params.get("label", a.name))
        parts.append(label if a.outcome == "pending" else f"{label} {a.outcome.replace('_', ' ')}")
    return f"step {step} " + " · ".join(parts)
