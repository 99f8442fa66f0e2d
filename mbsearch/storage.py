"""Optuna storage from a URL: SQLite by default, PostgreSQL for many machines. Clear errors, no secrets."""

from __future__ import annotations

import os
import re
import sqlite3
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc

from mbsearch.errors import BadInput, RuntimeFailure

_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]*(@)")


def redact(url: str) -> str:
    """The URL with its password replaced, for logs, progress lines and reports."""
    return _PASSWORD.sub(r"\1***\2", url)


def default_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def _check_sqlite_file(url: str) -> None:
    path = Path(url.removeprefix("sqlite:///"))
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
        while not folder.exists():
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            raise BadInput(f"cannot create {path}: {folder} is not writable; pick another --runs-dir")


def open_storage(
    url: str, heartbeat: int | None = None, grace_period: int | None = None, max_retry: int | None = None
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats (a killed worker's trial fails and is retried) and lock timeouts."""
    if url.startswith("sqlite:///"):
        _check_sqlite_file(url)
        # Several local workers on one SQLite file wait for the write lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith(("postgresql://", "postgresql+psycopg://")):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    elif url.startswith("mysql"):
        engine_kwargs = {"pool_pre_ping": True}
    else:
        raise BadInput(f"unsupported storage URL {redact(url)!r}: use sqlite:///PATH or postgresql://USER:PASS@HOST/DB")
    retry = None
    if heartbeat and max_retry is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental in Optuna 5, and the supported way
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    try:
        with warnings.catch_warnings():  # scoped: heartbeats are "experimental" in Optuna 5, and supported
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=retry,
            )
    except sqlalchemy.exc.OperationalError as exc:
        reason = redact(str(exc.orig).strip().splitlines()[0]) if exc.orig else "connection failed"
        raise RuntimeFailure(f"cannot reach storage {redact(url)}: {reason}") from None
    except sqlalchemy.exc.DatabaseError as exc:
        raise BadInput(f"storage {redact(url)} is not a usable database: {str(exc.orig).splitlines()[0]}") from None
    except (sqlalchemy.exc.ArgumentError, ModuleNotFoundError, ValueError) as exc:
        raise BadInput(f"bad storage URL {redact(url)}: {str(exc).splitlines()[0]}") from None


def load_study(url: str, name: str) -> optuna.Study:
    """Open an existing study, or fail with one line listing the studies that exist."""
    storage = open_storage(url)
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none"
        raise BadInput(f"no study named {name!r} in {redact(url)} (studies there: {known})")
    return optuna.load_study(study_name=name, storage=storage)
