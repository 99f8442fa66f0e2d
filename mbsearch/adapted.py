"""Networks trimmed by `mbsearch adapt`, placed beside the front of the study their source trial came from.

An adapted point is not a search trial: its accuracy is after NetAdapt's fine-tunes (not the search's proxy
budget) and its latency was measured by `adapt`. The report therefore draws it apart, linked to the trial it
came from, and says on which device it was timed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mbsearch.arch import load_arch
from mbsearch.errors import BadInput
from mbsearch.studies import FinishedStudy

ADAPTED_FILE = "adapted.json"  # what `mbsearch adapt` writes in its output folder


def adapted_frame(paths: list[Path], finished: FinishedStudy) -> pd.DataFrame | None:
    """One row per adapted network, with the trial it came from; BadInput (one line) for a file that is not
    an `adapt` output of a trial of this study."""
    if not paths:
        return None
    study = finished.study.study_name
    trials = finished.frame.set_index("number")
    device = (finished.study.user_attrs.get("latency_device") or {}).get("fingerprint")
    rows = []
    for given in paths:
        path = given / ADAPTED_FILE if given.is_dir() else given
        if not path.is_file():
            raise BadInput(f"--adapted {given}: no such file; pass the {ADAPTED_FILE} (or its folder) 'adapt' wrote")
        arch = load_arch(path)
        provenance, metrics = arch.provenance or {}, arch.metrics or {}
        if "adapted_from" not in provenance or "latency_ms" not in metrics:
            raise BadInput(f"--adapted {path}: not an 'mbsearch adapt' output (no adaptation provenance)")
        source = provenance.get("source_provenance") or {}
        if source.get("study") != study or source.get("trial") not in trials.index:
            came_from = f"study {source['study']!r}" if source.get("study") else "no study (not an exported trial)"
            raise BadInput(
                f"--adapted {path}: adapted from {came_from}, not from a trial of {study!r}; "
                "report it with the study it came from"
            )
        number = int(source["trial"])
        rows.append(
            {
                "name": arch.name,
                "path": str(path),
                "source_trial": number,
                "source_latency_ms": float(trials.loc[number, "latency_ms"]),
                "source_val_accuracy": float(trials.loc[number, "val_accuracy"]),
                "start_latency_ms": float(metrics["start_latency_ms"]),
                "start_val_accuracy": float(metrics["start_val_accuracy"]),
                "latency_ms": float(metrics["latency_ms"]),
                "val_accuracy": float(metrics["val_accuracy"]),
                "params": int(metrics["params"]),
                "iterations": int(provenance.get("iterations", 0)),
                "goal_ms": float(provenance["latency_target_ms"]),
                "met": float(metrics["latency_ms"]) <= float(provenance["latency_target_ms"]),
                "same_device": device is not None and provenance.get("device") == device,
            }
        )
    return pd.DataFrame(rows)
