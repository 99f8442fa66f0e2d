"""Who trains which evaluation: claims that are atomic on SQLite and PostgreSQL, renewed while they train.

A claim is a row of its own table in the study's database (`mbsearch_claims`), keyed by study, tag and trial
number. Optuna's study attributes cannot hold it: writing one is read-then-write, and a duplicate-key error
between two writers is dropped, so two workers could both believe they won.

- Taking a free claim is one INSERT: the primary key lets exactly one of any number of racing workers in.
- Taking over a stale claim (its heartbeat older than the grace period, or a process of this host that has
  died) is one compare-and-swap UPDATE on the holder and heartbeat that were read: when another worker took
  it in between, no row matches and the takeover fails.
- While the holder trains, a thread renews its heartbeat, so a training longer than the grace period keeps
  its claim; a claim expires only when its worker has stopped.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import sqlalchemy
from sqlalchemy import Column, Float, Integer, MetaData, String, Table

_METADATA = MetaData()
CLAIMS = Table(
    "mbsearch_claims",
    _METADATA,
    Column("study", String(512), primary_key=True),
    Column("tag", String(64), primary_key=True),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("worker", String(300), nullable=False),
    Column("heartbeat", Float, nullable=False),
)
_READY: set[int] = set()  # engines whose claims table is known to exist


@dataclass(frozen=True)
class Claim:
    worker: str  # host:pid
    heartbeat: float  # time.time() of the last renewal


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _engine(study: optuna.Study) -> sqlalchemy.Engine:
    """The SQLAlchemy engine of the study's RDB storage (Optuna wraps it in a cache)."""
    storage = getattr(study._storage, "_backend", study._storage)
    engine = storage.engine
    if id(engine) not in _READY:
        for attempt in range(3):
            try:
                _METADATA.create_all(engine, checkfirst=True)
                break
            except sqlalchemy.exc.DBAPIError:  # another worker created it at the same moment
                if attempt == 2:
                    raise
                time.sleep(0.2)
        _READY.add(id(engine))
    return engine


def _where(study: optuna.Study, tag: str, number: int):
    return (CLAIMS.c.study == study.study_name) & (CLAIMS.c.tag == tag) & (CLAIMS.c.number == number)


def read(study: optuna.Study, tag: str, number: int) -> Claim | None:
    """The claim on (tag, trial), or None."""
    with _engine(study).connect() as connection:
        row = connection.execute(
            sqlalchemy.select(CLAIMS.c.worker, CLAIMS.c.heartbeat).where(_where(study, tag, number))
        ).first()
    return Claim(row.worker, float(row.heartbeat)) if row else None


def _dead_here(worker: str) -> bool:
    """Whether `worker` (host:pid) was a process of this host that no longer runs."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def is_live(claim: Claim, grace_seconds: float) -> bool:
    """A claim whose worker still runs: renewed within the grace period, and not a dead process here."""
    return claim.heartbeat > time.time() - grace_seconds and not _dead_here(claim.worker)


def take(study: optuna.Study, tag: str, number: int, grace_seconds: float) -> bool:
    """Take the claim on (tag, trial) for this process: True for exactly one of any number of racers."""
    me, engine = worker_id(), _engine(study)
    for _ in range(3):  # a claim released between our INSERT and our read is inserted again
        try:
            with engine.begin() as connection:
                connection.execute(
                    CLAIMS.insert().values(
                        study=study.study_name, tag=tag, number=number, worker=me, heartbeat=time.time()
                    )
                )
            return True
        except sqlalchemy.exc.IntegrityError:
            pass
        current = read(study, tag, number)
        if current is None:
            continue
        if current.worker != me and is_live(current, grace_seconds):
            return False
        with engine.begin() as connection:  # compare-and-swap: only if nobody took it since we read it
            swapped = connection.execute(
                CLAIMS.update()
                .where(_where(study, tag, number))
                .where(CLAIMS.c.worker == current.worker)
                .where(CLAIMS.c.heartbeat == current.heartbeat)
                .values(worker=me, heartbeat=time.time())
            )
        return swapped.rowcount == 1
    return False


def renew(study: optuna.Study, tag: str, number: int) -> bool:
    """Renew this process's claim; False when it is not ours any more."""
    with _engine(study).begin() as connection:
        result = connection.execute(
            CLAIMS.update()
            .where(_where(study, tag, number))
            .where(CLAIMS.c.worker == worker_id())
            .values(heartbeat=time.time())
        )
    return result.rowcount == 1


def release(study: optuna.Study, tag: str, number: int) -> None:
    """Give this process's claim back (done, failed or interrupted)."""
    with _engine(study).begin() as connection:
        connection.execute(CLAIMS.delete().where(_where(study, tag, number)).where(CLAIMS.c.worker == worker_id()))


@dataclass
class Lease:
    """What a heartbeat learns while its body runs: `lost` once another worker holds the claim."""

    lost: bool = False


@contextmanager
def heartbeat(study: optuna.Study, tag: str, number: int, grace_seconds: float) -> Iterator[Lease]:
    """Renew the claim from a thread while the body (a training) runs, several times per grace period. The
    Lease it yields says whether the claim was taken over meanwhile (a renewal that found another holder),
    so that the body's result is not stored over the new holder's."""
    stop = threading.Event()
    interval = max(0.2, min(grace_seconds / 4, 30.0))
    lease = Lease()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                if not renew(study, tag, number):
                    lease.lost = True
                    return
            except sqlalchemy.exc.SQLAlchemyError:  # a busy or briefly lost database: the next beat retries
                continue

    thread = threading.Thread(target=beat, name=f"claim-{tag}-{number}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
