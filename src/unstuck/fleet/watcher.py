"""The state of every watched run, kept between refreshes: its reader, its own streaming
detector, where its episode began, and which episodes ``--on-stall`` was already run for.

Each run's new loss points go into its own :class:`PlateauDetector` one point at a time, as
``unstuck analyze`` feeds a log (``analysis._detect``): the detector's verdict depends on the
order it was asked in, so feeding point by point makes ``watch``'s state the same as
``analyze``'s whatever the refresh cadence (``feed="refresh"`` feeds each refresh's points in one
``update_many``, as a live Guard's flush does: much cheaper to catch up on a long run, but its
verdicts can differ from ``analyze``'s).

The top finding is the detector's own reading (what state, since when) unless ``diagnose`` is
on: then ``analyze``'s rules run on the whole log once per episode, when the run enters a
plateau or divergence, and their top finding is shown until the episode ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable
from typing import Any

from unstuck.detect.detector import DEFAULT_MIN_POINTS, WARMUP_FACTOR, PlateauDetector
from unstuck.fleet.sources import RunSource, SourceError, discover, mlflow_client
from unstuck.fleet.tail import Poll, Tail, TailError, tail_for
from unstuck.types import ACT_ON_STATES, DetectorState

__all__ = [
    "ATTENTION",
    "EPISODE_STATES",
    "Watcher",
    "shell_hook",
]

logger = logging.getLogger(__name__)

# Who needs attention first: the order of the table, most urgent on top.
ATTENTION = (
    "diverging",
    "plateau",
    "oscillating",
    "unreadable",
    "stale",
    "slow",
    "hidden_progress",
    "unknown",
    "improving",
    "finished",
)
# the states --on-stall is run for
EPISODE_STATES = frozenset({DetectorState.PLATEAU, DetectorState.DIVERGING})
STUCK_STATES = ACT_ON_STATES  # "stuck for" is counted in the states the rescue acts on
DEFAULT_STALE_AFTER = 900.0  # seconds without new data before a live run is called stale
SPARK_POINTS = 120  # points kept per run for the sparkline (every k-th, k doubling as it grows)
HOOK_TIMEOUT_S = 60.0  # an --on-stall command running longer is killed
WARMUP_POINTS = WARMUP_FACTOR * DEFAULT_MIN_POINTS  # no plateau is called before this many points


class _Spark:
    """A bounded, evenly thinned copy of the series for the sparkline."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[float] = []
        self._stride = 1
        self._seen = 0

    def add(self, steps: list[int], values: list[float]) -> None:
        for s, v in zip(steps, values):
            if self._seen % self._stride == 0:
                self.steps.append(s)
                self.values.append(v)
            self._seen += 1
            if len(self.steps) >= 2 * SPARK_POINTS:
                self.steps, self.values = self.steps[::2], self.values[::2]
                self._stride *= 2


class _Run:
    """One watched run: its reader, detector and what was last decided about it."""

    def __init__(self, source: RunSource, tail: Tail | None, first_seen: float) -> None:
        self.source = source
        self.tail = tail
        self.detector = PlateauDetector("train")
        self.spark = _Spark()
        self.first_seen = first_seen
        self.state_since: int | None = None  # the step the detector's state last changed at
        self.state_seen_at = first_seen  # when watch first saw that state
        self.last_value: float | None = None
        self.last_step: int | None = None
        self.finished = False
        self.modified: float | None = None
        self.error: str | None = source.error
        self.finding: tuple[tuple[Any, ...], str] | None = None  # (episode, analyze's finding)
        self.resets = 0

    def restart(self, now: float) -> None:
        self.detector = PlateauDetector("train")
        self.spark = _Spark()
        self.state_since = None
        self.state_seen_at = now
        self.last_value = None
        self.last_step = None
        self.resets += 1

    def feed(self, poll: Poll, now: float, pointwise: bool) -> None:
        if poll.reset:
            self.restart(now)
        if poll.steps:
            before = self.detector.state
            if pointwise:
                for s, v in zip(poll.steps, poll.values):
                    was = self.detector.state
                    if self.detector.update(s, v) != was:
                        self.state_since = s
            else:
                if self.detector.update_many(poll.steps, poll.values) != before:
                    self.state_since = poll.steps[-1]
            if self.detector.state != before:
                self.state_seen_at = now
            self.spark.add(poll.steps, poll.values)
            self.last_value = poll.values[-1]
            self.last_step = poll.steps[-1]
        self.finished = poll.finished
        self.modified = poll.modified
        self.error = None

    def episode(self) -> tuple[Any, ...] | None:
        """(run, state, start) of the episode the run is in, if it is in one."""
        state = self.detector.state
        if state not in EPISODE_STATES:
            return None
        current = self.detector.current
        plateau = current if state == DetectorState.PLATEAU else None
        start = plateau.start if plateau is not None else self.state_since
        return (self.source.key, state, start)


def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _detector_finding(run: _Run, state: str) -> str:
    """The top finding when analyze's rules are not run: what the detector says, and since when."""
    d = run.detector
    if state == DetectorState.PLATEAU and d.current is not None:
        return f"loss flat since step {d.current.start} ({d.current.kind} plateau)"
    if state == DetectorState.DIVERGING:
        if d.stats().get("reason") == "nonfinite":
            return "non-finite loss values in a row"
        return "loss rising"
    if state == DetectorState.OSCILLATING:
        return "loss swinging with no net progress"
    if state == DetectorState.SLOW:
        return "improving, slowly"
    if state == DetectorState.HIDDEN_PROGRESS:
        return "loss flat, weights still moving: wait"
    if state == DetectorState.UNKNOWN:
        return f"warming up ({d.n_points} of {WARMUP_POINTS} points)"
    return ""


class Watcher:
    """Every run under ``paths``, refreshed incrementally by :meth:`refresh`.

    ``on_stall`` is called with a run's row when it enters a plateau or divergence, once per
    episode (run, state, start of the plateau or of the divergence), and only for runs that are
    live (neither finished nor stale). ``clock`` is injectable for tests of staleness.
    """

    def __init__(
        self,
        paths: list[str],
        *,
        tracking_uri: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        feed: str = "point",
        diagnose: bool = False,
        on_stall: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if feed not in ("point", "refresh"):
            raise ValueError(f"feed must be 'point' or 'refresh', got {feed!r}")
        if not stale_after > 0:
            raise ValueError(f"stale_after must be > 0 seconds, got {stale_after!r}")
        self.paths = list(paths)
        self.tracking_uri = tracking_uri
        self.stale_after = float(stale_after)
        self.pointwise = feed == "point"
        self.diagnose = diagnose
        self.on_stall = on_stall
        self.clock = clock
        self.fired: set[tuple[Any, ...]] = set()
        self.runs: dict[str, _Run] = {}
        self._client: Any = None
        if any(p.startswith("mlflow:") for p in self.paths):
            self._client = mlflow_client(tracking_uri)
        self.refreshes = 0

    @property
    def points_read(self) -> int:
        """Points parsed by every reader so far, re-reads included."""
        return sum(r.tail.points_read for r in self.runs.values() if r.tail is not None)

    def _sources(self) -> list[RunSource]:
        try:
            known = {r.source.path: r.source for r in self.runs.values() if r.source.error is None}
            return discover(self.paths, self._client, known)
        except SourceError:
            if self.refreshes == 0:
                raise
            logger.warning("unstuck watch: listing runs failed; keeping the last list")
            return [r.source for r in self.runs.values()]

    def refresh(self) -> list[dict[str, Any]]:
        """Read what is new in every run and return the rows, most urgent first."""
        now = self.clock()
        sources = self._sources()
        keep: dict[str, _Run] = {}
        for src in sources:
            run = self.runs.get(src.key)
            if run is None or (run.source.error and not src.error and run.tail is None):
                tail = None
                if src.error is None:
                    try:
                        tail = tail_for(src.fmt, src.path, src.run_id, self._client)
                    except (TailError, ValueError, OSError) as exc:
                        src = dataclasses.replace(src, error=str(exc))
                run = _Run(src, tail, now)
            keep[src.key] = run
        for key, gone in self.runs.items():
            if key not in keep and gone.tail is not None:
                gone.tail.close()
        self.runs = keep
        for run in self.runs.values():
            if run.tail is None:
                continue
            try:
                poll = run.tail.poll()
            except TailError as exc:
                run.error = str(exc)
                continue
            except Exception as exc:  # one run's reader never stops the watch
                logger.debug("reading %s failed", run.source.name, exc_info=True)
                run.error = f"{type(exc).__name__}: {exc}"
                continue
            run.feed(poll, now, self.pointwise)
        rows = [self._row(run, now) for run in self.runs.values()]
        rows.sort(key=lambda r: (ATTENTION.index(r["state"]), -(r["stuck_steps"] or 0), r["name"]))
        self._fire(rows)
        self.refreshes += 1
        return rows

    def _row(self, run: _Run, now: float) -> dict[str, Any]:
        d = run.detector
        detector_state = d.state
        stale = (
            not run.finished and run.modified is not None and now - run.modified > self.stale_after
        )
        if run.error is not None:
            state = "unreadable"
        elif run.finished:
            state = "finished"
        elif stale:
            state = "stale"
        else:
            state = detector_state
        current = d.current
        last_step = run.last_step
        plateau_start = current.start if current is not None else None
        stuck_from: int | None = None
        if detector_state == DetectorState.PLATEAU and plateau_start is not None:
            stuck_from = plateau_start
        elif detector_state in STUCK_STATES:
            stuck_from = run.state_since
        stuck_steps = (
            last_step - stuck_from if stuck_from is not None and last_step is not None else None
        )
        if state == "unreadable":
            finding = run.error or ""
        elif state == "stale" and run.modified is not None:
            finding = f"no new data for {_fmt_age(now - run.modified)}"
        else:
            finding = _detector_finding(run, detector_state)
        episode = run.episode()
        if run.finding is not None and run.finding[0] == episode:
            finding = run.finding[1]
        last = run.last_value
        return {
            "name": run.source.name,
            "source": run.source.fmt,
            "path": run.source.path,
            "run_id": run.source.run_id,
            "state": state,
            "detector_state": detector_state,
            "steps": last_step,
            "points": d.n_points + d.n_nonfinite,
            "last_loss": last if last is None or math.isfinite(last) else str(last),
            "plateau_start": plateau_start,
            "state_since": run.state_since,
            "stuck_steps": stuck_steps,
            # wall time: since watch first saw this state (a lower bound when it began before)
            "stuck_seconds": round(now - run.state_seen_at, 1) if stuck_from is not None else None,
            "finding": finding,
            "finished": run.finished,
            "stale": bool(stale),
            "last_update": run.modified,
            "age_seconds": round(now - run.modified, 1) if run.modified is not None else None,
            "error": run.error,
            "incremental": run.tail.incremental if run.tail is not None else None,
        }

    def spark(self, key: str) -> tuple[list[int], list[float]]:
        """The thinned series of one run (by its source key), for the HTML page."""
        run = self.runs.get(key)
        return ([], []) if run is None else (run.spark.steps, run.spark.values)

    def _fire(self, rows: list[dict[str, Any]]) -> None:
        by_key = {r.source.key: r for r in self.runs.values()}
        for row in rows:
            if row["state"] not in EPISODE_STATES:
                continue
            run = by_key[f"{row['path']}#{row['run_id'] or ''}"]
            episode = run.episode()
            if episode is None or episode in self.fired:
                continue
            self.fired.add(episode)
            if self.diagnose:
                row["finding"] = self._diagnose(run, episode) or row["finding"]
            if self.on_stall is not None:
                try:
                    self.on_stall(row)
                except Exception:  # a failing hook never stops the watch
                    logger.warning("unstuck watch: --on-stall failed for %s", row["name"])

    def _diagnose(self, run: _Run, episode: tuple[Any, ...]) -> str | None:
        """analyze's top finding on the whole log, once per episode."""
        from unstuck.analyze import analyze, load

        src = run.source
        try:
            path = f"mlflow:{src.run_id}" if src.fmt == "mlflow" else src.path
            uri = self._client.tracking_uri if self._client is not None else None
            data = analyze(load(path, fmt=src.fmt, run=src.run_id, tracking_uri=uri))
        except Exception as exc:  # diagnosis is a bonus: its failure is logged, not raised
            logger.debug("diagnosing %s failed: %s", src.name, exc)
            return None
        if not data.findings:
            return None
        top = data.findings[0]
        text = f"{top.cause}: {top.summary}"
        run.finding = (episode, text)
        return text


def shell_hook(command: str) -> Callable[[dict[str, Any]], None]:
    """``--on-stall CMD``: run ``CMD`` in a shell with the run's row as JSON on stdin."""

    def hook(row: dict[str, Any]) -> None:
        result = subprocess.run(  # the user's own command line, by design
            command,
            shell=True,
            input=json.dumps(row) + "\n",
            text=True,
            timeout=HOOK_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            logger.warning(
                "unstuck watch: --on-stall exited %d for %s", result.returncode, row["name"]
            )

    return hook
