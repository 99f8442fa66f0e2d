"""A per-host lock that keeps latency timing apart from training.

Timing takes the lock exclusively; training takes it shared. A waiting timer blocks new training
(a turnstile), so it cannot be starved by workers that keep starting trials. The lock lives in the
system temp folder, so every mbsearch process on this host, of any study, honours it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _lock_dir() -> Path:
    return Path(os.environ.get("MBSEARCH_LOCK_DIR", tempfile.gettempdir()))


@contextmanager
def _flock(name: str, mode: int) -> Iterator[None]:
    path = _lock_dir() / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def timing() -> Iterator[None]:
    """Hold while measuring latency: no training and no other timing runs on this host meanwhile."""
    with _flock("mbsearch-turnstile.lock", fcntl.LOCK_EX), _flock("mbsearch-host.lock", fcntl.LOCK_EX):
        yield


@contextmanager
def gpu_timing(index: int) -> Iterator[None]:
    """Hold while measuring latency on GPU `index`: no other timing on that GPU meanwhile (two timers on one
    GPU share its queues and clocks). CPU work never waits for it, nor it for CPU work."""
    with _flock(f"mbsearch-gpu{index}.lock", fcntl.LOCK_EX):
        yield


@contextmanager
def training() -> Iterator[None]:
    """Hold while training: many trainings may overlap, but never with timing."""
    with _flock("mbsearch-turnstile.lock", fcntl.LOCK_EX):
        pass  # wait behind a timer that is already queued
    with _flock("mbsearch-host.lock", fcntl.LOCK_SH):
        yield
