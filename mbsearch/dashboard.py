"""optuna-dashboard on a study's storage, with the trials' arch JSON files as artifacts."""

from __future__ import annotations

from pathlib import Path

import optuna

from mbsearch.storage import open_storage


def artifact_store(study_dir: Path, create: bool = True) -> optuna.artifacts.FileSystemArtifactStore | None:
    """Where each trial's arch JSON is kept for the dashboard (per machine, beside the study's outputs).

    Readers pass create=False: None where the folder does not exist, and nothing is created."""
    folder = study_dir / "artifacts"
    if not create and not folder.is_dir():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(folder))


def serve(storage_url: str, study_dir: Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the dashboard until interrupted. Binds to 127.0.0.1 unless `host` says otherwise."""
    from optuna_dashboard import run_server

    storage = open_storage(storage_url, read_only=True)
    run_server(storage, host=host, port=port, artifact_store=artifact_store(study_dir, create=False))
