"""Pick an architecture from the Pareto front and write it as arch JSON, ONNX and timm strings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mbsearch.architecture.arch import Arch, write_arch
from mbsearch.architecture.blockstrings import timm_arch_def
from mbsearch.errors import BadInput
from mbsearch.files import check_outputs, write_atomic
from mbsearch.nn.onnx_export import write_onnx
from mbsearch.results.finished import FinishedStudy, open_finished
from mbsearch.results.pareto import knee
from mbsearch.study import records
from mbsearch.study.dashboard import trial_artifact

PICKS = ("knee", "max-accuracy", "min-latency")


def pick_row(front: pd.DataFrame, pick: str, max_latency: float | None = None) -> pd.Series:
    """The chosen point of the front, after dropping points slower than `max_latency`."""
    if pick not in PICKS:
        raise BadInput(f"unknown --pick {pick!r}: use one of {', '.join(PICKS)}")
    pool = front if max_latency is None else front[front["latency_ms"] <= max_latency]
    if pool.empty:
        fastest = front["latency_ms"].min()
        raise BadInput(f"no Pareto point meets --max-latency {max_latency} ms (the fastest takes {fastest:.3f} ms)")
    pool = pool.reset_index(drop=True)
    if pick == "max-accuracy":
        return pool.loc[pool["val_accuracy"].idxmax()]
    if pick == "min-latency":
        return pool.loc[pool["latency_ms"].idxmin()]
    return pool.loc[knee(pool)]


def chosen_arch(finished: FinishedStudy, row: pd.Series) -> Arch:
    """The trial's architecture with its measured metrics and its provenance."""
    number = int(row["number"])
    settings = finished.settings
    arch = finished.arch(number)
    provenance = {
        "study": finished.study.study_name,
        "trial": number,
        "space": finished.study.user_attrs.get(records.SPACE_NAME, settings["space"]),
        "target": settings["target"],
        "runtime": settings["runtime"],
        "threads": settings["threads"],
        "dataset": settings["dataset"],
        "budget": {key: settings[key] for key in ("epochs", "train_size", "batch_size", "lr", "val_size")},
        "precision": settings.get("precision", "fp32"),
        "evaluator": settings.get("evaluator", "brief"),
    }
    proxy = finished.frame.set_index("number").loc[number]
    metrics = {
        "val_accuracy": float(proxy["val_accuracy"]),  # the proxy's, as the search measured it
        "latency_ms": float(row["latency_ms"]),
        "latency_iqr_ms": float(row["latency_iqr_ms"]),
        "params": int(row["params"]),
        "macs": int(row["macs"]),
    }
    if finished.basis != "proxy":
        # The accuracy the pick rested on: verified (verify) or the highest multi-fidelity rung.
        metrics["decision_accuracy"] = float(row["val_accuracy"])
        metrics["decision_basis"] = finished.basis
    return arch.with_info(name=f"{finished.study.study_name}-trial-{number}", provenance=provenance, metrics=metrics)


INT8_SUFFIX = ".int8.onnx"  # the trial artifact of --precision int8 (search/objective.py uploads it)


@dataclass(frozen=True)
class Exported:
    arch: Arch
    basis: str  # what the pick was judged on, in words
    timm_arch_def: list | None  # timm's arch_def of the arch, when asked for
    int8_onnx: bool = False  # --onnx holds the int8 graph the search timed, not the float one


@dataclass(frozen=True)
class ExportRequest:
    """What `mbsearch export` writes: the arch JSON `output`, and `onnx` (None: no ONNX file) in `precision`
    (None: the study's), picked by `pick` among front points at most `max_latency` ms, with timm's strings
    when `timm`."""

    pick: str
    output: Path
    onnx: Path | None = None
    max_latency: float | None = None
    timm: bool = False
    precision: str | None = None


def export_study(study: str, runs_dir: Path, storage: str | None, request: ExportRequest) -> Exported:
    """`mbsearch export`: pick a trial of the decision front, write its arch JSON (and ONNX). Every output is
    checked before anything is read or written: never a study's database, an input or another command's file."""
    pick, output, onnx, max_latency, precision = (
        request.pick,
        request.output,
        request.onnx,
        request.max_latency,
        request.precision,
    )
    if max_latency is not None and max_latency <= 0:
        raise BadInput(f"--max-latency must be positive, got {max_latency}")
    protected = {"the study's database": runs_dir / study / "study.db"}
    if storage and storage.startswith("sqlite:///"):
        protected["the --storage database"] = Path(storage.removeprefix("sqlite:///"))
    check_outputs(
        {"--output": output, "--onnx": onnx},
        protected,
        kinds={"--output": "json:mbsearch.spec.arch/", "--onnx": "onnx"},
    )
    finished = open_finished(study, runs_dir, storage)
    searched = finished.settings.get("precision", "fp32")
    if precision == "int8" and searched != "int8":
        raise BadInput(
            f"study {study!r} searched in fp32: its trials have no int8 graph; search with --precision int8, or "
            "quantize the trained network with 'mbsearch train ARCH.json --precision int8'"
        )
    int8_graph = onnx is not None and searched == "int8" and precision != "fp32"
    if finished.decision.empty:
        raise BadInput(f"study {study!r} has no feasible trained trial: its Pareto front is empty")
    arch = chosen_arch(finished, pick_row(finished.decision, pick, max_latency))
    arch_def = timm_arch_def(arch) if request.timm else None  # refused before writing anything, never a wrong string
    if int8_graph:
        number = int(arch.provenance["trial"])
        graph = trial_artifact(finished.study, finished.study_dir, number, INT8_SUFFIX)
        if graph is None:
            raise BadInput(
                f"trial {number}'s int8 graph is not in {finished.study_dir / 'artifacts'} (another machine's "
                "search?); export on the machine that ran it"
            )
        write_arch(arch, output)
        write_atomic(onnx, graph)  # the very graph the search quantized, scored and timed
    else:
        write_arch(arch, output)
        if onnx is not None:
            write_onnx(arch, onnx)
    metrics = arch.metrics or {}
    basis = {"proxy": "proxy accuracy (no trial verified; 'mbsearch verify' checks the front)"}.get(
        finished.basis, f"{finished.basis} accuracy {metrics.get('decision_accuracy', 0):.4f}"
    )
    return Exported(arch, basis, arch_def, int8_graph)
