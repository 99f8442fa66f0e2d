"""Finding a finished study by name: its storage, its settings, its trials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from mbsearch.architecture.arch import Arch
from mbsearch.errors import BadInput
from mbsearch.results.pareto import decision_front, trials_frame
from mbsearch.study import records
from mbsearch.study.storage import default_url, load_study


@dataclass
class FinishedStudy:
    study: optuna.Study
    study_dir: Path
    settings: dict[str, Any]  # the RunConfig identity stored by `mbsearch run`
    frame: pd.DataFrame
    front: pd.DataFrame  # the searched front the report draws: multi-fidelity where trials were promoted, else proxy
    decision: pd.DataFrame  # the front decisions use: verified, else highest rung, else proxy
    basis: str  # "verified", "multi-fidelity" or "proxy": what `decision` rests on

    def arch(self, number: int) -> Arch:
        return records.trial_arch(self.study.trials[number])


def open_finished(name: str, runs_dir: Path, storage: str | None) -> FinishedStudy:
    """Load a study with at least one complete trial, or fail with one clear line."""
    study_dir = runs_dir / name
    if storage is None and not (study_dir / "study.db").is_file():
        raise BadInput(f"unknown study {name!r}: no {study_dir / 'study.db'}; check --runs-dir or pass --storage URL")
    study = load_study(storage or default_url(study_dir), name)
    frame = trials_frame(study)
    if frame.empty:
        raise BadInput(f"study {name!r} has no trial yet; run 'mbsearch run --study {name}' first")
    if not (frame["state"] == "COMPLETE").any():
        failed = frame[frame["state"].isin(["FAIL", "PRUNED"])]
        reason = next((str(r) for r in failed.get("fail_reason", []) if isinstance(r, str) and r), "no reason stored")
        raise BadInput(
            f"study {name!r}: none of its {len(frame)} trial(s) completed ({len(failed)} failed or pruned, "
            f"e.g. {reason.splitlines()[0]}); fix the cause and rerun 'mbsearch run --study {name}'"
        )
    settings = records.settings(study, f"study {name!r}")
    if settings is None:
        raise BadInput(f"study {name!r} was not made by 'mbsearch run' (no mbsearch settings stored)")
    decision, basis = decision_front(frame)
    searched = decision_front(frame.assign(verified_accuracy=float("nan")))[0]  # the one rule, before verify
    return FinishedStudy(study, study_dir, settings, frame, searched, decision, basis)


def study_target(finished: FinishedStudy, token: str | None = None):
    """The latency target the study was searched on (local, an agent, or its lookup table), reopened.
    Refused where it is not the device the study was timed on: baselines timed elsewhere would be set
    beside the study's latencies, two instruments in one comparison."""
    from mbsearch.latency.factory import open_target

    settings = finished.settings
    device = records.device(finished.study)
    if settings.get("latency") == "predicted":
        return open_target("predicted", lut=Path(device.get("target", "")))
    opened = open_target(settings["target"], settings["runtime"], settings["threads"], token)
    recorded, here = device.get("fingerprint"), opened.device()["fingerprint"]
    if recorded is not None and here != recorded:
        raise BadInput(
            f"study {finished.study.study_name!r} was timed on device {recorded} ({device.get('cpu')}, "
            f"{device.get('cores')} core(s)); {settings['target']} here is device {here} "
            f"({opened.device().get('cpu')}): run this on that machine, or pass --no-baselines"
        )
    return opened


def study_training(finished: FinishedStudy, name: str | None, verified: bool = False):
    """The training device for the study's baselines: by default the kind its candidates trained on (or its
    verification, with `verified`); another instrument is refused, since the margins would mix two."""
    from mbsearch.train.device import resolve_device

    budget = records.verify_budget(finished.study) or {}
    recorded = budget.get("training") if verified else records.training(finished.study)
    what = "verified its trials" if verified else "trained its candidates"
    training = resolve_device(name or (recorded.split("/")[0] if recorded else "auto"))
    if recorded is not None and training.instrument != recorded:
        raise BadInput(
            f"study {finished.study.study_name!r} {what} on {recorded}; the baselines would train on "
            f"{training.instrument} and not compare: drop --device, or run this where {recorded} is available"
        )
    return training
