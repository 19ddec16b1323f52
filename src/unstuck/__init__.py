"""unstuck: keeps deep-learning training from getting lost on loss plateaus.

Detect a real plateau statistically, diagnose why with evidence, rescue reversibly, and record
what happened::

    guard = unstuck.Guard(model, optimizer, policy="rescue", run_dir="runs/exp1")
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        guard.step(loss)
    guard.close()

``import unstuck`` imports nothing heavy: ``Guard``, ``PlateauScheduler`` and the other names are
imported on first use (PEP 562), so ``unstuck analyze`` and ``unstuck --help`` never import torch;
framework integrations are imported lazily from ``unstuck.integrations.<framework>``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unstuck.detect import PlateauDetector
    from unstuck.diagnose import explain
    from unstuck.integrations.loop import Guard
    from unstuck.integrations.scheduler import PlateauScheduler
    from unstuck.types import ActionRecord, Finding, Plateau, Remedy

__version__ = "0.1.0"

__all__ = [
    "ActionRecord",
    "Finding",
    "Guard",
    "Plateau",
    "PlateauDetector",
    "PlateauScheduler",
    "Remedy",
    "__version__",
    "explain",
]

# The public names, each imported from its module on first use (PEP 562): ``Guard`` and
# ``PlateauScheduler`` need torch, and ``unstuck analyze`` reads logs without it.
_LAZY_NAMES: dict[str, str] = {
    "ActionRecord": "unstuck.types",
    "Finding": "unstuck.types",
    "Guard": "unstuck.integrations.loop",
    "Plateau": "unstuck.types",
    "PlateauDetector": "unstuck.detect",
    "PlateauScheduler": "unstuck.integrations.scheduler",
    "Remedy": "unstuck.types",
    "explain": "unstuck.diagnose.explain",
}

# Subpackages reachable as attributes after a bare ``import unstuck`` (PEP 562), e.g. the
# documented one-liner ``unstuck.integrations.keras.UnstuckCallback()``; each is imported on first
# use only, so ``import unstuck`` stays light.
_SUBPACKAGES = frozenset(
    {"analyze", "detect", "diagnose", "integrations", "plugins", "record", "rescue", "signals"}
)


def __getattr__(name: str) -> Any:
    """Import a public name or a subpackage on first attribute access, not at ``import unstuck``."""
    module = _LAZY_NAMES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """List the lazy names and subpackages too, so completion in a REPL offers them."""
    return sorted(set(globals()) | set(_LAZY_NAMES) | _SUBPACKAGES)
