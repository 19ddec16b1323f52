"""Run by Python at start-up in every process ``unstuck run`` starts (it is on ``PYTHONPATH``).

It installs unstuck's zero-code watcher when ``UNSTUCK_AUTORUN`` holds its config, then runs
the ``sitecustomize`` this one shadows, if the environment had one. Nothing here may stop the
user's program: every error is one line on stderr.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _start() -> None:
    raw = os.environ.get("UNSTUCK_AUTORUN")
    if not raw:
        return
    try:
        from unstuck.integrations.autorun import install

        install(json.loads(raw))
    except Exception as exc:  # fail safe: the user's program runs unwatched
        sys.stderr.write(f"unstuck: not watching this process ({type(exc).__name__}: {exc})\n")


def _chain() -> None:
    """Run the sitecustomize that would have run without ours (later on sys.path)."""
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == _HERE:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            try:
                spec = importlib.util.spec_from_file_location("_unstuck_chained_site", candidate)
                if spec is not None and spec.loader is not None:
                    spec.loader.exec_module(importlib.util.module_from_spec(spec))
            except Exception as exc:
                sys.stderr.write(f"unstuck: the environment's sitecustomize failed ({exc})\n")
            return


_start()
_chain()
