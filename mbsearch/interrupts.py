"""Ctrl-C and SIGTERM that never land in the middle of a storage write.

A KeyboardInterrupt raised inside an SQLAlchemy commit can leave a transaction holding the database's
write lock, and the clean-up that follows then waits on that lock (seen here: a SQLite run that did not
exit). So the signal interrupts at once only inside `interruptible()` regions (building, timing,
training, waiting) and is otherwise held until the next one begins or ends. A second signal while one
is pending interrupts at once: the user insists.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_armed = False
_pending = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _armed or _pending:
        _pending = False
        raise KeyboardInterrupt
    _pending = True


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Install the handler for SIGINT and SIGTERM for the duration of a search."""
    global _armed, _pending
    _armed, _pending = False, False
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check() -> None:
    """Raise a pending interrupt now, at a safe point."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """A region where Ctrl-C may interrupt at once: no storage write happens inside."""
    global _armed
    check()
    _armed = True
    try:
        yield
    finally:
        _armed = False
    check()
