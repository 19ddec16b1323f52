"""unstuck: keeps deep-learning training from getting lost on loss plateaus.

Detect a real plateau statistically, diagnose why with evidence, rescue reversibly, and record
what happened::

    guard = unstuck.Guard(model, optimizer, policy="rescue", run_dir="runs/exp1")
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        guard.step(loss)
    guard.close()

``import unstuck`` needs only torch and numpy; framework integrations are imported lazily from
``unstuck.integrations.<framework>``.
"""

import importlib
from types import ModuleType

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

# Subpackages reachable as attributes after a bare ``import unstuck`` (PEP 562), e.g. the
# documented one-liner ``unstuck.integrations.keras.UnstuckCallback()``; each is imported on first
# use only, so ``import unstuck`` stays torch-and-numpy light.
_SUBPACKAGES = frozenset(
    {"analyze", "detect", "diagnose", "integrations", "plugins", "record", "rescue", "signals"}
)


def __getattr__(name: str) -> ModuleType:
    """Import a subpackage on first attribute access instead of at ``import unstuck``."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """List the lazy subpackages too, so completion in a REPL offers them."""
    return sorted(set(globals()) | _SUBPACKAGES)
