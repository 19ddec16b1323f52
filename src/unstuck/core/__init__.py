"""The framework-neutral core: :class:`Monitor` runs unstuck's pipeline for every front-end."""

from unstuck.core.monitor import FrontEndHooks, Monitor, MonitorResults, Update

__all__ = ["FrontEndHooks", "Monitor", "MonitorResults", "Update"]
