"""The report being built: its sections, chart numbering, and what the run says about itself."""

from __future__ import annotations

from unstuck.record.report.text import esc, note
from unstuck.record.rundata import RunData
from unstuck.types import ActionRecord

__all__ = ["OTHER_OUTCOME", "OUTCOME_COLOURS", "Doc", "charted_actions", "outcome_colour"]

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
    "skipped": "#8c8c8c",  # proposed, not taken (a budget, a locked LR): the table says why
}
OTHER_OUTCOME = "#9467bd"
NOT_CHARTED = frozenset({"skipped"})  # outcomes that changed nothing in the run: table only


def outcome_colour(outcome: str) -> str:
    return OUTCOME_COLOURS.get(outcome, OTHER_OUTCOME)


def charted_actions(actions: list[ActionRecord]) -> list[ActionRecord]:
    """The actions drawn as markers: those that changed something in the run."""
    return [a for a in actions if a.outcome not in NOT_CHARTED]


class Doc:
    """Collects the sections; numbers the charts; knows the run's x axis and its kind."""

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.sections: list[str] = []
        self.charts = 0
        steps = [int(s[-1]) for s, _ in run.series.values() if s.size]
        steps += [int(p.end if p.end is not None else p.start) for p in run.plateaus]
        steps += [int(a.step) for a in run.actions]
        self.last_step = max(steps) if steps else 0
        firsts = [int(s[0]) for s, _ in run.series.values() if s.size]
        firsts += [int(p.start) for p in run.plateaus] + [int(a.step) for a in run.actions]
        self.first_step = min(firsts) if firsts else 0
        self.used: set[str] = set()  # series already shown by a dedicated section
        # what the x axis counts: "step" for a Guard's run, "epoch" for a Keras CSV, ...
        self.x_name = str(run.meta.get("step_unit") or "step")
        # a Guard's own run store: an empty section is worth a note (the Guard records it
        # all); on another tool's log it is just a section that log cannot have, so it goes
        self.guarded = run.format == "unstuck"

    @property
    def x_range(self) -> tuple[float, float]:
        """The run's steps: every chart over steps spans them, so the charts line up."""
        return float(self.first_step), float(self.last_step)

    def chart_id(self) -> str:
        self.charts += 1
        return f"chart-{self.charts}"

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"<section>\n<h2>{esc(title)}</h2>\n{body}\n</section>")

    def empty(self, title: str, text: str) -> None:
        """A section the run holds no data for: a one-line note on a guarded run, else none."""
        if self.guarded:
            self.section(title, note(text))
