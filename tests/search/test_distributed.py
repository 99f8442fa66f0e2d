"""Distributed search on a real PostgreSQL server, crash recovery with heartbeats, and SQLite workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from mbsearch.study.storage import open_storage, redact

TINY = ["--train-size", "256", "--val-size", "256", "--epochs", "0.5", "--batch-size", "64"]
# Trials long enough to be killed in the middle of one (some seconds), of networks of a bounded size: the v3
# space's largest random networks made each of these tests take 1.5-2.5 minutes on the 2-core VM.
SLOW = ["--train-size", "2048", "--val-size", "256", "--epochs", "1", "--batch-size", "64"]
MID_SPACE = """
name: mid
stem: {out: 16, kernel: 3, stride: 2, act: hswish}
width: [0.75, 1.0]
choices: {block: [ir], kernel: [3, 5], expand: [3, 4], se: [0, 0.25], act: [relu, hswish], depth: [1, 2]}
stages:
  - {out: 16, stride: 1, expand: [1]}
  - {out: 24, stride: 2}
  - {out: 40, stride: 2}
  - {out: 80, stride: 2}
head: {conv: 480, hidden: 1024, act: hswish, dropout: 0.2}
"""


def _mid_space(tmp_path) -> list[str]:
    path = tmp_path / "mid.yaml"
    path.write_text(MID_SPACE)
    return ["--space", str(path)]


FAST_HEARTBEAT = ["--heartbeat", "1", "--grace-period", "4"]
COMPLETE, RUNNING, FAIL = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.RUNNING,
    optuna.trial.TrialState.FAIL,
)


def _mbsearch(*args: str, tmp_path) -> subprocess.Popen:
    env = os.environ | {"MBSEARCH_LOCK_DIR": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "mbsearch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _finish(*args: str, tmp_path) -> tuple[str, str]:
    """Run mbsearch to the end; it must succeed."""
    process = _mbsearch(*args, tmp_path=tmp_path)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


def _load(url: str, name: str) -> optuna.Study:
    """The study as the workers see it. On SQLite the test waits for the write lock like the workers do
    (the default 5 s gave up while two workers wrote, and a poll then missed its moment)."""
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _wait_for(predicate, timeout: float = 180, what: str = "condition", process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"mbsearch exited with {process.returncode}: {process.communicate()[1][-3000:]}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow(seconds=55)
def test_three_workers_on_postgres_reach_exactly_the_target(postgres, tmp_path) -> None:
    url = postgres.new_database()
    args = ["run", "--storage", url, "--study", "pg", "--workers", "3", "--trials", "6", "--runs-dir", str(tmp_path)]
    stdout, stderr = _finish(*args, *TINY, tmp_path=tmp_path)
    study = _load(url, "pg")
    complete = study.get_trials(states=(COMPLETE,))
    assert len(complete) == 6
    assert len({t.number for t in complete}) == 6 and len({t._trial_id for t in complete}) == 6
    assert all("mbsearch.spec.arch/" in str(t.user_attrs["arch"]) for t in complete)
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) >= 2  # the work was shared
    assert not study.get_trials(states=(RUNNING,))
    # The password never reaches the output or the files.
    for text in (stdout, stderr, (tmp_path / "pg" / "trials.csv").read_text()):
        assert postgres_password(url) not in text
    assert redact(url) in stdout


def postgres_password(url: str) -> str:
    return url.split(":")[2].split("@")[0]


@pytest.mark.slow(seconds=60)
def test_sigkilled_worker_trial_fails_and_is_retried(postgres, tmp_path) -> None:
    url = postgres.new_database()
    args = ["run", "--storage", url, "--study", "kill", "--trials", "2", "--runs-dir", str(tmp_path)]
    args += SLOW + FAST_HEARTBEAT + _mid_space(tmp_path)
    victim = _mbsearch(*args, tmp_path=tmp_path)
    _wait_for(
        lambda: any(
            t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
            for t in _load(url, "kill").get_trials(states=(RUNNING,))
        ),
        what="a running trial",
        process=victim,
    )
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (killed,) = [
        t
        for t in _load(url, "kill").get_trials(states=(RUNNING,))
        if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
    ]
    _finish(*args, tmp_path=tmp_path)  # another machine carries on
    study = _load(url, "kill")
    assert study.trials[killed.number].state == FAIL
    complete = study.get_trials(states=(COMPLETE,))
    assert len(complete) == 2
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params  # the same candidate, run again


@pytest.mark.slow(seconds=70)
def test_sigkilled_sqlite_run_resumes_with_the_same_command(tmp_path) -> None:
    args = ["run", "--study", "crash", "--trials", "2", "--runs-dir", str(tmp_path), *SLOW, *FAST_HEARTBEAT]
    args += _mid_space(tmp_path)
    url = f"sqlite:///{tmp_path / 'crash' / 'study.db'}"
    first = _mbsearch(*args, tmp_path=tmp_path)
    _wait_for(
        lambda: (
            len(_load(url, "crash").get_trials(states=(COMPLETE,))) >= 1
            and _load(url, "crash").get_trials(states=(RUNNING,))
        ),
        what="one complete and one running trial",
        process=first,
    )
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = _load(url, "crash")
    done = {t.number: t.values for t in before.get_trials(states=(COMPLETE,))}
    (stale,) = before.get_trials(states=(RUNNING,))
    stdout, _ = _finish(*args, tmp_path=tmp_path)
    assert "resuming" in stdout
    study = _load(url, "crash")
    assert study.trials[stale.number].state == FAIL
    assert {n: study.trials[n].values for n in done} == done  # completed trials intact
    assert len(study.get_trials(states=(COMPLETE,))) == 2


@pytest.mark.slow(seconds=35)
def test_several_sqlite_workers_on_one_host_work(tmp_path) -> None:
    args = ["run", "--study", "lite", "--workers", "2", "--trials", "4", "--runs-dir", str(tmp_path)]
    _, stderr = _finish(*args, *TINY, tmp_path=tmp_path)
    assert "database is locked" not in stderr and "Traceback" not in stderr
    study = _load(f"sqlite:///{tmp_path / 'lite' / 'study.db'}", "lite")
    assert len(study.get_trials(states=(COMPLETE,))) == 4


def test_unreachable_postgres_is_one_line_exit_1(tmp_path) -> None:
    process = _mbsearch(
        "run",
        "--storage",
        "postgresql://u:hunter2@127.0.0.1:1/db",
        "--study",
        "x",
        "--runs-dir",
        str(tmp_path),
        *TINY,
        tmp_path=tmp_path,
    )
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbsearch: error: cannot reach storage")
    assert "hunter2" not in stderr and "u:***@" in stderr
    assert not (tmp_path / "x").exists()


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.mark.slow(seconds=40)
def test_interrupting_the_parent_stops_every_worker_cleanly(tmp_path) -> None:
    args = ["run", "--study", "stop", "--workers", "2", "--trials", "200", "--runs-dir", str(tmp_path), *TINY]
    url = f"sqlite:///{tmp_path / 'stop' / 'study.db'}"
    parent = _mbsearch(*args, tmp_path=tmp_path)
    _wait_for(
        lambda: len(_load(url, "stop").get_trials(states=(COMPLETE,))) >= 2, what="two complete trials", process=parent
    )
    parent.send_signal(signal.SIGINT)  # the parent alone, as `kill -INT` would; not the process group
    _, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("mbsearch: error: interrupted")
    assert "Traceback" not in stderr
    study = _load(url, "stop")
    assert not study.get_trials(states=(RUNNING,))  # every worker failed its running trial and left
    assert 2 <= len(study.get_trials(states=(COMPLETE,))) < 200


def test_processes_creating_one_new_sqlite_study_at_once_all_succeed(tmp_path) -> None:
    """Workers that start together race to create the schema of a new SQLite file; none may fail on it."""
    _race_to_create(f"sqlite:///{tmp_path / 'race.db'}", tmp_path, 4)


def test_processes_creating_one_new_postgres_study_at_once_all_succeed(postgres, tmp_path) -> None:
    """The same race on a new PostgreSQL database (a cluster's pods starting together): PostgreSQL says
    'relation "alembic_version" already exists' (a ProgrammingError), seen in a test of the Kubernetes
    recipe; none may fail on it."""
    for attempt in range(3):  # a race: three fresh databases make losing it all but certain on old code
        _race_to_create(postgres.new_database(), tmp_path / str(attempt), 6)


def _race_to_create(url: str, tmp_path, count: int) -> None:
    tmp_path.mkdir(exist_ok=True)
    code = "import sys; from mbsearch.study.storage import open_storage; open_storage(sys.argv[1])"
    barrier = tmp_path / "go"
    script = f"import os, time\nwhile not os.path.exists({str(barrier)!r}): time.sleep(0.01)\n{code}"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE, text=True) for _ in range(count)
    ]
    time.sleep(3)  # every process imported and waiting
    barrier.touch()
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * count, errors
