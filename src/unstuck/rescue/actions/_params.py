"""Parameter checks the actions share, so every bad value is named the same way.

The leading underscore keeps this module out of action discovery.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

__all__ = ["check_keys", "integer", "number"]


def check_keys(action: str, params: dict[str, Any], allowed: Collection[str]) -> None:
    """Reject parameter names the action does not read: a typo would otherwise run silently
    with the default."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"{action}: unknown parameter(s) {', '.join(unknown)}; allowed: {known}")


def number(action: str, params: dict[str, Any], key: str, default: float) -> float:
    """``params[key]`` (or ``default``) as a finite float; bools and strings are rejected."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{action}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def integer(action: str, params: dict[str, Any], key: str, default: int, minimum: int) -> int:
    """``params[key]`` (or ``default``) as an int ≥ ``minimum``; ``200.0`` is rejected too, since
    a step count that arrives as a float is usually a computation gone wrong."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{action}: {key!r} must be an int ≥ {minimum}, got {value!r}")
    return int(value)
