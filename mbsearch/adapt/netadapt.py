"""NetAdapt (Yang et al., ECCV 2018) as MobileNetV3 used it: trim layer widths until a latency target is met.

Each iteration asks for a latency reduction that decays over time. For every proposal (an inverted
residual's expansion width, or the output width of a residual group: every block that shares a
bottleneck width, so shortcuts stay valid) it takes the largest width, in steps of 8, whose measured
latency meets that iteration's goal, keeps the filters with the largest L2 norm, fine-tunes briefly and
scores on the validation split. The proposal kept is the one with the best ratio of accuracy change to
latency change (MobileNetV3's rule). Every finished iteration is saved, so a rerun resumes.

Proposals never change the network's topology: a width that would add or remove a shortcut, or remove an
expansion layer, is not proposed.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mbsearch.adapt.widths import MIN_WIDTH, STEP, Proposal, shrunk, transfer, widths, with_explicit_mids
from mbsearch.architecture.arch import Arch
from mbsearch.errors import BadInput
from mbsearch.files import write_atomic
from mbsearch.latency.targets import Prepared, Target
from mbsearch.nn.cost import count_params
from mbsearch.nn.model import build_model
from mbsearch.train.budget import Budget
from mbsearch.train.data import Dataset
from mbsearch.train.device import CPU, TrainingDevice
from mbsearch.train.loop import Normalizer, TrainOptions, score, train

STATE = "adapt-state.json"


WEIGHTS = "adapt-state.safetensors"


# Rounds per latency (by default), each timing the network and the start network in fresh runtime sessions:
# on a noisy device one lucky timing would otherwise pick a proposal and set the next goal out of reach (seen
# on the 2-core VM: a proposal timed once at 2.8 ms re-timed at 4.3 ms).
STEADY_SESSIONS = 3


# When no proposal reaches an iteration's goal, the ask is halved and the iteration retried, down to this
# share of the start latency: NetAdapt's schedule is a heuristic, and on a noisy device a start timed on
# the fast side makes a full step unreachable although smaller steps still lead to the target.
SMALLEST_ASK = 0.01


@dataclass
class Step:
    """One row of the trajectory."""

    iteration: int
    latency_ms: float
    accuracy: float
    params: int
    proposal: str
    candidates: int
    seconds: float


@dataclass
class Settings:
    finetune: Budget = field(default_factory=lambda: Budget(epochs=1.0, train_size=2000, batch_size=64, lr=0.001))
    first_reduction: float = 0.04  # of the starting latency, asked for by the first iteration
    decay: float = 0.9
    max_iterations: int = 30
    seed: int = 0
    timing_sessions: int = STEADY_SESSIONS
    training: TrainingDevice = CPU  # where proposals are fine-tuned


@dataclass
class Adapter:
    """One adaptation: the network, where its latency comes from, and how it is fine-tuned and scored."""

    target: Target
    data: Dataset
    settings: Settings
    out_dir: Path
    on_event: Callable[[str], None] = print
    normalizer: Normalizer = field(init=False)
    start: tuple[Prepared, float] | None = field(default=None, init=False)  # set by `anchor`

    def __post_init__(self) -> None:
        self.normalizer = Normalizer.fit(self.data.train.images[: self.settings.finetune.train_size])

    def anchor(self, arch: Arch, latency_ms: float | None = None) -> float:
        """Make `arch` the start network that every later timing is set against; time it (median of
        `timing_sessions` fresh sessions) unless its latency is known (a resumed adaptation)."""
        prepared = self.target.prepare(build_model(arch), arch)  # latency does not depend on the weights
        if latency_ms is None:
            sessions = self.settings.timing_sessions
            latency_ms = statistics.median(self.target.time(prepared).median_ms for _ in range(sessions))
        self.start = (prepared, latency_ms)
        return latency_ms

    def latency(self, arch: Arch, model: nn.Module) -> float:
        """The start network's latency times the median ratio of `timing_sessions` rounds, each timing this
        network and the start network side by side: a device whose speed drifts (this VM's does, by 20%
        over minutes) slows both alike, so a proposal is judged against the start, not against the moment."""
        if self.start is None:
            raise RuntimeError("anchor() the start network first")
        reference, start_ms = self.start
        return start_ms * self.ratio(self.target.prepare(model, arch), reference)

    def ratio(self, prepared: Prepared, reference: Prepared) -> float:
        """Median over `timing_sessions` rounds of latency(prepared) / latency(reference), the two timed side
        by side in each round, in alternating order: drift and order effects cancel in the ratio."""
        ratios = []
        for round_ in range(self.settings.timing_sessions):
            order = (prepared, reference) if round_ % 2 == 0 else (reference, prepared)
            timed = {id(item): self.target.time(item).median_ms for item in order}
            ratios.append(timed[id(prepared)] / timed[id(reference)])
        return statistics.median(ratios)

    def confirm(self, candidate: tuple[Arch, nn.Module], current: tuple[Arch, nn.Module], current_ms: float) -> float:
        """A kept proposal's latency, timed afresh in pairs against the current network (not the start one):
        `current_ms` times their ratio. The proposal chosen among many is the one whose timing met the goal;
        a fresh timing is not biased by that choice (the winner's curse)."""
        arch, model = candidate
        return current_ms * self.ratio(self.target.prepare(model, arch), self.target.prepare(current[1], current[0]))

    def finetune_and_score(self, model: nn.Module, budget: Budget | None = None) -> float:
        """Fine-tune from the kept weights (the network is resolution-agnostic: it trains at the dataset's
        size), then the accuracy on the validation split; never the test set."""
        budget = budget or self.settings.finetune
        options = TrainOptions(self.settings.seed, self.normalizer, device=self.settings.training)
        result = train(model, self.data.train, self.data.val, budget, options)
        return result.accuracy

    def iterate(self, arch: Arch, model: nn.Module, latency: float, accuracy: float, goal: float):
        """One NetAdapt iteration's proposals that reach `goal` ms, best first (accuracy lost per ms saved),
        and how many were fine-tuned."""
        ranked = []
        tried = 0
        for kind, blocks, current in widths(arch):
            found = self._largest_meeting(arch, model, kind, blocks, current, goal)
            if found is None:
                continue
            proposal, candidate, shrunk_model, measured = found
            tried += 1
            accuracy_after = self.finetune_and_score(shrunk_model)
            ratio = (accuracy_after - accuracy) / max(latency - measured, 1e-6)
            self.on_event(f"  {proposal.describe()}: {measured:.3f} ms, accuracy {accuracy_after:.4f}")
            ranked.append((ratio, candidate, shrunk_model, proposal, measured, accuracy_after))
        ranked.sort(key=lambda found: -found[0])
        return ranked, tried

    def _largest_meeting(self, arch: Arch, model: nn.Module, kind: str, blocks: tuple[int, ...], current: int, goal):
        """The largest width (a multiple of 8 below `current`) whose measured latency meets `goal`, by bisection
        (latency grows with width); None when even the narrowest misses it."""
        options = [w for w in range(current - STEP, MIN_WIDTH - 1, -STEP) if shrunk(arch, kind, blocks, w)]
        measured: dict[int, tuple] = {}

        def meets(index: int) -> bool:
            width = options[index]
            if width not in measured:
                candidate = shrunk(arch, kind, blocks, width)
                assert candidate is not None
                proposal = Proposal(kind, blocks, width)
                shrunk_model = transfer(model, arch, candidate, proposal)
                measured[width] = (proposal, candidate, shrunk_model, self.latency(candidate, shrunk_model))
            return measured[width][3] <= goal

        if not options or not meets(len(options) - 1):
            return None
        low, high = 0, len(options) - 1  # options[high] meets the goal; find the widest that does
        while low < high:
            middle = (low + high) // 2
            if meets(middle):
                high = middle
            else:
                low = middle + 1
        return measured[options[high]]


def begin(
    adapter: Adapter, arch: Arch, model: nn.Module, source: dict[str, Any], goal_for: Callable[[float], float]
) -> tuple[Arch, nn.Module, list[Step], float]:
    """Resume the adaptation saved in the output folder, or start one: measure the network, set the goal
    (`goal_for(latency)`), refuse a goal it already meets, and save iteration 0."""
    state = _load_state(adapter.out_dir, source)
    if state is not None:
        current, weights, trajectory, goal = state
        adapter.anchor(with_explicit_mids(arch), trajectory[0].latency_ms)
        model = build_model(current)
        model.load_state_dict(weights)
        adapter.on_event(f"resuming after iteration {trajectory[-1].iteration} (goal {goal:.3f} ms)")
        return current, model, trajectory, goal
    arch = with_explicit_mids(arch)
    latency = adapter.anchor(arch)
    goal = goal_for(latency)
    if not 0 < goal < latency:
        raise BadInput(
            f"the latency goal {goal:.3f} ms is not below the network's {latency:.3f} ms on {adapter.target.name}; "
            "ask for less (a lower --latency-target or a --latency-reduction between 0 and 1)"
        )
    accuracy = score(model, adapter.data.val, adapter.normalizer)
    trajectory = [Step(0, latency, accuracy, count_params(model), "start", 0, 0.0)]
    _save_state(adapter.out_dir, source, arch, model, trajectory, goal)
    return arch, model, trajectory, goal


def adapt(
    adapter: Adapter, arch: Arch, model: nn.Module, trajectory: list[Step], goal_ms: float, source: dict[str, Any]
) -> tuple[Arch, nn.Module, list[Step]]:
    """Iterate until the goal is met (or no proposal reaches even the smallest ask), saving each iteration."""
    settings = adapter.settings
    start_latency = trajectory[0].latency_ms
    backoff = 1.0
    while trajectory[-1].latency_ms > goal_ms and len(trajectory) <= settings.max_iterations:
        last = trajectory[-1]
        reduction = start_latency * settings.first_reduction * settings.decay ** (len(trajectory) - 1) * backoff
        goal = max(goal_ms, last.latency_ms - reduction)
        adapter.on_event(f"iteration {last.iteration + 1}: {last.latency_ms:.3f} ms -> at most {goal:.3f} ms")
        started = time.perf_counter()
        ranked, tried = adapter.iterate(arch, model, last.latency_ms, last.accuracy, goal)
        best = _first_confirmed(adapter, ranked, (arch, model), last.latency_ms, goal)
        if best is None:
            if last.latency_ms - goal > start_latency * SMALLEST_ASK:
                backoff /= 2
                adapter.on_event("no proposal reaches this iteration's goal: asking for half as much")
                continue
            adapter.on_event(f"no proposal reaches even a {SMALLEST_ASK:.0%} reduction: stopping")
            break
        backoff = 1.0
        (_, arch, model, proposal, measured, accuracy_after), steady = best
        seconds = round(time.perf_counter() - started, 2)
        step = Step(
            last.iteration + 1, steady, accuracy_after, count_params(model), proposal.describe(), tried, seconds
        )
        trajectory.append(step)
        adapter.on_event(
            f"kept {proposal.describe()}: {steady:.3f} ms re-timed ({measured:.3f} ms when proposed), "
            f"accuracy {accuracy_after:.4f}"
        )
        _save_state(adapter.out_dir, source, arch, model, trajectory, goal_ms)
    if trajectory[-1].latency_ms > goal_ms and len(trajectory) > settings.max_iterations:
        adapter.on_event(f"stopping after {settings.max_iterations} iteration(s) (--max-iterations)")
    return arch, model, trajectory


def _first_confirmed(adapter: Adapter, ranked: list[tuple], current: tuple[Arch, nn.Module], current_ms: float,
                     goal: float) -> tuple[tuple, float] | None:  # fmt: skip
    """The best proposal whose fresh paired timing still meets `goal` and is faster than the current network,
    with that timing; None when none is. A proposal that met the goal only in its first timing is passed
    over, so no kept step makes the network slower (seen: 0.313 ms proposed, 0.424 ms re-timed)."""
    for found in ranked:
        _, arch, model, proposal, measured, _ = found
        steady = adapter.confirm((arch, model), current, current_ms)
        if steady <= goal and steady < current_ms:
            return found, steady
        adapter.on_event(
            f"  {proposal.describe()}: {steady:.3f} ms re-timed ({measured:.3f} ms when proposed) misses "
            f"{goal:.3f} ms: trying the next proposal"
        )
    return None


def _save_state(
    out_dir: Path, source: dict, arch: Arch, model: nn.Module, trajectory: list[Step], goal_ms: float
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / (WEIGHTS + ".tmp"))
    (out_dir / (WEIGHTS + ".tmp")).replace(out_dir / WEIGHTS)
    state = {
        "source": source,
        "goal_ms": goal_ms,
        "arch": arch.to_dict(),
        "trajectory": [asdict(step) for step in trajectory],
    }
    write_atomic(out_dir / STATE, json.dumps(state, indent=1))


# Every file `adapt` writes in its output folder; STATE marks the folder as adapt's own.
OUTPUT_FILES = (STATE, WEIGHTS, "adapted.json", "model.safetensors", "model.onnx", "trajectory.csv", "trajectory.html")


class _SavedState(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    source: dict[str, Any]
    goal_ms: float
    arch: dict[str, Any]
    trajectory: list[dict[str, Any]]


def _load_state(out_dir: Path, source: dict):
    """The adaptation saved in `out_dir`, or None where there is none. A state that is half there or
    unreadable is refused with one line, never silently discarded (it holds finished iterations)."""
    path, weights = out_dir / STATE, out_dir / WEIGHTS
    if not path.exists() and not weights.exists():
        return None
    if not (path.is_file() and weights.is_file()):
        present, missing = (path, weights) if path.exists() else (weights, path)
        raise BadInput(
            f"{out_dir} holds {present.name} without {missing.name}: an adaptation's saved state is incomplete; "
            "remove both files to start again, or pick another --out"
        )
    try:
        state = _SavedState.model_validate_json(path.read_bytes())
        arch = Arch.from_dict(state.arch, str(path))
        trajectory = [Step(**row) for row in state.trajectory]
        saved_weights = load_file(weights)
    except (OSError, ValueError, TypeError, SafetensorError, BadInput) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BadInput(
            f"{out_dir}: the saved adaptation ({STATE}, {WEIGHTS}) cannot be read ({reason}); remove both to "
            "start again, or pick another --out"
        ) from None
    if state.source != source:
        raise BadInput(f"{out_dir} holds an adaptation of another arch or target; pick another --out or remove {path}")
    return arch, saved_weights, trajectory, state.goal_ms


def finish(
    adapter: Adapter,
    arch: Arch,
    model: nn.Module,
    trajectory: list[Step],
    final: Budget,
    provenance: dict[str, Any],
) -> Arch:
    """The longer fine-tune, then the adapted arch JSON, weights, ONNX and the trajectory (CSV and plot)."""
    import pandas as pd

    from mbsearch.adapt.adapted import ADAPTED_FILE
    from mbsearch.architecture.arch import write_arch
    from mbsearch.nn.onnx_export import write_onnx

    accuracy = adapter.finetune_and_score(model, final)
    # The kept network's unbiased re-timing, the figure the loop stopped on: another look at the same arch
    # would only add noise, and a network kept just under the goal would flip to "not met" half the time.
    latency = trajectory[-1].latency_ms
    adapted = arch.with_info(
        name=f"{provenance.get('source_name') or 'arch'}-adapted",
        provenance=provenance | {"iterations": trajectory[-1].iteration, "final_finetune": asdict(final)},
        metrics={
            "val_accuracy": accuracy,
            "latency_ms": latency,
            "params": count_params(model),
            "start_latency_ms": trajectory[0].latency_ms,
            "start_val_accuracy": trajectory[0].accuracy,
        },
    )
    out = adapter.out_dir
    write_arch(adapted, out / ADAPTED_FILE)  # the file `report --adapted` reads
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    write_onnx(adapted, out / "model.onnx", model)
    frame = pd.DataFrame([asdict(step) for step in trajectory])
    write_atomic(out / "trajectory.csv", frame.to_csv(index=False))
    write_atomic(out / "trajectory.html", trajectory_figure(frame, adapted).to_html(include_plotlyjs=True))
    return adapted


def trajectory_figure(frame, adapted: Arch):
    """Latency against accuracy, iteration by iteration, each point naming the proposal kept."""
    import plotly.graph_objects as go

    figure = go.Figure(
        go.Scatter(
            x=frame["latency_ms"],
            y=frame["accuracy"],
            mode="lines+markers+text",
            text=frame["iteration"].astype(str),
            textposition="top center",
            customdata=frame[["proposal", "params"]],
            hovertemplate="%{x:.3f} ms, accuracy %{y:.4f}<br>%{customdata[0]}<br>%{customdata[1]:,} params",
            name="NetAdapt iterations (fine-tuned briefly)",
        )
    )
    metrics = adapted.metrics or {}
    figure.add_scatter(
        x=[metrics.get("latency_ms")],
        y=[metrics.get("val_accuracy")],
        mode="markers",
        marker={"symbol": "star", "size": 14},
        name="adapted, after the final fine-tune",
    )
    figure.update_layout(
        title=f"NetAdapt trajectory of {adapted.name}", xaxis_title="latency (ms)", yaxis_title="validation accuracy"
    )
    return figure
