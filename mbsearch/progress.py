"""What the user sees during a search: a rich progress bar and one line per finished trial."""

from __future__ import annotations

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mbsearch.config import RunConfig
from mbsearch.pareto import pareto_front, trials_frame
from mbsearch.storage import redact


class ConsoleReporter:
    """Progress bar (trial i/N, front size, best accuracy, ETA) plus a line per finished trial."""

    def __init__(self, console: Console, worker: str = "") -> None:
        self.console = console
        self.worker = f"[{worker}] " if worker else ""
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("front {task.fields[front]}  best acc {task.fields[best]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.task = None

    def start(self, study: optuna.Study, config: RunConfig, complete: int) -> None:
        storage = redact(config.storage or f"sqlite:///{config.study_dir / 'study.db'}")
        verb = "resuming" if complete else "starting"
        self.console.print(
            f"{self.worker}{verb} study [bold]{config.study_name}[/] ({complete}/{config.trials} complete) "
            f"space={config.space_name} target={config.target}/{config.runtime} threads={config.threads} "
            f"dataset={config.dataset} budget={config.epochs:g} epoch(s) x {config.train_size} images "
            f"storage={storage}",
            highlight=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("trials", total=config.trials, completed=complete, front=0, best="-")

    def trial_done(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        if trial.state == optuna.trial.TrialState.COMPLETE:
            accuracy = attrs.get("val_accuracy", 0.0)
            status = f"val_acc {accuracy:.4f}" if not attrs.get("skipped") else f"skipped ({attrs['skipped']})"
        else:
            reason = attrs.get("fail_reason") or str(trial.system_attrs.get("fail_reason", "")).splitlines()[:1]
            status = f"{trial.state.name.lower()}: {reason if isinstance(reason, str) else ''.join(reason)}"
        latency = attrs.get("latency_ms")
        timing = f"lat {latency:.3f} ms" if latency is not None else "lat -"
        params = attrs.get("params")
        size = f"{params / 1e6:.2f}M params" if params else ""
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.console.print(
            f"{self.worker}trial {trial.number:>4}  {status}  {timing}  {size}  {seconds:.1f}s", highlight=False
        )
        frame = trials_frame(study)
        front = pareto_front(frame)
        complete = int((frame["state"] == "COMPLETE").sum()) if not frame.empty else 0
        best = f"{front['val_accuracy'].max():.4f}" if not front.empty else "-"
        if self.task is not None:
            self.progress.update(self.task, completed=complete, front=len(front), best=best)

    def finish(self) -> None:
        self.progress.stop()
