"""One file, one plugin: the discovery both the cause catalog and the action registry use.

Each module of a plugin package (``diagnose/causes``, ``rescue/actions``) defines exactly one
subclass of the package's base class; its name is the module's name. Discovery imports every
module once and fails loudly on a file that breaks the rule, so a new cause or action is one new
file and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import TypeVar

__all__ = ["discover_plugins"]

T = TypeVar("T")


def discover_plugins(package: ModuleType, base: type[T], kind: str) -> dict[str, type[T]]:
    """``{module name: the one subclass of base it defines}`` for every public module."""
    found: dict[str, type[T]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, base)
            and obj is not base
            and obj.__module__ == module.__name__
        ]
        if len(classes) != 1:
            raise ImportError(
                f"{kind}/{info.name}.py must define exactly one {base.__name__} subclass"
            )
        found[info.name] = classes[0]
    return found
