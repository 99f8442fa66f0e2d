"""optuna-dashboard on a study's storage, with the trials' arch JSON files as artifacts."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound

from mbsearch.errors import BadInput
from mbsearch.study.storage import open_storage


def artifact_store(study_dir: Path, create: bool = True) -> optuna.artifacts.FileSystemArtifactStore | None:
    """Where each trial's arch JSON is kept for the dashboard (per machine, beside the study's outputs).

    Readers pass create=False: None where the folder does not exist, and nothing is created."""
    folder = study_dir / "artifacts"
    if not create and not folder.is_dir():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(folder))


def check_port(host: str, port: int) -> None:
    """Refuse a busy port or an address this machine does not have, before anything is printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BadInput(
                f"cannot listen on {host} port {port}: {exc.strerror}; pick another --port or --host"
            ) from None


def serve(storage_url: str, study_dir: Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the dashboard until interrupted. Binds to 127.0.0.1 unless `host` says otherwise."""
    from optuna_dashboard import run_server

    storage = open_storage(storage_url, read_only=True)
    run_server(storage, host=host, port=port, artifact_store=artifact_store(study_dir, create=False))


def trial_artifact(study: optuna.Study, study_dir: Path, number: int, suffix: str) -> bytes | None:
    """The content of trial `number`'s artifact whose file name ends with `suffix` (e.g. ".int8.onnx"), or
    None where there is none (another machine's artifacts folder, or a trial made before it existed)."""
    store = artifact_store(study_dir, create=False)
    if store is None:
        return None
    trial = study.trials[number]
    for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage):
        if meta.filename.endswith(suffix):
            try:
                with store.open_reader(meta.artifact_id) as reader:
                    return reader.read()
            except ArtifactNotFound:  # recorded in the study, but its file is on the host that uploaded it
                return None
    return None
