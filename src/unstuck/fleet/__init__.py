"""``unstuck watch``: many runs at once, which are stuck right now (docs/watch.md).

``sources`` finds the runs under the watched paths, ``tail`` reads only what each run logged
since the last refresh, ``watcher`` keeps one streaming detector per run between refreshes, and
``render`` prints the table, the JSON and the HTML page.
"""

from __future__ import annotations

from unstuck.fleet.sources import RunSource, SourceError, discover
from unstuck.fleet.watcher import ATTENTION, Watcher, shell_hook

__all__ = ["ATTENTION", "RunSource", "SourceError", "Watcher", "discover", "shell_hook"]
