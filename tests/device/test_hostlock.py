"""The host timing lock: a bounded wait that names its holder, and the take-over of a dead holder's lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mbsearch.device import hostlock

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from mbsearch.device import hostlock

    lock = hostlock.timing()
    lock.__enter__()
    if sys.argv[1] == "fork":  # a child that keeps the lock's descriptor after its parent dies
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        print(child, flush=True)
        os._exit(0)  # dies holding the lock: no release, its record left behind
    print("held", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def lock_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MBSEARCH_LOCK_DIR", str(tmp_path))
    (tmp_path / "holder.py").write_text(HOLDER)
    return tmp_path


def _start_holder(lock_dir: Path, mode: str, *args: str) -> subprocess.Popen:
    env = os.environ | {"MBSEARCH_LOCK_DIR": str(lock_dir)}
    # Started from its folder: the waiting line shows 120 characters of the holder's command, and a long
    # temporary path (a pytest worker's) must not push the arguments the tests read out of them.
    holder = subprocess.Popen(
        [sys.executable, "holder.py", mode, *args], stdout=subprocess.PIPE, text=True, env=env, cwd=lock_dir
    )
    assert holder.stdout is not None
    holder.first_line = holder.stdout.readline().strip()  # type: ignore[attr-defined]
    return holder


def _waiter(lock_dir: Path, timeout_s: float) -> subprocess.Popen:
    code = "from mbsearch.device import hostlock\nwith hostlock.timing():\n    print('acquired', flush=True)\n"
    env = os.environ | {"MBSEARCH_LOCK_DIR": str(lock_dir), "MBSEARCH_LOCK_TIMEOUT": str(timeout_s)}
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_waiter_names_a_stopped_holder_and_goes_on_once_it_is_dead(lock_dir) -> None:
    holder = _start_holder(lock_dir, "hold")
    os.kill(holder.pid, signal.SIGSTOP)  # Ctrl-Z while holding the lock
    waiter = _waiter(lock_dir, timeout_s=60)
    try:
        line = waiter.stderr.readline()  # the waiting line, after the short grace
        assert f"PID {holder.pid} on {socket.gethostname()}" in line
        assert "holder.py hold" in line and "stopped" in line and "giving up after 60 s" in line
        assert waiter.poll() is None  # still waiting: the holder is alive
        holder.kill()
        killed = time.monotonic()
        out, _ = waiter.communicate(timeout=30)
        assert out.strip() == "acquired" and waiter.returncode == 0
        assert time.monotonic() - killed < 10  # well within its bound
    finally:
        holder.kill()
        waiter.kill()


def test_the_holders_command_is_shown_without_its_secrets(lock_dir) -> None:
    # Workers of a distributed search hold the lock with a storage URL (and perhaps an agent token) on
    # their command line; other users of the host read the waiting line and the records.
    secrets = ("pg-s3cret", "tok-s3cret-0123456789", "kw-s3cret")
    holder = _start_holder(
        lock_dir,
        "hold",
        "--storage",
        f"postgresql://mbsearch:{secrets[0]}@db:5432/nas",
        f"--target-token={secrets[1]}",
        "--dsn",
        f"host=db password={secrets[2]}",
    )
    os.kill(holder.pid, signal.SIGSTOP)
    waiter = _waiter(lock_dir, timeout_s=60)
    try:
        line = waiter.stderr.readline()
        assert f"PID {holder.pid}" in line and "postgresql://mbsearch:***@db" in line
        records = "".join(path.read_text() for path in lock_dir.rglob("*.json"))
        assert "postgresql://mbsearch:***@db:5432/nas" in records and "--target-token=***" in records
        for secret in secrets:
            assert secret not in line and secret not in records
    finally:
        holder.kill()
        waiter.kill()


def test_wait_is_bounded_and_the_error_names_the_holder(lock_dir, monkeypatch) -> None:
    holder = _start_holder(lock_dir, "hold")
    os.kill(holder.pid, signal.SIGSTOP)
    monkeypatch.setenv("MBSEARCH_LOCK_TIMEOUT", "3")
    try:
        started = time.monotonic()
        expected = rf"over 3 s by PID {holder.pid} on .*holder.py hold.*stopped"
        with pytest.raises(hostlock.LockTimeout, match=expected), hostlock.timing():
            pass
        assert 3 <= time.monotonic() - started < 15
        with pytest.raises(hostlock.LockTimeout), hostlock.training():  # a training step gives up too
            pass
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_dead_holder_kept_by_its_child_is_taken_over(lock_dir, capfd) -> None:
    holder = _start_holder(lock_dir, "fork")
    child = int(holder.first_line)
    holder.wait()  # the holder is dead; its forked child still has the flock
    try:
        os.kill(child, 0)  # the child is alive, so the kernel has not released the lock
        started = time.monotonic()
        with hostlock.timing():
            took = time.monotonic() - started
        assert took < 10
        assert "took over the host timing lock" in capfd.readouterr().err
        with hostlock.timing():  # and the lock works as before afterwards
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_bad_timeout_setting_is_one_clear_error(lock_dir, monkeypatch) -> None:
    monkeypatch.setenv("MBSEARCH_LOCK_TIMEOUT", "soon")
    with (
        pytest.raises(hostlock.RuntimeFailure, match="MBSEARCH_LOCK_TIMEOUT='soon' is not a number"),
        hostlock.timing(),
    ):
        pass


@pytest.mark.slow(seconds=62)
def test_a_wait_of_over_a_minute_ends_with_the_lock(lock_dir) -> None:
    """A holder that keeps the lock for 62 s (a stopped process, a long agent request): the waiter waits it out
    and takes the lock. The wait's back-off once overflowed after 1,024 polls (about 51 s)."""
    holder = _start_holder(lock_dir, "hold")
    os.kill(holder.pid, signal.SIGSTOP)
    waiter = _waiter(lock_dir, timeout_s=120)
    try:
        time.sleep(62)
        assert waiter.poll() is None, waiter.communicate()  # still waiting, not crashed
        holder.kill()
        out, err = waiter.communicate(timeout=30)
        assert out.strip() == "acquired" and waiter.returncode == 0, err
        assert "Error" not in err
    finally:
        holder.kill()
        waiter.kill()


def test_many_polls_never_overflow_the_back_off(lock_dir, monkeypatch) -> None:
    """The same wait, thousands of polls long, without the minute: sleeping is counted instead of done."""
    holder = _start_holder(lock_dir, "hold")
    polls: list[float] = []

    def fake_sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3000:
            holder.kill()
            holder.wait()

    monkeypatch.setattr(hostlock.time, "sleep", fake_sleep)
    monkeypatch.setenv("MBSEARCH_LOCK_TIMEOUT", "600")
    try:
        with hostlock.timing():
            pass
        assert len(polls) >= 3000 and max(polls) == hostlock.POLL_S
    finally:
        holder.kill()


def test_lock_files_are_shareable_between_users_of_a_host(lock_dir, monkeypatch) -> None:
    """Created under the usual umask a lock file is 0644, and a second user's worker gets EACCES on it."""
    old = os.umask(0o022)
    try:
        with hostlock.timing():
            pass
    finally:
        os.umask(old)
    for name in ("mbsearch-turnstile.lock", "mbsearch-host.lock"):
        assert (lock_dir / name).stat().st_mode & 0o777 == 0o666
        assert (lock_dir / (name + ".holders")).stat().st_mode & 0o777 == 0o777
