"""Seeded-fault scenarios for ``bench/diagnosis.py``: one file per scenario, found by discovery."""

from __future__ import annotations

import importlib
import pkgutil

from scenarios._common import RunResult, Scenario

__all__ = ["RunResult", "Scenario", "load_scenarios"]


def load_scenarios() -> dict[str, Scenario]:
    """Every scenario in this folder by name; a file without ``SCENARIO`` is an error."""
    found: dict[str, Scenario] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        scenario = getattr(module, "SCENARIO", None)
        if not isinstance(scenario, Scenario):
            raise ImportError(f"bench/scenarios/{info.name}.py defines no SCENARIO = Scenario(...)")
        if scenario.name != info.name:
            raise ImportError(
                f"bench/scenarios/{info.name}.py: SCENARIO.name is {scenario.name!r}; "
                "it must equal the file name"
            )
        found[scenario.name] = scenario
    return found
