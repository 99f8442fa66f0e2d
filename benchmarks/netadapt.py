"""NetAdapt against uniform width scaling, at equal latency.

Usage: python benchmarks/netadapt.py [--cases knee,mobilenet_v3_small] [--reduction 0.2] [--trials 12]
                                     [--study NAME --runs-dir DIR] [--out benchmarks/netadapt_results.json]
Writes the results JSON and prints the table for benchmarks/README.md.

Each case is a network laid out and timed at 224x224 (ONNX Runtime, this CPU, 1 thread) and trained at
Fashion-MNIST's 28x28, as `--latency-input-size 224` does:
- knee: the knee of a demo study (`mbsearch run --space v3 --latency-input-size 224 --trials N`, run here
  unless --study names one), exported with `mbsearch export --pick knee`;
- mobilenet_v3_small: the reference, adapted to the input (1 channel, 10 classes).

For each, `mbsearch adapt ARCH --latency-reduction R` (the real command, wall time recorded), starting
from the proxy training it does itself. Then, at NetAdapt's final latency (every latency in the table is
from 15 rounds that time the compared networks side by side, one fresh ONNX Runtime session each, since
this VM's speed drifts; adapt's own figure is kept beside it; MACs are given too):
- uniform: the same network at the largest width multiplier not slower than it (median per-round ratio)
  (the knee: the trial's decisions at another `width`; the reference: torchvision's rounding at that width),
  found by bisection over widths in steps of 0.025, trained from scratch;
- scratch: NetAdapt's final widths trained from scratch;
- original: the unadapted network trained from scratch, for scale.
Every from-scratch network gets the images NetAdapt's kept lineage was trained on (first training + one
fine-tune per kept iteration + final fine-tune), in one run of the proxy recipe (batch 64, lr 0.003).
Accuracy is on the validation split adapt used (never the test set), with `--seeds` seeds for the
from-scratch runs; NetAdapt itself is one run (its seed is 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import optuna
import torch

from mbsearch.architecture.arch import Arch, load_arch
from mbsearch.architecture.sample import arch_from_decisions, stage_params
from mbsearch.architecture.space import load_space
from mbsearch.architecture.zoo import family_arch, reference_arch
from mbsearch.device.timing import cpu_model
from mbsearch.latency.targets import LocalTarget, exported
from mbsearch.nn.cost import count_macs, count_params
from mbsearch.nn.model import build_model
from mbsearch.results.finished import open_finished
from mbsearch.train.budget import Budget
from mbsearch.train.data import load_dataset
from mbsearch.train.loop import TrainOptions, train

RESULTS = Path(__file__).with_name("netadapt_results.json")
SIZE = 224  # timed (and laid out) at this input size; trained at the dataset's 28x28
WIDTH_STEP = 0.025
# Networks compared here are timed interleaved, one fresh ONNX Runtime session each per round, for this many
# rounds: on this VM a session's median varies by up to +-20% and the machine's speed drifts over seconds
# to minutes (2026-11-23), more than NetAdapt's steps, so only timings taken side by side compare.
ROUNDS = 15
VAL_SIZE = 10_000
TRAIN_SIZE = 8_000  # adapt's first training (its default)
FINETUNE_IMAGES = 2_000  # each proposal's fine-tune (adapt's default)


def mbsearch(*args: str, env: dict | None = None) -> float:
    """Run the real CLI; its wall seconds. Output streams through so a long run can be followed."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mbsearch", *args], check=True, env=env)
    return time.perf_counter() - started


def demo_study(runs_dir: Path, trials: int) -> str:
    """A small demo search, timed at 224x224 (resumes if already there)."""
    name = "bench-netadapt-v3"
    mbsearch(
        "run", "--space", "v3", "--target", "cpu", "--latency-input-size", str(SIZE), "--trials", str(trials),
        "--study", name, "--runs-dir", str(runs_dir),
    )  # fmt: skip
    return name


def knee_case(study: str, runs_dir: Path, work: Path):
    """The knee's arch file, and the knee at any width (the trial's decisions, another `width`)."""
    path = work / "knee.json"
    mbsearch("export", study, "--pick", "knee", "-o", str(path), "--runs-dir", str(runs_dir))
    knee = load_arch(path)
    finished = open_finished(study, runs_dir, None)
    trial = finished.study.trials[int(knee.provenance["trial"])]
    space = load_space(finished.settings["space"])
    width, decisions = stage_params(optuna.trial.FixedTrial(trial.params), space)

    def at_width(factor: float) -> Arch:
        return arch_from_decisions(space, factor, decisions, SIZE, knee.input.channels, knee.num_classes)

    if at_width(width).key() != knee.key():
        raise AssertionError("the knee does not rebuild from its trial's decisions")
    return path, width, at_width


def reference_case(name: str, work: Path):
    path = work / f"{name}.json"
    path.write_text(reference_arch(name, SIZE, 1, 10).to_json())
    family = name.removesuffix("_075").removesuffix("_050")
    width = {"_075": 0.75, "_050": 0.5}.get(name.removeprefix(family), 1.0)

    def at_width(factor: float) -> Arch:
        return family_arch(family, factor, SIZE, 1, 10)

    return path, width, at_width


def interleaved(target, archs: dict[str, Arch]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median latency of each network over ROUNDS rounds, every round timing each once in turn (so a slow
    spell of the machine hits them all), and the per-round timings."""
    prepared = {name: exported(build_model(arch), arch) for name, arch in archs.items()}
    times: dict[str, list[float]] = {name: [] for name in archs}
    for _ in range(ROUNDS):
        for name, job in prepared.items():
            times[name].append(target.time(job).median_ms)
    return {name: statistics.median(values) for name, values in times.items()}, times


def macs(arch: Arch) -> int:
    """Multiply-accumulates at the timed resolution: deterministic, where latency here is not."""
    return count_macs(build_model(arch), arch)[0]


def uniform_at(target, at_width, start_width: float, adapted: Arch) -> tuple[float, Arch, dict[float, float]]:
    """The largest width multiplier (steps of WIDTH_STEP, below the start) that is not slower than `adapted`,
    timed side by side with it (median of the per-round ratios), by bisection; (width, arch, ratio per
    width probed)."""
    widths = [round(start_width - WIDTH_STEP * k, 4) for k in range(1, int(start_width / WIDTH_STEP))]
    seen: dict[float, float] = {}

    def ratio(index: int) -> float:
        width = widths[index]
        if width not in seen:
            _, times = interleaved(target, {"probe": at_width(width), "adapted": adapted})
            seen[width] = statistics.median(p / a for p, a in zip(times["probe"], times["adapted"], strict=True))
        return seen[width]

    low, high = 0, len(widths) - 1
    if ratio(high) <= 1:  # else the narrowest, reported as is
        while low < high:
            middle = (low + high) // 2
            if ratio(middle) <= 1:
                high = middle
            else:
                low = middle + 1
    return widths[high], at_width(widths[high]), seen


def from_scratch(arch: Arch, data, images: int, seeds: int, cache: Path) -> dict:
    """Validation accuracy after `images` training images from scratch, per seed (cached in `cache` by
    arch, images and seed, so a rerun that only re-times does not retrain)."""
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    accuracies, seconds = [], 0.0
    budget = Budget(epochs=images / len(data.train), train_size=len(data.train))
    for seed in range(seeds):
        key = f"{arch.key()}|{images}|{seed}"
        if key not in done:
            result = train(build_model(arch), data.train, data.val, budget, TrainOptions(seed))
            done[key] = {"accuracy": result.accuracy, "seconds": result.seconds}
            cache.write_text(json.dumps(done))
        accuracies.append(done[key]["accuracy"])
        seconds += done[key]["seconds"]
    return {"val_accuracy": accuracies, "mean": statistics.fmean(accuracies), "train_seconds": round(seconds, 1)}


def run_case(name: str, path: Path, width: float, at_width, args, data, target) -> dict:
    out = path.with_name(path.stem + "-adapted")
    wall = out / "bench-wall-seconds.txt"  # a rerun re-times and reuses the adaptation (and its wall time)
    if not wall.is_file():
        adapt_seconds = mbsearch(
            "adapt", str(path), "--latency-reduction", str(args.reduction), "--first-reduction",
            str(args.first_reduction), "--val-size", str(VAL_SIZE), "--train-size", str(TRAIN_SIZE),
            "--finetune-images", str(FINETUNE_IMAGES), "--final-epochs", str(args.final_epochs), "--out", str(out),
            "--timing-sessions", str(args.timing_sessions), "--max-iterations", str(args.max_iterations),
        )  # fmt: skip
        wall.write_text(f"{adapt_seconds:.1f}\n")
    adapt_seconds = float(wall.read_text())
    cache = path.parent / "scratch-cache.json"
    adapted = load_arch(out / "adapted.json")
    metrics = adapted.metrics
    iterations = adapted.provenance["iterations"]
    images = TRAIN_SIZE + FINETUNE_IMAGES * iterations + round(args.final_epochs * len(data.train))
    original = load_arch(path)
    structural = Arch.from_dict({k: v for k, v in adapted.to_dict().items() if k not in ("provenance", "metrics")})
    uniform_width, uniform, probes = uniform_at(target, at_width, width, structural)
    latency, _ = interleaved(target, {"adapted": structural, "uniform": uniform, "original": original})
    rows = {
        "netadapt": {
            "val_accuracy": [metrics["val_accuracy"]],
            "mean": metrics["val_accuracy"],
            "latency_ms": latency["adapted"],
            "latency_ms_reported_by_adapt": metrics["latency_ms"],
            "params": metrics["params"],
            "macs": macs(structural),
            "wall_seconds": round(adapt_seconds, 1),
            "iterations": iterations,
            "start_latency_ms": metrics["start_latency_ms"],
            "start_val_accuracy": metrics["start_val_accuracy"],
        },
        "uniform": from_scratch(uniform, data, images, args.seeds, cache)
        | {"latency_ms": latency["uniform"], "params": count_params(build_model(uniform)), "macs": macs(uniform)}
        | {"width": uniform_width, "latency_ratio_to_adapted_by_width": {str(w): r for w, r in probes.items()}},
        "scratch": from_scratch(structural, data, images, args.seeds, cache)
        | {"latency_ms": latency["adapted"], "params": metrics["params"], "macs": macs(structural)},
        "original": from_scratch(original, data, images, args.seeds, cache)
        | {"latency_ms": latency["original"], "params": count_params(build_model(original)), "macs": macs(original)}
        | {"width": width},
    }
    return {"case": name, "training_images": images, "rows": rows}


def table(results: dict) -> str:
    lines = [
        "| case | network | val accuracy (mean of seeds) | latency ms @224 | MMACs @224 | params | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        for label, row in case["rows"].items():
            accs = ", ".join(f"{a:.4f}" for a in row["val_accuracy"])
            wall = row.get("wall_seconds", row.get("train_seconds", ""))
            extra = f" (width {row['width']})" if "width" in row else ""
            lines.append(
                f"| {case['case']} | {label}{extra} | {row['mean']:.4f} ({accs}) | {row['latency_ms']:.3f} "
                f"| {row['macs'] / 1e6:.1f} | {row['params']:,} | {wall} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="knee,mobilenet_v3_small")
    parser.add_argument("--reduction", type=float, default=0.2, help="adapt to (1 - this) of the start latency")
    parser.add_argument("--first-reduction", type=float, default=0.1)
    parser.add_argument("--timing-sessions", type=int, default=5, help="adapt's rounds per latency (noisy VM)")
    parser.add_argument("--max-iterations", type=int, default=6)
    parser.add_argument("--final-epochs", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=12, help="of the demo study (when --study is not given)")
    parser.add_argument("--study", default=None)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bench-netadapt"))
    parser.add_argument("--work", type=Path, default=None, help="folder for the arch files and adapt outputs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = args.work or Path(tempfile.mkdtemp(prefix="netadapt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = load_dataset("fashion-mnist", None, None, 1, VAL_SIZE, 0)
    target = LocalTarget("cpu", "onnxruntime", 1)
    results = {
        "date": date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}",
        "settings": vars(args) | {"runs_dir": str(args.runs_dir), "work": str(work), "out": str(args.out)},
        "cases": [],
    }
    for name in args.cases.split(","):
        if name == "knee":
            study = args.study or demo_study(args.runs_dir, args.trials)
            path, width, at_width = knee_case(study, args.runs_dir, work)
        else:
            path, width, at_width = reference_case(name, work)
        results["cases"].append(run_case(name, path, width, at_width, args, data, target))
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # after each case: a partial run still counts
        print(table(results), flush=True)


if __name__ == "__main__":
    main()
