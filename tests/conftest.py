"""Shared fixtures. Tests run on real data, real training and real storage; nothing is mocked."""

from __future__ import annotations

import logging
import os

import pytest
import torch

# Two threads on two cores make timings and training erratic; tests pin one thread like the tool does.
torch.set_num_threads(1)
import optuna  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("optuna").setLevel(logging.WARNING)


# Timing waits at most this long per call for a disturbed machine to quiet (60 s by default): tests check
# what is measured, not how quiet the CI machine is, and must finish in CI's time.
os.environ.setdefault("MBSEARCH_QUIET_WAIT_S", "1")
os.environ.setdefault("MBSEARCH_QUIET_SETTLE_S", "0.2")  # and spread a gate's first reads over this long


def _seconds(item: pytest.Item) -> float:
    """A test's expected time, from its `slow(seconds=N)` marker (an unmarked test: 0)."""
    marker = item.get_closest_marker("slow")
    return 0.0 if marker is None else float(marker.kwargs.get("seconds", 30))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules holding the slowest tests run first, slowest first: with one worker per core, a long test
    that starts last holds up the whole run. Whole modules move, so that their fixtures are made once."""
    slowest: dict[str, float] = {}
    for item in items:
        slowest[item.module.__name__] = max(slowest.get(item.module.__name__, 0.0), _seconds(item))
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (-slowest[item.module.__name__], order[id(item)]))


@pytest.fixture(autouse=True, scope="session")
def host_lock_dir(tmp_path_factory):
    """A host timing lock folder of the session's own (each pytest worker's), never the system's: a test
    run beside a real search on this host neither waits for it nor disturbs its timings through the lock."""
    os.environ["MBSEARCH_LOCK_DIR"] = str(tmp_path_factory.mktemp("host-locks"))


@pytest.fixture(autouse=True, scope="session")
def image_cache(tmp_path_factory):
    """Folder datasets decode into a cache of the session's own, never the repository's runs/."""
    os.environ["MBSEARCH_IMAGE_CACHE"] = str(tmp_path_factory.mktemp("image-cache"))


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


TINY_BUDGET = dict(train_size=256, val_size=256, epochs=0.5, batch_size=64, train_threads=1)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A finished 6-trial search at a tiny budget, shared by the export, report and dashboard tests."""
    from mbsearch.search.loop import run_search
    from mbsearch.study.config import RunConfig

    runs = tmp_path_factory.mktemp("runs")
    result = run_search(RunConfig(runs_dir=runs, study="tiny", trials=6, sampler="random", **TINY_BUDGET))
    return runs, "tiny", result


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 (installed by `make test` from Debian's packages)."""
    from tests.postgres import Server, find_bin

    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed and could not be: 'apt-get install postgresql' failed or is absent")
    server = Server(bin_dir)
    server.start()
    yield server
    server.stop()
