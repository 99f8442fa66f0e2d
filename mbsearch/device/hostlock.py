"""A per-host lock that keeps latency timing apart from training.

Timing takes the lock exclusively; training takes it shared (per training step, so a hold is short). A
waiting timer blocks new training (a turnstile), so it cannot be starved by workers that keep starting
trials. The lock lives in the system temp folder, so every mbsearch process on this host, of any study,
honours it.

The locks are `flock`s: the kernel drops one when the last descriptor on it closes, so a holder that dies
frees it. Two cases remain that once stalled every timing on a host, and are handled here:

- a holder that is alive but stopped (Ctrl-Z, SIGSTOP, a debugger): a waiter gives up after a bound
  (`MBSEARCH_LOCK_TIMEOUT`, seconds) with an error that names the holder, and meanwhile says who it waits for;
- a holder that died while a process it forked still has the descriptor (the flock stays held by nobody
  who will ever let it go): a waiter that finds every recorded holder dead takes the lock over by moving
  the lock file aside, and says so.

Each holder writes a record (host, PID, its start time, command) beside the lock, which is how a waiter names
it and tells a dead holder from a live one (the start time guards against a reused PID).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mbsearch.errors import RuntimeFailure
from mbsearch.urls import redact_command

DEFAULT_TIMEOUT_S = 600.0  # a timer waits for one step of each training; a training for one timing
POLL_S = 0.05
SAY_AFTER_S = 2.0  # an ordinary wait (a training step, a timing) ends before this: no line for it


class LockTimeout(RuntimeFailure):
    """The host lock stayed held by a live process for longer than the bound."""


def _lock_dir() -> Path:
    """MBSEARCH_LOCK_DIR (a node-wide folder in the cluster recipes), else the system temp folder; made on
    first use, writable by every user of the host."""
    folder = Path(os.environ.get("MBSEARCH_LOCK_DIR", tempfile.gettempdir()))
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):  # another user made it first
            folder.chmod(0o777)
    return folder


def lock_timeout() -> float:
    """The bound on one wait, from `MBSEARCH_LOCK_TIMEOUT` (seconds), else 600."""
    raw = os.environ.get("MBSEARCH_LOCK_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise RuntimeFailure(f"MBSEARCH_LOCK_TIMEOUT={raw!r} is not a number of seconds; set it to e.g. 600") from None
    if value <= 0:
        raise RuntimeFailure(f"MBSEARCH_LOCK_TIMEOUT={raw!r} must be above 0 seconds; set it to e.g. 600")
    return value


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused PID from its first owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def _state(pid: int) -> str:
    """'stopped', 'running' or 'dead' (a zombie is dead: it holds nothing and runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "dead"
        except PermissionError:
            pass
        return "running"
    code = stat.rsplit(")", 1)[1].split()[0]
    return {"T": "stopped", "t": "stopped", "Z": "dead", "X": "dead"}.get(code, "running")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its record says."""

    host: str
    pid: int
    started: str | None
    command: str

    @classmethod
    def me(cls) -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _start_time(pid), shlex.join(redact_command(sys.argv)) or sys.executable)

    def state(self) -> str:
        if self.host != socket.gethostname():
            return "on another host"  # a lock folder shared between hosts: we cannot look
        state = _state(self.pid)
        if state != "dead" and self.started is not None and _start_time(self.pid) not in (None, self.started):
            return "dead"  # the PID now belongs to another process
        return state

    def describe(self) -> str:
        command = self.command if len(self.command) <= 120 else self.command[:117] + "..."
        return f"PID {self.pid} on {self.host} ({command}), {self.state()}"


class _Records:
    """The holder records of one lock file: one small JSON file per holder, in a folder beside it."""

    def __init__(self, path: Path):
        self.folder = path.with_name(path.name + ".holders")

    def add(self, holder: Holder) -> Path:
        if not self.folder.is_dir():
            self.folder.mkdir(exist_ok=True)
            with contextlib.suppress(PermissionError):  # another user made it
                self.folder.chmod(0o777)  # every user of the host adds and prunes records here
        record = self.folder / f"{holder.pid}-{uuid.uuid4().hex[:8]}.json"
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(holder.__dict__))
        os.replace(tmp, record)  # a waiter never reads half a record
        return record

    def read(self) -> list[tuple[Path, Holder]]:
        found = []
        for record in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                found.append((record, Holder(**json.loads(record.read_text()))))
            except (OSError, ValueError, TypeError):
                continue  # removed while we read it, or not ours
        return found

    def prune(self) -> None:
        """Remove the records of dead holders."""
        for record, holder in self.read():
            if holder.state() == "dead":
                with contextlib.suppress(PermissionError):  # a waiter skips another user's dead record
                    record.unlink(missing_ok=True)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _take_over(path: Path, fd: int, records: _Records) -> list[Holder]:
    """Move aside a lock that only dead holders are recorded on (a process one of them forked still has the
    descriptor), so that new opens lock a fresh file. Done under an exclusive lock on a sidecar, so two
    waiters never both move it; returns the dead holders, or [] if the lock was not ours to take."""
    guard_fd = _open_shared(path.with_name(path.name + ".takeover"))
    try:
        fcntl.flock(guard_fd, fcntl.LOCK_EX)
        if not _same_file(fd, path):
            return []  # another waiter moved it first
        found = records.read()
        if not found or any(holder.state() != "dead" for _, holder in found):
            return []
        os.replace(path, path.with_name(f"{path.name}.dead-{os.getpid()}-{int(time.time())}"))
        for record, _ in found:
            record.unlink(missing_ok=True)
        return [holder for _, holder in found]
    finally:
        os.close(guard_fd)


def _names(holders: list[Holder]) -> str:
    return "; ".join(holder.describe() for holder in holders) or "a process that left no record"


_me: dict[int, Holder] = {}


def _holder_me() -> Holder:
    pid = os.getpid()  # per process: a forked worker is its own holder
    if pid not in _me:
        _me[pid] = Holder.me()
    return _me[pid]


def _poll_interval(polls: int) -> float:
    """Seconds to sleep before poll number `polls + 1`: 1, 2, 4 ... ms, then POLL_S. Short waits (one training
    step) end quickly; the exponent is capped, since 2.0**1024 overflows a float (a wait of about 51 s)."""
    return min(POLL_S, 0.001 * 2.0 ** min(polls, 16))


def _open_shared(path: Path) -> int:
    """Open (create) a lock file every user of the host can lock: a second user's worker on a shared node
    would otherwise get EACCES on a file created 0644 under the usual umask."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(PermissionError):  # another user's file: they made it shareable
        os.fchmod(fd, 0o666)
    return fd


def _acquire(path: Path, mode: int, what: str, records: _Records) -> int:
    """Lock `path` (flock `mode`) and return its descriptor; wait at most the bound, naming the holders."""
    bound = lock_timeout()
    start = time.monotonic()
    said, dead_since, polls = "", None, 0
    fd = _open_shared(path)
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                if _same_file(fd, path):
                    return fd
                fcntl.flock(fd, fcntl.LOCK_UN)  # we locked a file that was moved aside
            if not _same_file(fd, path):
                os.close(fd)
                fd = _open_shared(path)
                continue
            waited = time.monotonic() - start
            holders = [holder for _, holder in records.read()]
            if holders and all(holder.state() == "dead" for holder in holders):
                # Held, yet every recorded holder is dead. Wait a moment first: a new holder may have just
                # taken it and not yet written its record beside the stale ones.
                dead_since = dead_since if dead_since is not None else time.monotonic()
                if time.monotonic() - dead_since >= 1.0 and (taken := _take_over(path, fd, records)):
                    print(
                        f"mbsearch: took over the host {what} lock {path}: its holder is dead "
                        f"({_names(taken)}) but a process it started still held the lock",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
            else:
                dead_since = None
            if waited >= SAY_AFTER_S and _names(holders) != said:
                said = _names(holders)
                print(
                    f"mbsearch: waiting for the host {what} lock {path}, held by {said}; "
                    f"giving up after {bound:g} s (MBSEARCH_LOCK_TIMEOUT)",
                    file=sys.stderr,
                    flush=True,
                )
            if waited >= bound:
                raise LockTimeout(
                    f"the host {what} lock {path} was held for over {bound:g} s by {_names(holders)}; resume "
                    "or end that process (kill -CONT PID, or kill PID), or raise MBSEARCH_LOCK_TIMEOUT"
                )
            polls += 1
            time.sleep(_poll_interval(polls))
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def _flock(name: str, mode: int, what: str) -> Iterator[None]:
    path = _lock_dir() / name
    records = _Records(path)
    fd = _acquire(path, mode, what, records)
    try:
        if mode == fcntl.LOCK_EX:
            records.prune()  # records left by holders that were killed: nobody else holds it now
        record = records.add(_holder_me())
        try:
            yield
        finally:
            record.unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def timing() -> Iterator[None]:
    """Hold while measuring latency: no training and no other timing runs on this host meanwhile."""
    with (
        _flock("mbsearch-turnstile.lock", fcntl.LOCK_EX, "timing"),
        _flock("mbsearch-host.lock", fcntl.LOCK_EX, "timing"),
    ):
        yield


@contextmanager
def gpu_timing(index: int) -> Iterator[None]:
    """Hold while measuring latency on GPU `index`: no other timing on that GPU meanwhile (two timers on one
    GPU share its queues and clocks). CPU work never waits for it, nor it for CPU work."""
    with _flock(f"mbsearch-gpu{index}.lock", fcntl.LOCK_EX, f"GPU {index} timing"):
        yield


@contextmanager
def training() -> Iterator[None]:
    """Hold while training: many trainings may overlap, but never with timing."""
    with _flock("mbsearch-turnstile.lock", fcntl.LOCK_EX, "timing"):
        pass  # wait behind a timer that is already queued
    with _flock("mbsearch-host.lock", fcntl.LOCK_SH, "timing"):
        yield
