"""One concise console line per event, and a short summary at the end, through ``logging``.

Example::

    unstuck: step 99 plateau (early, train) · lr_too_low 0.73 → try lr ≈ 4.6e-05 (×46.3)
    unstuck: step 299 lr ×46.3 kept
    unstuck: summary after 600 steps: 1 plateau: train 0–299 (early)
    unstuck:   lr_too_low 0.73 → try lr ≈ 4.6e-05 (×46.3)
    unstuck:   lr ×46.3 at step 99: kept
    unstuck:   put lr=4.6e-05 in your config (unstuck ran at ×46.3 of your schedule)

A finding's line carries the concrete change its remedies ask for (an LR, a momentum, a warm-up
length, a clipping threshold, a batch size), not only the cause: the number is what the user
acts on. Nothing else is logged at INFO.

Where the lines go: everything goes through the standard ``logging`` logger ``unstuck``. With
``console=True`` (the default) the front-ends call :func:`ensure_console_handler`, which

- sets the ``unstuck`` logger to INFO when its level is NOTSET (nobody chose one). A record
  propagating to the root logger's handlers is filtered by those handlers' levels only, never by
  the root *logger's* level (Python's ``Logger.propagate`` docs), so a script that called
  ``logging.basicConfig()`` (root at WARNING, a handler at NOTSET) prints unstuck's lines through
  its own handler and format. A level set on purpose, before or after,
  ``logging.getLogger("unstuck").setLevel(logging.WARNING)``, still silences them, and a handler
  of the application's at WARNING still filters them.
- adds a stderr handler to the ``unstuck`` logger only when neither it nor the root logger has a
  handler, so an application's own logging setup decides where the lines go.

``console=False`` leaves logging configuration alone and prints no summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from unstuck.types import ActionRecord, Finding, Plateau, Remedy

__all__ = [
    "LOGGER_NAME",
    "console_above_progress_bars",
    "ensure_console_handler",
    "finding_change",
    "format_event_line",
    "format_finding",
    "format_summary",
]

LOGGER_NAME = "unstuck"
_HANDLER_NAME = "unstuck-console"
SUMMARY_FINDINGS = 3  # causes listed in the summary, most confident first
SUMMARY_ACTIONS = 4  # actions listed in the summary, latest last
SUMMARY_PLATEAUS = 3
_TEXT_WIDTH = 90  # a finding's own summary is cut here when it has no concrete change


def ensure_console_handler(level: int = logging.INFO) -> None:
    """Make unstuck's INFO lines visible by default, without overriding the app's choices."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        # Otherwise the logger inherits the root's WARNING and basicConfig() scripts see nothing.
        logger.setLevel(level)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_PrefixFormatter())
    logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is printed, not when the handler was
    made: a live progress display (Rich's, the default bar of Lightning) swaps ``sys.stderr``
    for a proxy that prints above the bar, and a handler holding the old stream would write
    through the bar instead."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _PrefixFormatter(logging.Formatter):
    """``unstuck: message``, once: warnings that already name unstuck keep a single prefix
    (under the application's own handlers they need theirs)."""

    PREFIX = "unstuck: "

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if text.startswith(self.PREFIX) else self.PREFIX + text


def console_above_progress_bars() -> contextlib.AbstractContextManager[Any]:
    """While a tqdm progress bar is drawn (Lightning's, the demo's), print unstuck's console
    lines above it instead of onto it. Only unstuck's own stderr handler is redirected; an
    application that configured logging keeps its handlers as they are."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return contextlib.nullcontext()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        return contextlib.nullcontext()
    redirect: contextlib.AbstractContextManager[Any] = logging_redirect_tqdm(loggers=[logger])
    return redirect


# -- the concrete change a finding asks for ---------------------------------------------------


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _lr_text(lr: float) -> str:
    """Two significant digits, as an LR is written in a config: 0.003, 4.6e-05."""
    return f"{lr:.2g}" if 1e-3 <= lr < 1e3 else f"{lr:.1e}"


def _lrs_text(lrs: Sequence[float]) -> str | None:
    """One LR, or one per param group when they differ (at most three)."""
    distinct = list(dict.fromkeys(_lr_text(v) for v in lrs))
    if not distinct or len(distinct) > 3:
        return None
    return distinct[0] if len(distinct) == 1 else ", ".join(distinct) + " (by param group)"


def _lr_change(params: dict[str, Any], lrs: Sequence[float], multiplier: float) -> str | None:
    # ``estimate`` is the whole change the measurement asks for; ``factor`` is what one action
    # applies (capped at two decades). A config edit can take the whole of it.
    factor = _positive(params.get("estimate")) or _positive(params.get("factor"))
    if factor is None:
        return None
    new = _lrs_text([lr * multiplier * factor for lr in lrs if _positive(lr)])
    return f"lr ≈ {new} (×{factor:.3g})" if new else f"lr ×{factor:.3g}"


def _number(key: str, text: Callable[[float], str]) -> Callable[..., str | None]:
    def change(params: dict[str, Any], lrs: Sequence[float], multiplier: float) -> str | None:
        value = _positive(params.get(key))
        return None if value is None else text(value)

    return change


# action name -> (what it changes, whether the text is an absolute value, formatter)
_CHANGES: dict[str, tuple[str, bool, Callable[..., str | None]]] = {
    "lr_scale": ("lr", True, _lr_change),
    "add_momentum": ("momentum", True, _number("momentum", lambda m: f"momentum={m:g}")),
    "warmup": ("warmup", True, _number("length", lambda n: f"a warm-up of {n:.0f} steps")),
    "raise_clip_norm": ("clip", True, _number("max_norm", lambda v: f"max_norm={v:.3g}")),
    "clip_adjust": ("clip", False, _number("factor", lambda f: f"max_norm ×{f:.3g}")),
    "raise_batch_size": ("batch", True, _number("batch_size", lambda n: f"batch size {n:.0f}")),
    "lower_batch_size": ("batch", True, _number("batch_size", lambda n: f"batch size {n:.0f}")),
    "accumulation_change": (
        "batch",
        False,
        _number("factor", lambda f: f"a ×{f:.3g} larger batch (accumulate gradients)"),
    ),
    "lower_weight_decay": (
        "weight_decay",
        True,
        _number("weight_decay", lambda v: f"weight_decay={v:.2g}"),
    ),
}


def finding_change(
    finding: Finding, lrs: Sequence[float] = (), lr_multiplier: float = 1.0
) -> str | None:
    """The change to make, e.g. ``lr ≈ 4.6e-05 (×46.3)``; ``None`` when no remedy has a number.

    ``lrs``: each param group's LR as configured (without unstuck's multiplier); without them an
    LR change is given as a factor. A remedy's LR factor is relative to the LR the run had when
    the finding was made: the configured one times unstuck's multiplier then, which the Guard
    stamps into ``evidence["lr_multiplier"]`` (``lr_multiplier`` is the fallback). At most two
    changes, joined by "or"; an absolute value wins over a factor for the same setting
    (``max_norm=1.2`` over ``max_norm ×10``).
    """
    lr_multiplier = _positive(finding.evidence.get("lr_multiplier")) or lr_multiplier
    candidates: list[tuple[bool, str, str]] = []
    for remedy in finding.remedies:
        if not isinstance(remedy, Remedy) or remedy.action not in _CHANGES:
            continue
        topic, absolute, make = _CHANGES[remedy.action]
        text = make(dict(remedy.params), lrs, lr_multiplier)
        if text is not None:
            candidates.append((absolute, topic, text))
    candidates.sort(key=lambda c: not c[0])  # stable: the rule's own order otherwise
    chosen: dict[str, str] = {}
    for _, topic, text in candidates:
        chosen.setdefault(topic, text)
    texts = list(chosen.values())[:2]
    return " or ".join(texts) if texts else None


def format_finding(finding: Finding, lrs: Sequence[float] = (), lr_multiplier: float = 1.0) -> str:
    """``lr_too_low 0.73 → try lr ≈ 4.6e-05 (×46.3)``, or ``cause 0.73`` with no number."""
    head = f"{finding.cause} {finding.confidence:.2f}"
    change = finding_change(finding, lrs, lr_multiplier)
    return head if change is None else f"{head} → try {change}"


# -- one line per flush -----------------------------------------------------------------------


def _action_label(action: ActionRecord) -> str:
    return str(action.params.get("label", action.name))


def format_event_line(
    step: int,
    *,
    series: str = "train",
    state: str | None = None,
    plateau: Plateau | None = None,
    findings: Sequence[Finding] = (),
    actions: Sequence[ActionRecord] = (),
    lrs: Sequence[float] = (),
    lr_multiplier: float = 1.0,
) -> str:
    """Compose the parts that happened at one flush into one line ("" when nothing is worth one).

    ``lrs`` (each group's configured LR) turn an LR remedy's factor into the LR to try
    (``lr_multiplier``: see :func:`finding_change`).
    """
    parts: list[str] = []
    if state is not None:
        if state == "plateau" and plateau is not None:
            parts.append(f"plateau ({plateau.kind}, {series})")
        else:
            parts.append(f"{state.replace('_', ' ')} ({series})")
    # A symptom whose root was found (its evidence names it, and halved its confidence) is in
    # the record, not on the console: 'capacity_limit 0.17' right after a kept LR rescue reads
    # as a second problem when it is the first one's echo.
    shown = [f for f in findings if not f.evidence.get("explained_by")]
    parts += [format_finding(f, lrs, lr_multiplier) for f in shown]
    for a in actions:
        label = _action_label(a)
        parts.append(label if a.outcome == "pending" else f"{label} {a.outcome.replace('_', ' ')}")
    return f"step {step} " + " · ".join(parts) if parts else ""  # "": nothing worth a line


# -- the summary at close ---------------------------------------------------------------------

_OUTCOME_TEXT = {
    "pending": "not judged yet",
    "kept": "kept",
    "rolled_back": "rolled back (undone: it did not help, the run went on from before it)",
    "failed": "failed (undone)",
    "unverified": "kept, not judged (the run ended first)",
    "probing": "interrupted (undone)",
    "restored": "measured, then undone",
    "control_kept": "tried, the run as it was did better (undone)",
    "interrupted": "interrupted (undone)",
    "skipped": "skipped",
}


def _plateau_text(p: Plateau) -> str:
    where = f"from step {p.start}, still open" if p.end is None else f"steps {p.start}–{p.end}"
    return f"{p.series} {where} ({p.kind.replace('_', ' ')})"


def _plateaus_text(plateaus: Sequence[Plateau]) -> str:
    if not plateaus:
        return "no plateau"
    shown = [_plateau_text(p) for p in plateaus[:SUMMARY_PLATEAUS]]
    more = len(plateaus) - len(shown)
    noun = "plateau" if len(plateaus) == 1 else "plateaus"
    return f"{len(plateaus)} {noun}: " + "; ".join(shown) + (f"; +{more} more" if more else "")


def _top_findings(findings: Sequence[Finding], top: int) -> list[Finding]:
    """The most confident finding of each cause (the latest on a tie), best causes first;
    symptoms whose root was named (``explained_by``) are left to the record."""
    best: dict[str, Finding] = {}
    for f in findings:
        if f.evidence.get("explained_by"):
            continue
        kept = best.get(f.cause)
        if kept is None or f.confidence >= kept.confidence:
            best[f.cause] = f
    return sorted(best.values(), key=lambda f: (-f.confidence, f.cause))[:top]


def _summary_finding(f: Finding, lrs: Sequence[float]) -> str:
    line = format_finding(f, lrs)
    if f.series != "train":
        line = line.replace(f.cause, f"{f.cause} ({f.series})", 1)
    if "→" in line or not f.summary:
        return line
    text = " ".join(f.summary.split())
    if len(text) > _TEXT_WIDTH:
        text = text[: _TEXT_WIDTH - 1] + "…"
    return f"{line}: {text}"


def format_summary(
    steps: int,
    *,
    plateaus: Sequence[Plateau] = (),
    findings: Sequence[Finding] = (),
    actions: Sequence[ActionRecord] = (),
    lrs: Sequence[float] = (),
    lr_multiplier: float = 1.0,
    policy: str | None = None,
) -> list[str]:
    """The end-of-run summary, one string per console line (the first one is the header).

    What happened (plateaus), why (the top findings, each with its change), what unstuck did
    (actions and their verdicts) and, when unstuck's LR multiplier at the end of the run
    (``lr_multiplier``) is not 1, the LR to put in the config so that the next run starts where
    this one was rescued to. Under ``policy="observe"`` a closing line says that the changes
    listed are the user's to make. A run with nothing to report is one line.
    """
    head = f"summary after {steps} steps: {_plateaus_text(plateaus)}"
    if not findings and not actions:
        return [head + "; nothing to change"]
    lines = [head]
    top = _top_findings(findings, SUMMARY_FINDINGS)
    lines += ["  " + _summary_finding(f, lrs) for f in top]
    shown = list(actions)[-SUMMARY_ACTIONS:]
    if len(actions) > len(shown):
        lines.append(f"  ({len(actions) - len(shown)} earlier actions not shown)")
    for a in shown:
        verdict = _OUTCOME_TEXT.get(a.outcome, a.outcome.replace("_", " "))
        lines.append(f"  {_action_label(a)} at step {a.step}: {verdict}")
    if _positive(lr_multiplier) and abs(math.log(lr_multiplier)) > 1e-9:
        new = _lrs_text([lr * lr_multiplier for lr in lrs if _positive(lr)])
        # Plain digits past 1,000 (×1337, not ×1.34e+03): a factor is read, not parsed.
        times = f"{lr_multiplier:.3g}" if lr_multiplier < 1000 else f"{lr_multiplier:.0f}"
        ran = f"unstuck ran at ×{times} of your schedule"
        lines.append(
            f"  put lr={new} in your config ({ran})"
            if new
            else f"  multiply your LR by {times} in your config ({ran})"
        )
    if policy == "observe" and any(finding_change(f) for f in top):
        lines.append(
            "  unstuck changed nothing (policy='observe'): make the change above in your config, "
            "or pass policy='rescue' to let unstuck try it"
        )
    return lines
