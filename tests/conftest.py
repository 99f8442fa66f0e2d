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


@pytest.fixture(autouse=True, scope="session")
def host_lock_dir(tmp_path_factory):
    """One host timing lock for the whole run, as on a real host: `make test` runs two pytest workers
    (pytest-xdist), and a latency timed in one waits for the other's training step, as a timer does for a
    search's. Tests of the lock itself use folders of their own."""
    # the workers' base folders share a parent: pytest-of-USER/pytest-N/popen-gwK
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base
    os.environ["MBSEARCH_LOCK_DIR"] = str(shared / "host-locks")


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
