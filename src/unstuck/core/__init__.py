"""The framework-neutral core: :class:`Monitor` runs unstuck's pipeline for every front-end."""

from unstuck.core.monitor import FrontEndHooks, Monitor, Update

__all__ = ["FrontEndHooks", "Monitor", "Update"]
