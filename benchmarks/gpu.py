"""Searching on a GPU: candidates per hour, GPU utilisation, and the same seeded candidates' accuracy on the CPU.

    python benchmarks/gpu.py                      # needs a visible CUDA GPU; under 8 minutes on one modern GPU
    python benchmarks/gpu.py --folder DIR96       # also the 96x96 search, on a folder from benchmarks/data.py

Runs a 30-trial search at 28x28 (Fashion-MNIST) with `--device cuda` (and, with --folder, one at 96x96), sampling
GPU utilisation with nvidia-smi once a second. Then it retrains 5 of the GPU search's candidates on the CPU with the
same seed and budget, and reports the accuracy differences (mixed precision and cuDNN's kernels make them differ
slightly; the README says by how much). Prints the line to paste into benchmarks/README.md and writes
benchmarks/gpu_results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "gpu_results.json"
CPU_CHECKS = 5


def _utilisation(stop: threading.Event, samples: list[float]) -> None:
    """nvidia-smi's GPU utilisation, once a second, until `stop`."""
    while not stop.is_set():
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0 and out.stdout.strip():
            samples.append(float(out.stdout.strip().splitlines()[0]))
        stop.wait(1.0)


def search(runs: Path, name: str, extra: list[str]) -> dict:
    samples: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_utilisation, args=(stop, samples), daemon=True)
    if shutil.which("nvidia-smi"):
        watcher.start()
    command = [sys.executable, "-m", "mbsearch", "run", "--device", "cuda", "--trials", "30", "--study", name]
    started = time.perf_counter()
    out = subprocess.run([*command, "--runs-dir", str(runs), *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    stop.set()
    if out.returncode:
        raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
    return {
        "trials": 30,
        "seconds": round(seconds, 1),
        "candidates_per_hour": round(30 * 3600 / seconds),
        "gpu_utilisation_mean": round(statistics.fmean(samples), 1) if samples else None,
    }


def cpu_agreement(runs: Path, name: str) -> dict:
    """Retrain CPU_CHECKS of the GPU search's candidates on the CPU with the study's seed and budget."""
    import optuna

    from mbsearch.study import records
    from mbsearch.study.config import RunConfig
    from mbsearch.study.storage import open_storage
    from mbsearch.train.data import load_study_data
    from mbsearch.train.device import CPU
    from mbsearch.train.evaluate import Recipe, evaluate

    study = optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{runs / name / 'study.db'}"))
    settings = records.settings(study, name)
    config = RunConfig(**{k: v for k, v in settings.items() if k in RunConfig.model_fields})
    data = load_study_data(settings, None)
    trials = [t for t in study.trials if t.state.name == "COMPLETE"][:CPU_CHECKS]
    gaps = []
    for trial in trials:
        arch = records.trial_arch(trial).at_resolution(data.size)
        cpu = evaluate(arch, data, Recipe(config.budget, config.seed, device=CPU)).accuracy
        gaps.append(cpu - float(trial.user_attrs[records.VAL_ACCURACY]))
    return {"candidates": len(gaps), "cpu_minus_gpu_points": [round(100 * g, 2) for g in gaps]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="a 96x96 folder dataset (benchmarks/data.py make)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA GPU is visible here; run it where one is")
    row: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": date.today().isoformat()}
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(scratch)
        row["fashion28"] = search(runs, "gpu28", [])
        row["fashion28"]["cpu_check"] = cpu_agreement(runs, "gpu28")
        if args.folder:
            folder = ["--dataset", "folder", "--data-dir", str(args.folder), "--input-size", "96", "--channels", "3"]
            row["folder96"] = search(runs, "gpu96", folder)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
    results["runs"].append(row)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    first = row["fashion28"]
    gaps = first["cpu_check"]["cpu_minus_gpu_points"]
    print(
        f"| {row['date']} | {row['gpu']} | 28x28: {first['candidates_per_hour']} candidates/h, GPU "
        f"{first['gpu_utilisation_mean']}% | CPU-GPU accuracy gaps (points): {gaps} |"
        + (f" 96x96: {row['folder96']['candidates_per_hour']} candidates/h |" if "folder96" in row else "")
    )


if __name__ == "__main__":
    main()
