"""Ways in: the plain-loop Guard, the plateau scheduler and the framework callbacks.

Each lives in its own module, and the framework ones import their framework at module level, so
this package imports none of them up front: ``unstuck.integrations.lightning`` (or ``hf``,
``keras``, ...) is imported on first attribute access (PEP 562). That keeps ``import unstuck``
free of Lightning, transformers and Keras while the one-liner
``unstuck.integrations.lightning.UnstuckCallback()`` still works after a bare ``import unstuck``.
A missing framework surfaces as the module's own ``ImportError`` naming the extra to install.
"""

import importlib
from types import ModuleType

# The public submodules; ``_distributed`` is internal and imported by ``loop`` anyway.
_SUBMODULES = frozenset({"hf", "keras", "lightning", "loop", "scheduler"})


def __getattr__(name: str) -> ModuleType:
    """Import a submodule on first use, so only the framework you touch gets imported."""
    if name in _SUBMODULES:
        # import_module binds the submodule on this package: later lookups skip this hook.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """List the lazy submodules too, so completion in a REPL offers them."""
    return sorted(set(globals()) | _SUBMODULES)
