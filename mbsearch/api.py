"""mbsearch from Python: `search(...)` runs (or resumes) a search with the settings of `mbsearch run`, and
`open_study(...)` opens a finished one; both give a `Study` whose trials and front are pandas DataFrames, with
`pick`, `export` and `report`. The command line calls the same library functions; nothing here is a second path.

    import mbsearch
    study = mbsearch.search(space="v3", target="cpu", trials=30)
    arch = study.pick("knee")          # an Arch: mbsearch.build_model(arch) builds it
    study.export("best.json", onnx="best.onnx")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mbsearch.architecture.arch import Arch
from mbsearch.errors import BadInput


@dataclass(frozen=True)
class Study:
    """A study on disk (or in a shared storage), read afresh at each call: a search other workers still run
    shows their latest trials."""

    name: str
    runs_dir: Path = Path("runs")
    storage: str | None = None

    def _finished(self) -> Any:
        from mbsearch.results.finished import open_finished

        return open_finished(self.name, self.runs_dir, self.storage)

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial: state, accuracy, latency, params, MACs, blocks, fail reasons (as trials.csv)."""
        return self._finished().frame

    @property
    def front(self) -> pd.DataFrame:
        """The Pareto front decisions use: verified where `verify` ran, else the highest rung, else the proxy."""
        return self._finished().decision

    def pick(self, how: str = "knee", max_latency: float | None = None) -> Arch:
        """A front point as an Arch (with its metrics and provenance): knee, max-accuracy or min-latency, among
        the points at most `max_latency` ms."""
        from mbsearch.results.export import chosen_arch, pick_row

        finished = self._finished()
        if finished.decision.empty:
            raise BadInput(f"study {self.name!r} has no feasible trained trial: its Pareto front is empty")
        return chosen_arch(finished, pick_row(finished.decision, how, max_latency))

    def export(
        self, path: str | Path, pick: str = "knee", onnx: str | Path | None = None, max_latency: float | None = None
    ) -> Arch:
        """Write the picked architecture as arch JSON (and ONNX), as `mbsearch export` does; returns it."""
        from mbsearch.results.export import ExportRequest, export_study

        request = ExportRequest(pick, Path(path), Path(onnx) if onnx else None, max_latency)
        return export_study(self.name, self.runs_dir, self.storage, request).arch

    def report(self, baselines: bool = True, data_dir: str | Path | None = None) -> Path:
        """Write report.html from what the study and the stored baselines hold (trains nothing); returns its path."""
        from mbsearch.report.page import report_study

        path, _ = report_study(self._finished(), baselines, Path(data_dir) if data_dir else None)
        return path


def search(**settings: Any) -> Study:
    """Run (or resume, with the same settings) a search; `settings` are `mbsearch run`'s options by their Python
    names (RunConfig: space, target, trials, runs_dir, study, train_size, ...), with the same defaults."""
    from mbsearch.search.loop import run_search
    from mbsearch.study.config import RunConfig

    config = RunConfig(**settings)
    if config.workers > 1:
        from rich.console import Console

        from mbsearch.search.workers import run_workers

        run_workers(config, Console(quiet=True))
    else:
        run_search(config)
    return Study(config.study_name, config.runs_dir, config.storage)


def open_study(name: str, runs_dir: str | Path = "runs", storage: str | None = None) -> Study:
    """A study made by `search` or `mbsearch run`: refused with one clear error where it does not exist."""
    study = Study(name, Path(runs_dir), storage)
    study._finished()  # an unknown study, or one without a complete trial, is refused here
    return study
