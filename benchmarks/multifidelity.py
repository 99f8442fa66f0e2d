"""Multi-fidelity vs single-budget search at equal wall time, judged on verified hypervolume.

Two fresh searches of the v3 space, same seed, each stopped by the same --timeout:
  single: every candidate at the default budget;
  multi:  --rungs 1,3,9 --eta 3 from a base budget a third of the default (many briefly, the best longer).
Then each search's front (plus the next non-dominated layers, up to --top) is verified at one common
budget (`mbsearch verify`), and the hypervolume of each verified front is computed against one common
reference point (accuracy 0, the slowest latency seen in either). Results are appended to
benchmarks/multifidelity.json.

    python benchmarks/multifidelity.py --minutes 15 --top 4 --verify-train-size 20000 --seed 0   # 1, 2, ...
    python benchmarks/multifidelity.py summary 15     # across seeds: mean, sd, paired difference
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mbsearch.results.finished import open_finished
from mbsearch.results.pareto import hypervolume

HERE = Path(__file__).resolve().parent


def summary(minutes: float) -> None:
    """The comparison across seeds: every run of `minutes`, both arms' verified hypervolumes against one
    reference point common to all of them (1.1x the slowest verified latency), mean and sd across seeds,
    and the paired difference (multi - single) with its t 95% interval."""
    runs = [r for r in json.loads((HERE / "multifidelity.json").read_text()) if r["minutes"] == minutes]
    slowest = 1.1 * max(p["latency_ms"] for r in runs for arm in r["results"].values() for p in arm["verified"])
    table: dict[str, list[float]] = {"single": [], "multi": []}
    print(f"| seed | arm | trials | promoted | verified | verified hypervolume (common reference {slowest:.3f} ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for index, run in enumerate(runs):
        for arm, result in run["results"].items():
            points = result["verified"]
            volume = hypervolume(
                np.array([p["verified_accuracy"] for p in points]), np.array([p["latency_ms"] for p in points]), slowest
            )
            table[arm].append(volume)
            seed = run.get("seed", index)
            print(f"| {seed} | {arm} | {result['trials']} | {result['promotions']} | {len(points)} | {volume:.4f} |")
    differences = np.array(table["multi"]) - np.array(table["single"])
    for arm, volumes in table.items():
        print(f"{arm}: mean {np.mean(volumes):.4f}, sd {np.std(volumes, ddof=1):.4f} over {len(volumes)} seeds")
    if len(differences) > 1:
        from scipy import stats

        half = stats.t.ppf(0.975, len(differences) - 1) * np.std(differences, ddof=1) / np.sqrt(len(differences))
        mean = float(np.mean(differences))
        print(f"multi - single: mean {mean:+.4f}, 95% t interval [{mean - half:+.4f}, {mean + half:+.4f}]")


def main() -> None:
    if sys.argv[1:2] == ["summary"]:
        summary(float(sys.argv[2]) if len(sys.argv) > 2 else 15.0)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument("--verify-epochs", type=float, default=1)
    parser.add_argument("--verify-train-size", type=int, default=20000)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bench-multifidelity"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    timeout = str(args.minutes * 60)
    common = ["--space", "v3", "--trials", "100000", "--timeout", timeout, "--runs-dir", str(args.runs_dir)]
    common += ["--seed", str(args.seed)]
    from mbsearch.study.config import RunConfig

    base = RunConfig()
    plans = {
        "single": [],
        "multi": ["--rungs", "1,3,9", "--eta", "3", "--train-size", str(max(256, base.train_size // 3))],
    }
    # Both searches run at once, one training thread each on the two cores: the same wall time under the
    # same conditions (run one after the other, a machine's load could favour either).
    studies = {name: f"mf-{name}-{args.seed}" for name in plans}
    started = time.perf_counter()
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "mbsearch", "run", *common, "--study", studies[name], "--train-threads", "1", *extra]
        )
        for name, extra in plans.items()
    }
    walls = {}
    for name, process in processes.items():
        process.wait()
        walls[name] = time.perf_counter() - started
    verifiers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mbsearch",
                "verify",
                studies[name],
                "--runs-dir",
                str(args.runs_dir),
                "--top",
                str(args.top),
                "--epochs",
                str(args.verify_epochs),
                "--train-size",
                str(args.verify_train_size),
                "--threads",
                "1",
            ]
        )
        for name in plans
    ]
    for verifier in verifiers:
        verifier.wait()
    results = {}
    for name in plans:
        frame = open_finished(studies[name], args.runs_dir, None).frame
        verified = frame[frame["verified_accuracy"].notna()]
        results[name] = {
            "search_seconds": round(walls[name], 1),
            "trials": int((frame["state"] == "COMPLETE").sum()),
            "promotions": int((frame["rung"] > 0).sum()),
            "verified": verified[["number", "val_accuracy", "verified_accuracy", "latency_ms"]].to_dict("records"),
        }
    slowest = 1.1 * max(r["latency_ms"] for result in results.values() for r in result["verified"])
    for result in results.values():
        points = result["verified"]
        result["verified_hypervolume"] = hypervolume(
            np.array([p["verified_accuracy"] for p in points]), np.array([p["latency_ms"] for p in points]), slowest
        )
    record = {
        "date": datetime.date.today().isoformat(),
        "minutes": args.minutes,
        "seed": args.seed,
        "top": args.top,
        "verify": {"epochs": args.verify_epochs, "train_size": args.verify_train_size},
        "results": results,
    }
    path = HERE / "multifidelity.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps([*history, record], indent=1) + "\n")
    for name, result in results.items():
        print(
            f"{name}: {result['trials']} trials ({result['promotions']} promoted) in {result['search_seconds']} s, "
            f"verified hypervolume {result['verified_hypervolume']:.4f} over {len(result['verified'])} verified"
        )


if __name__ == "__main__":
    main()
