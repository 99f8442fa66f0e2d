"""Optuna storage from a URL: SQLite by default, PostgreSQL for many machines. Clear errors, no secrets."""

from __future__ import annotations

import os
import re
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.urls import DSN_SECRET, QUERY_SECRET, redact

__all__ = ["redact"]  # re-exported: callers of the study wing read it here


def _secrets(url: str) -> list[str]:
    """The credential strings inside a URL (to scrub them from driver messages, which quote freely)."""
    found = []
    _, sep, rest = url.partition("://")
    head = rest.split("?", 1)[0] if sep else ""
    if "@" in head and ":" in head[: head.rfind("@")]:
        found.append(head[: head.rfind("@")].partition(":")[2])
    found += [m.group(0).split("=", 1)[1] for m in QUERY_SECRET.finditer(url)]
    found += [m.group(2) for m in DSN_SECRET.finditer(url)]
    # Drivers split a password holding '@', ':' or '/' wrongly and quote the pieces (as a host name, say).
    pieces = [piece for secret in found for piece in re.split(r"[@:/]", secret) if len(piece) >= 3]
    return sorted({secret for secret in found + pieces if secret}, key=len, reverse=True)


def scrub(message: str, url: str) -> str:
    """A message with the URL's credentials masked wherever they appear."""
    for secret in _secrets(url):
        message = message.replace(secret, "***")
    return redact(message)


def default_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def _check_sqlite_file(url: str) -> None:
    path = Path(url.removeprefix("sqlite:///"))
    if path.is_dir():
        raise BadInput(f"{path} is a folder, not a SQLite study database; check --storage or --runs-dir")
    if path.exists() and not path.is_file():
        raise BadInput(f"{path} is not a regular file (a FIFO or a device?); point --storage at a SQLite file")
    if path.exists():
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
                connection.execute("PRAGMA schema_version").fetchone()
        except sqlite3.DatabaseError as exc:
            raise BadInput(
                f"{path}: not a usable SQLite study database ({exc}); move it away or pick --study"
            ) from None
    else:
        folder = path.parent
        if not folder.is_dir():  # SQLite creates the file, never its folder
            raise BadInput(f"cannot create {path}: the folder {folder} does not exist; create it or fix --storage")
        if not os.access(folder, os.W_OK):
            raise BadInput(f"cannot create {path}: {folder} is not writable; pick another --runs-dir")


def _engine_kwargs(url: str) -> tuple[str, dict]:
    """The SQLAlchemy URL (postgresql:// -> psycopg 3) and engine settings for a storage URL."""
    if url.startswith("sqlite:///"):
        # Several local workers on one SQLite file wait for the write lock instead of failing.
        return url, {"connect_args": {"timeout": 120}}
    if url.startswith(("postgresql://", "postgresql+psycopg://")):
        driver_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        return driver_url, {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    if url.startswith("mysql"):
        return url, {"pool_pre_ping": True}
    raise BadInput(f"unsupported storage URL {redact(url)!r}: use sqlite:///PATH or postgresql://USER:PASS@HOST/DB")


def _check_schema_exists(url: str, driver_url: str, engine_kwargs: dict) -> None:
    """Read-only commands must not create or migrate a schema: the Optuna tables must be there already."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise BadInput(
            f"no study database at {url.removeprefix('sqlite:///')}; check the path, --runs-dir or --storage"
        )
    engine = sqlalchemy.create_engine(driver_url, **engine_kwargs)
    try:
        if not sqlalchemy.inspect(engine).has_table("studies"):
            raise BadInput(f"{redact(url)} holds no Optuna storage (no 'studies' table); check --storage")
    finally:
        engine.dispose()


def open_storage(
    url: str,
    heartbeat: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    read_only: bool = False,
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats (a killed worker's trial fails and is retried) and lock timeouts.

    `read_only` (report, export, dashboard) refuses a storage without Optuna's tables instead of
    creating them. Messages quote the URL as typed, with its credentials masked.
    """
    if url.startswith("sqlite:///"):
        _check_sqlite_file(url)
    driver_url, engine_kwargs = _engine_kwargs(url)
    retry = None
    if heartbeat and max_retry is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental in Optuna 5, and the supported way
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    try:
        if read_only:
            _check_schema_exists(url, driver_url, engine_kwargs)
        return _connect(driver_url, engine_kwargs, heartbeat, grace_period, retry)
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection failed"
        if "readonly" in reason or "read-only" in reason:
            raise BadInput(f"storage {redact(url)} is read-only; make it writable or copy it") from None
        if "disk is full" in reason or "disk I/O error" in reason:
            raise RuntimeFailure(f"storage {redact(url)}: {reason}; free some disk space") from None
        raise RuntimeFailure(f"cannot reach storage {redact(url)}: {scrub(reason, url)}") from None
    except (sqlalchemy.exc.DatabaseError, ImportError, RuntimeError, sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise BadInput(_unusable(exc, url)) from None


def _connect(
    driver_url: str, engine_kwargs: dict, heartbeat: int | None, grace_period: int | None, retry: Any
) -> optuna.storages.RDBStorage:
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # scoped: heartbeats are "experimental" in Optuna 5, and supported
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    driver_url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=retry,
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as exc:
            # Two processes created the schema of a new database at once (workers starting together, or
            # a reader opening it mid-creation): the other one won ("UNIQUE constraint failed:
            # alembic_version", SQLite's "table ... already exists", PostgreSQL's 'relation "alembic_version"
            # already exists', a ProgrammingError); opening again finds its tables.
            racing = isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc.orig)
            if not racing or attempt == 2:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _unusable(exc: Exception, url: str) -> str:
    """Why a storage URL cannot be used, in one line that says what to do."""
    if isinstance(exc, sqlalchemy.exc.DatabaseError):
        return f"storage {redact(url)} is not a usable database: {scrub(str(exc.orig).splitlines()[0], url)}"
    if isinstance(exc, ImportError):  # SQLAlchemy's missing module, or Optuna's "Failed to import DB access module"
        driver = f" {exc.name!r}" if exc.name else ""
        return (
            f"storage {redact(url)} needs a Python database driver{driver} that is not installed; "
            "install it, or use sqlite:/// or postgresql://"
        )
    if isinstance(exc, RuntimeError):  # Optuna: the tables were made by another Optuna version
        reason = scrub(str(exc).splitlines()[0], url)
        return f"storage {redact(url)}: {reason} (upgrade it with 'optuna storage upgrade --storage URL')"
    return f"bad storage URL {redact(url)}: {scrub(str(exc).splitlines()[0], url)}"


def load_study(url: str, name: str) -> optuna.Study:
    """Open an existing study, or fail with one line listing the studies that exist. Creates nothing."""
    storage = open_storage(url, read_only=True)
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none"
        raise BadInput(f"no study named {name!r} in {redact(url)} (studies there: {known})")
    return optuna.load_study(study_name=name, storage=storage)
