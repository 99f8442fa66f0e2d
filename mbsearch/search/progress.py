"""What the user sees during a search: a rich progress bar and one line per finished trial."""

from __future__ import annotations

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mbsearch.results.pareto import dominates
from mbsearch.search.prepared import PreparedSearch
from mbsearch.study import records
from mbsearch.study.config import RunConfig
from mbsearch.study.storage import redact


class RunningFront:
    """The accuracy-vs-latency front, updated one trial at a time: O(front size) per trial, where
    rebuilding the trials frame and the front after every trial was quadratic over a long study."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def add(self, accuracy: float, latency_ms: float) -> None:
        if any(dominates(a, lat, accuracy, latency_ms) or (a, lat) == (accuracy, latency_ms) for a, lat in self.points):
            return  # dominated by (or equal to) a point already on the front
        self.points = [(a, lat) for a, lat in self.points if not dominates(accuracy, latency_ms, a, lat)]
        self.points.append((accuracy, latency_ms))

    @property
    def best_accuracy(self) -> float | None:
        return max((a for a, _ in self.points), default=None)

    def __len__(self) -> int:
        return len(self.points)


def _front_point(trial: optuna.trial.FrozenTrial) -> tuple[float, float] | None:
    """(accuracy, latency) of a trial that may be on the front: complete, trained and feasible."""
    attrs = trial.user_attrs
    if trial.state != optuna.trial.TrialState.COMPLETE or attrs.get(records.SKIPPED):
        return None
    if any(value > 0 for value in trial.constraints.values()):
        return None
    if records.VAL_ACCURACY not in attrs or records.LATENCY_MS not in attrs:
        return None
    return float(attrs[records.VAL_ACCURACY]), float(attrs[records.LATENCY_MS])


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
        self.front = RunningFront()
        self.complete = 0

    def start(self, study: optuna.Study, search: PreparedSearch, complete: int) -> None:
        """One line: what is searched, where it is timed, where it is stored."""
        config = search.config
        storage = redact(config.storage or f"sqlite:///{config.study_dir / 'study.db'}")
        verb = "resuming" if complete else "starting"
        self.console.print(
            f"{self.worker}{verb} study {config.study_name} ({complete}/{config.trials} complete) "
            f"space={config.space_name} target={_target(config)} threads={config.threads} "
            f"training on {search.training.describe()} "
            f"dataset={config.dataset} {_scoring(config)} "
            f"storage={storage}",
            highlight=False,
        )
        # One full read at start (a resumed study); afterwards the front grows trial by trial. With
        # several workers each bar counts the trials it has seen: its own, plus those stored at start.
        self.complete = complete
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            point = _front_point(trial)
            if point:
                self.front.add(*point)
        self.progress.start()
        self.task = self.progress.add_task(
            "trials", total=config.trials, completed=complete, front=len(self.front), best=self._best()
        )

    def _best(self) -> str:
        best = self.front.best_accuracy
        return "-" if best is None else f"{best:.4f}"

    def trial_done(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        if trial.state == optuna.trial.TrialState.COMPLETE:
            accuracy = attrs.get(records.VAL_ACCURACY, 0.0)
            status = (
                f"val_acc {accuracy:.4f}" if not attrs.get(records.SKIPPED) else f"skipped ({attrs[records.SKIPPED]})"
            )
        else:
            reason = (
                attrs.get(records.FAIL_REASON) or str(trial.system_attrs.get(records.FAIL_REASON, "")).splitlines()[:1]
            )
            status = f"{trial.state.name.lower()}: {reason if isinstance(reason, str) else ''.join(reason)}"
        latency = attrs.get(records.LATENCY_MS)
        timing = f"lat {latency:.3f} ms" if latency is not None else "lat -"
        params = attrs.get(records.PARAMS)
        size = f"{params / 1e6:.2f}M params" if params else ""
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.console.print(
            f"{self.worker}trial {trial.number:>4}  {status}  {timing}  {size}  {seconds:.1f}s", highlight=False
        )
        if trial.state == optuna.trial.TrialState.COMPLETE:
            self.complete += 1
        point = _front_point(trial)
        if point:
            self.front.add(*point)
        if self.task is not None:
            self.progress.update(self.task, completed=self.complete, front=len(self.front), best=self._best())

    def promotion_done(self, promotion) -> None:
        """One line per multi-fidelity promotion (the same trial, trained again at a bigger budget)."""
        budget = promotion.budget
        outcome = "diverged" if promotion.accuracy is None else f"val_acc {promotion.accuracy:.4f}"
        self.console.print(
            f"{self.worker}trial {promotion.number:>4}  promoted to rung {promotion.rung}: {outcome}  "
            f"({budget.epochs:g} epoch(s) x {budget.train_size} images)  {promotion.seconds:.1f}s",
            highlight=False,
        )

    def finish(self) -> None:
        self.progress.stop()


def _target(config: RunConfig) -> str:
    if config.latency == "predicted":
        return f"predicted by {config.lut}"
    size = f" at {config.latency_input_size}x{config.latency_input_size}" if config.latency_input_size else ""
    return f"{config.target}/{config.runtime}{size}"


def _scoring(config: RunConfig) -> str:
    """How each candidate is scored: the brief training's budget, or the supernet's inherited weights."""
    if config.evaluator != "supernet":
        return f"budget={config.epochs:g} epoch(s) x {config.train_size} images"
    tuned = f" after {config.finetune_steps} fine-tune step(s)" if config.finetune_steps else ""
    return f"scored by supernet weights{tuned} on {config.scoring_val_size} validation images"
