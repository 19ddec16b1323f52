"""The Guard's lifetime in the process: SIGTERM closes open runs, and a second Guard on one
optimizer is noticed.

SIGTERM (Slurm, Kubernetes and torchrun send it first): every open Guard is closed, so its run
is marked closed and its report written, then the signal goes on to what was there before. A
Guard registers two callbacks with :func:`track` and unregisters with :func:`untrack`; this
module holds them weakly, so a Guard dropped without ``close()`` is not kept alive.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "already_guarded",
    "hub_closed",
    "hub_opened",
    "track",
    "untrack",
    "warn_if_already_guarded",
]

logger = logging.getLogger("unstuck")

# The hooks-holder (SignalHub) of every Guard not yet closed, by optimizer. A hub stays alive
# while its hooks are on the optimizer, so a Guard dropped without close() (a re-run notebook
# cell) still shows.
_OPEN_HUBS: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()

# Per open Guard: close it on a signal (signum, midway), and tell it a signal is pending.
_OPEN: weakref.WeakKeyDictionary[Any, tuple[weakref.WeakMethod[Any], weakref.WeakMethod[Any]]] = (
    weakref.WeakKeyDictionary()
)
_PENDING: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_SIGTERM_BEFORE: list[Any] = []  # the disposition our handler replaced (while it is installed)

_PACKAGE_DIRS = (
    str(Path(torch.__file__ or ".").resolve().parent) + os.sep,
    str(Path(__file__).resolve().parents[1]) + os.sep,  # unstuck's own
)
_AT_EXIT: list[bool] = []  # whether the exit-time close of signalled Guards is registered


def hub_opened(optimizer: Any, hub: Any) -> None:
    _OPEN_HUBS.setdefault(optimizer, weakref.WeakSet()).add(hub)


def hub_closed(optimizer: Any, hub: Any) -> None:
    _OPEN_HUBS.get(optimizer, weakref.WeakSet()).discard(hub)


def already_guarded(optimizer: Any) -> bool:
    """Whether a Guard not yet closed has hooks on ``optimizer``."""
    return any(True for _ in _OPEN_HUBS.get(optimizer, ()))


def warn_if_already_guarded(optimizer: Any, lead: bool) -> None:
    """A second Guard on one optimizer (a re-run notebook cell) while the first is open: both
    sets of hooks measure every step, and both may act on the LR."""
    if lead and already_guarded(optimizer):
        logger.warning(
            "unstuck: this optimizer already has a Guard that was not closed, and its hooks "
            "still run on every step; call close() on the old Guard (or use `with "
            "unstuck.Guard(...)`), or re-create the optimizer, before building a new one"
        )


def track(
    owner: Any, close: Callable[[int, bool], None], mark_pending: Callable[[int], None]
) -> None:
    """Close ``owner`` on SIGTERM: ``close(signum, midway)`` now, or ``mark_pending(signum)``
    when the signal cut into training code and the owner must close at its next call. Both
    are bound methods of ``owner`` (held weakly)."""
    _OPEN[owner] = (weakref.WeakMethod(close), weakref.WeakMethod(mark_pending))
    _install_sigterm_handler()


def untrack(owner: Any) -> None:
    _OPEN.pop(owner, None)
    _PENDING.pop(owner, None)
    _uninstall_sigterm_handler()


def _inside_training(frame: Any) -> bool:
    """Whether the interrupted code is unstuck's or torch's (a step, a hook, a forward): the
    Guard's hooks and store must not be torn down under it, so its close waits."""
    while frame is not None:
        if str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE_DIRS):
            return True
        frame = frame.f_back
    return False


def _close_all(signum: int, midway: bool = False) -> None:
    for close, _ in list(_OPEN.values()):
        method = close()
        if method is None:
            continue
        try:
            method(signum, midway)
        except Exception:  # never in the way of the process ending
            logger.exception("unstuck: closing a Guard on signal %d failed", signum)


def _close_signalled_at_exit() -> None:
    for signum in list(_PENDING.values()):
        _close_all(signum)
        return


def _on_sigterm(signum: int, frame: Any) -> None:
    """Close every open Guard, then do what SIGTERM did before: the user's handler, or the
    default (the process ends, killed by SIGTERM, as it would have been).

    With a handler of the user's the process may go on, so a Guard interrupted in the middle of
    training code is closed at its next call (``step``, ``validate``, ``flush``) or at exit.
    """
    previous = _SIGTERM_BEFORE[0] if _SIGTERM_BEFORE else signal.SIG_DFL
    if not callable(previous):
        # Nothing resumes after this: close now, without the last flush if a step was cut
        # short (its half-gathered window is not worth a traceback on the way out).
        _close_all(signum, midway=_inside_training(frame))
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _inside_training(frame):
        for owner, (_, mark) in list(_OPEN.items()):
            method = mark()
            if method is not None:
                _PENDING[owner] = signum
                method(signum)
        if not _AT_EXIT:
            _AT_EXIT.append(True)
            atexit.register(_close_signalled_at_exit)
    else:
        _close_all(signum)
    previous(signum, frame)


def _install_sigterm_handler() -> None:
    """Only where the Guard may own the process's lifetime: the main thread, and a SIGTERM
    that would end the process or runs a Python handler we can chain to (an ignored SIGTERM,
    or one handled outside Python, is left alone)."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm or current is signal.SIG_IGN or current is None:
        return
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # e.g. a sub-interpreter: SIGTERM is not ours to handle
        return
    _SIGTERM_BEFORE[:] = [current]


def _uninstall_sigterm_handler() -> None:
    """The last open Guard closed: give SIGTERM back what it had (if nobody replaced ours)."""
    if len(_OPEN) or not _SIGTERM_BEFORE:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _SIGTERM_BEFORE[0])
    _SIGTERM_BEFORE.clear()
