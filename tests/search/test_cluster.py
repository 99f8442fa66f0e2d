"""The cluster recipes in docs/cluster/: the SLURM array script and the Kubernetes manifest, run as far as this
machine can: a real PostgreSQL server and several worker processes started the way each recipe starts them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
import yaml

from mbsearch.study.storage import open_storage
from mbsearch.train.device import CPU

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cluster"
TINY = ["--train-size", "256", "--val-size", "256", "--epochs", "0.5", "--batch-size", "64"]
BIN = str(Path(sys.executable).parent)  # where the venv's `mbsearch` entry point lives


def _finish_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]


def _check_study(url: str, name: str, trials: int) -> None:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == trials
    assert len({t.user_attrs["worker"] for t in complete}) >= 2  # the work was shared
    archs = [str(t.user_attrs["arch"]) for t in complete]
    assert len(set(archs)) == len(archs)  # no two workers evaluated the same candidate
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.slow(seconds=37)
def test_slurm_array_script_runs_workers_on_one_postgres_study(postgres, tmp_path) -> None:
    script = DOCS / "slurm-workers.sh"
    array = re.search(r"^#SBATCH --array=0-(\d+)$", script.read_text(), re.MULTILINE)
    assert array and int(array.group(1)) >= 1
    url = postgres.new_database()
    processes = []
    for task in range(3):  # three tasks of the array, as SLURM starts them: the script with its variables
        env = os.environ | {
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "MBSEARCH_LOCK_DIR": str(tmp_path),
            "MBSEARCH_STORAGE": url,
            "STUDY": "slurm",
            "TRIALS": "9",
            "TMPDIR": str(tmp_path),
            "SLURM_ARRAY_JOB_ID": "42",
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_CPUS_PER_TASK": "1",
            "EXTRA_ARGS": " ".join(TINY),
        }
        processes.append(subprocess.Popen(["bash", str(script)], env=env, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))  # fmt: skip
    _finish_all(processes)
    _check_study(url, "slurm", 9)
    assert sorted(p.name for p in tmp_path.glob("mbsearch-42-*")) == ["mbsearch-42-0", "mbsearch-42-1", "mbsearch-42-2"]


def test_slurm_tasks_with_private_temp_folders_share_one_node_wide_lock(tmp_path) -> None:
    """Issue 35: the host lock lived in TMPDIR, which many sites make private per job, so workers on one node
    timed while their neighbours trained. Two tasks with their own TMPDIR get one lock folder, outside both;
    an empty EXTRA_ARGS passes nothing; TERM goes to the batch shell (B:), which execs mbsearch."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mbsearch").write_text('#!/bin/bash\necho "$MBSEARCH_LOCK_DIR"\necho "$#"\n')
    (bin_dir / "mbsearch").chmod(0o755)
    seen = []
    for task in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ("MBSEARCH_LOCK_DIR", "EXTRA_ARGS")}
        env |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MBSEARCH_STORAGE": "postgresql://u:p@db/nas",
                "TMPDIR": str(tmp_path / f"job{task}"), "SLURM_ARRAY_TASK_ID": str(task)}  # fmt: skip
        result = subprocess.run(["bash", str(DOCS / "slurm-workers.sh")], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        lock_dir, argc = result.stdout.split()
        seen.append(lock_dir)
        assert not lock_dir.startswith(str(tmp_path)) and argc == "15"  # the run flags, nothing empty added
    assert seen[0] == seen[1] == "/var/tmp/mbsearch-locks"
    assert re.search(r"^#SBATCH --signal=B:TERM@\d+$", (DOCS / "slurm-workers.sh").read_text(), re.MULTILINE)


def test_kubernetes_pods_share_the_nodes_lock_and_are_guaranteed() -> None:
    """Issue 35: each pod had its own /tmp (so its own host lock), and a request below the limit made the
    pods Burstable while the manifest claimed exclusive cores."""
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((DOCS / "kubernetes.yaml").read_text())}
    pod = documents["Job"]["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    lock_dir = {e["name"]: e["value"] for e in worker["env"]}["MBSEARCH_LOCK_DIR"]
    mount = next(m for m in worker["volumeMounts"] if m["mountPath"] == lock_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == lock_dir  # node-wide, not emptyDir
    assert worker["resources"]["requests"] == worker["resources"]["limits"]
    assert "static CPU manager" in (DOCS.parent / "cluster.md").read_text()


def test_slurm_script_without_storage_says_what_to_set(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MBSEARCH_STORAGE"} | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(DOCS / "slurm-workers.sh")], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "set MBSEARCH_STORAGE=postgresql://" in result.stderr


@pytest.mark.slow(seconds=41)
def test_kubernetes_manifest_workers_run_on_one_postgres_study(postgres, tmp_path) -> None:
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((DOCS / "kubernetes.yaml").read_text())}
    secret = documents["Secret"]["stringData"]
    # The workers' URL names the server the manifest starts, with the user, password and database it creates.
    storage = urlsplit(secret["MBSEARCH_STORAGE"])
    service = documents["Service"]
    assert storage.scheme == "postgresql" and storage.hostname == service["metadata"]["name"]
    assert storage.port == service["spec"]["ports"][0]["port"] == 5432
    assert (storage.username, storage.password) == (secret["POSTGRES_USER"], secret["POSTGRES_PASSWORD"])
    assert storage.path == f"/{secret['POSTGRES_DB']}"
    job = documents["Job"]["spec"]
    worker = job["template"]["spec"]["containers"][0]
    assert worker["command"] == ["mbsearch"] and worker["args"][0] == "run"
    assert {"secretRef": {"name": documents["Secret"]["metadata"]["name"]}} in worker["envFrom"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in worker["args"][1:])
    assert int(args["trials"]) >= job["parallelism"] >= 2

    # Start the pods' command as the Job does, on this machine's PostgreSQL: the secret's variables (the
    # storage among them, pointing here), the container's env, a runs folder per pod; a small budget.
    url = postgres.new_database()
    trials = 8
    processes = []
    for pod in range(job["parallelism"]):
        env = os.environ | secret | {e["name"]: e["value"] for e in worker.get("env", [])}
        env |= {"MBSEARCH_STORAGE": url, "MBSEARCH_LOCK_DIR": str(tmp_path), "JOB_COMPLETION_INDEX": str(pod)}
        command = [f"{BIN}/mbsearch", *[a for a in worker["args"] if not a.startswith(("--runs-dir", "--trials"))]]
        command += ["--runs-dir", str(tmp_path / f"pod{pod}"), "--trials", str(trials), "--train-threads", "1", *TINY]
        processes.append(subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    _finish_all(processes)
    _check_study(url, args["study"], trials)


def test_workers_of_separate_commands_on_a_shared_storage_draw_apart(tmp_path, monkeypatch) -> None:
    """Each host of a cluster runs its own command, all of them worker 0, and they may all open the study on
    the same history: on a shared storage their samplers must still differ (else their first candidates
    coincide). On the default storage the seed stays a function of the history (a rerun repeats it)."""
    from mbsearch.search import loop
    from mbsearch.study.config import RunConfig

    seeds: list[int] = []
    monkeypatch.setattr(loop, "make_sampler", lambda name, seed, trials: seeds.append(seed) or None)
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    for pid in (101, 202):  # two processes, as on two hosts
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        loop._open_study(RunConfig(runs_dir=tmp_path, study="s", storage=shared), shared, worker_id=0, training=CPU)
    for pid in (101, 202):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        local = f"sqlite:///{tmp_path / 'local.db'}"
        loop._open_study(RunConfig(runs_dir=tmp_path, study="l"), local, worker_id=0, training=CPU)
    assert seeds[0] != seeds[1]
    assert seeds[2] == seeds[3]


def test_sampler_seed_moves_the_sampler_alone(tmp_path, monkeypatch) -> None:
    """--sampler-seed repeats a search on the same split (a supernet is trained for one split) with other
    draws; without it the sampler follows --seed."""
    from mbsearch.search import loop
    from mbsearch.study.config import RunConfig

    seeds: list[int] = []
    monkeypatch.setattr(loop, "make_sampler", lambda name, seed, trials: seeds.append(seed) or None)
    for study, extra in (("a", {}), ("b", {"sampler_seed": 7})):
        url = f"sqlite:///{tmp_path / study}.db"
        loop._open_study(RunConfig(runs_dir=tmp_path, study=study, **extra), url, worker_id=0, training=CPU)
    assert seeds == [0, 7]
    assert "sampler_seed" not in RunConfig(sampler_seed=7).identity()  # resumable with other draws
