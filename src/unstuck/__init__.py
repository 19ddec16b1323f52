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
