"""A search's latencies: measured on a target by its recipe, cached by device, recipe and network (a
rerun or a resumed search never times the same network twice), and started ahead of training.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.device.timing import (
    LatencyStats,
)
from mbsearch.latency.recipes import recipe_of, time_network
from mbsearch.latency.targets import LocalTarget, Target


def measure(
    model: nn.Module,
    arch: Arch,
    target: str = "cpu",
    runtime: str = "onnxruntime",
    threads: int = 1,
    runs: int | None = None,
    timings: dict[str, float] | None = None,
) -> LatencyStats:
    """Time batch-1 inference on a local target by the search's recipe (SEARCH_RECIPE)."""
    return measure_on(LocalTarget(target, runtime, threads), model, arch, timings, runs)


def measure_on(
    target: Target,
    model: nn.Module,
    arch: Arch,
    timings: dict[str, float] | None = None,
    runs: int | None = None,
    recipe: dict[str, Any] | None = None,
) -> LatencyStats:
    """prepare + time on any target by `recipe` (with `runs` timed runs per turn or attempt, if given), with
    `timings` receiving the seconds of each ("latency" for timing)."""
    prepared = target.prepare(model, arch, timings)
    recipe = recipe or recipe_of(target)
    if runs is not None:
        recipe = recipe | {"runs": runs}
        prepared = replace(prepared, runs=runs)
    started = time.perf_counter()
    stats = time_network(target, prepared, recipe)
    if timings is not None:
        timings["latency"] = round(time.perf_counter() - started, 4)
    return stats


class LatencyCache:
    """SQLite cache of LatencyStats, shared by every study and worker that uses the same runs folder.

    The cache only saves time: when SQLite refuses (a lock held too long, a broken file), the latency
    is measured again rather than failing the trial.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection: sqlite3.Connection | None = None
        try:
            self._connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
            with self._connection:
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS latency (key TEXT PRIMARY KEY, stats TEXT NOT NULL)"
                )
        except sqlite3.Error:
            self.close()

    @staticmethod
    def key(arch: Arch, target: Target) -> str:
        """Latency belongs to a device (its fingerprint: CPU, cores, runtime, threads) and a network."""
        digest = hashlib.sha256(arch.key().encode()).hexdigest()
        recipe = recipe_of(target)["name"]  # a latency taken by another recipe is not reused
        return f"{target.device()['fingerprint']}|{type(target).__name__}|{recipe}|{digest}"

    def get(self, key: str) -> LatencyStats | None:
        if self._connection is None:
            return None
        try:
            row = self._connection.execute("SELECT stats FROM latency WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return LatencyStats(**json.loads(row[0])) if row else None

    def put(self, key: str, stats: LatencyStats) -> None:
        if self._connection is None:
            return
        try:
            with self._connection:
                self._connection.execute(
                    "INSERT OR REPLACE INTO latency (key, stats) VALUES (?, ?)", (key, json.dumps(asdict(stats)))
                )
        except sqlite3.Error:
            pass  # the next run measures this architecture again

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class PendingLatency:
    """A latency being taken, possibly on another machine while this one trains; `result()` waits for it."""

    def __init__(self, work: Callable[[], tuple[LatencyStats, bool]], background: bool) -> None:
        self._work = work
        self._outcome: tuple[LatencyStats, bool] | BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            # A daemon thread: an interrupted search must not wait for an agent's answer to exit.
            self._thread = threading.Thread(target=self._run, daemon=True, name="latency")
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            self._outcome = self._work()
        except BaseException as exc:  # handed to the caller of result(), in its own thread
            self._outcome = exc

    def result(self) -> tuple[LatencyStats, bool]:
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(0.2)  # short joins: Ctrl-C still reaches the main thread
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome


def start_latency(
    model: nn.Module,
    arch: Arch,
    cache: LatencyCache | None,
    target: Target,
    timings: dict[str, float] | None = None,
    background: bool = False,
) -> PendingLatency:
    """Cached latency, or export here and time on the target, in the background when the target is another
    machine and `background` is asked (so the caller trains meanwhile)."""
    key = LatencyCache.key(arch, target)
    if cache is not None and (hit := cache.get(key)) is not None:
        return PendingLatency(lambda: (hit, True), background=False)
    prepared = target.prepare(model, arch, timings)

    def work() -> tuple[LatencyStats, bool]:
        started = time.perf_counter()
        stats = time_network(target, prepared)
        if timings is not None:
            timings["latency"] = round(time.perf_counter() - started, 4)
        if cache is not None:
            cache.put(key, stats)
        return stats, False

    return PendingLatency(work, background=background and target.overlaps_training)


def measure_cached(
    model: nn.Module,
    arch: Arch,
    cache: LatencyCache | None,
    target: Target,
    timings: dict[str, float] | None = None,
) -> tuple[LatencyStats, bool]:
    """Latency from the cache when this device already timed this architecture; else measure and store."""
    return start_latency(model, arch, cache, target, timings).result()
