"""Recording: the run store (sinks and reports build on it)."""

from unstuck.record.store import (
    SCHEMA_VERSION,
    STORE_FILENAME,
    RunStore,
    read_events,
    read_meta,
    read_metrics,
    read_runs,
)

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "RunStore",
    "read_events",
    "read_meta",
    "read_metrics",
    "read_runs",
]
