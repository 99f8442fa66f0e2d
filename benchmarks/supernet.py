"""The supernet evaluator measured: its training time, candidates scored per hour against brief training,
how its inherited accuracies rank against stand-alone training, and verified hypervolume of searches.

    python benchmarks/supernet.py train --epochs 2          # the v3 supernet at 28x28 (resumable)
    python benchmarks/supernet.py throughput --score 40 --brief 8
    python benchmarks/supernet.py fidelity --finetune-steps 0 10 30 60   # tau vs fidelity.py's reference panel
    python benchmarks/supernet.py front --front-study runs/bench-supernet/sn-brief-5-2 ...   # front-region panel
    python benchmarks/supernet.py search --minutes 5 --seed 0   # brief vs supernet search, then verify
    python benchmarks/supernet.py search --minutes 5 --seed 2 --arms brief supernet tuned   # + --finetune-steps 30
    python benchmarks/supernet.py summary --minutes 5       # across seeds
    python benchmarks/supernet.py search --minutes 29.62 --seed 0 --supernet-minutes 5
        # the supernet's training counted: a brief search of 29.62 min (the supernet's 24.62 min of training
        # + 5) against a 5-min supernet search (--arms brief: read that seed's 5-min supernet search back)
    python benchmarks/supernet.py summary --minutes 29.62

Data: Fashion-MNIST, 50,000 training / 10,000 validation images (split seed 0, as fidelity.py), 28x28.
Every figure is appended to benchmarks/supernet_results.json with the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import (
    PROXY_FILE,
    REFERENCE_BUDGET,
    REFERENCE_FILE,
    REFERENCE_SEEDS,
    _train_one,
    bootstrap_tau,
    front_panel,
    machine,
    panel,
)

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.decisions import random_decisions
from mbsearch.architecture.space import load_space
from mbsearch.files import write_atomic
from mbsearch.ranking import kendall_tau
from mbsearch.results.finished import open_finished
from mbsearch.results.pareto import hypervolume
from mbsearch.study.config import INHERITED_VAL_SIZE
from mbsearch.study.supernet_config import SupernetConfig
from mbsearch.train.budget import DEFAULT_PROXY
from mbsearch.train.data import load_dataset
from mbsearch.train.evaluate import Recipe, evaluate
from mbsearch.train.supernet import InheritedScoring, default_dir, open_supernet, score_inherited

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "supernet_results.json"
RUNS = Path("runs/bench-supernet")
VAL_SIZE, SPLIT_SEED = 10_000, 0


def _record(kind: str, **values) -> None:
    runs = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    runs.append({"kind": kind, "date": datetime.date.today().isoformat(), "machine": machine(), **values})
    RESULTS.write_text(json.dumps(runs, indent=1) + "\n")


def _supernet_folder() -> Path:
    return default_dir(RUNS, load_space("v3"), "fashion-mnist", 28)


def train(args: argparse.Namespace) -> None:
    from mbsearch.search.supernet import train_for

    config = SupernetConfig(epochs=args.epochs, runs_dir=RUNS, val_size=VAL_SIZE, seed=SPLIT_SEED, device="cpu",
                            batch_size=args.batch_size, lr=args.lr)  # fmt: skip
    started = time.perf_counter()
    result = train_for(config, lambda step, total, loss: print(f"{step}/{total} loss {loss:.3f}", flush=True)
                       if step % 50 == 0 or step == total else None)  # fmt: skip
    print(f"{result.steps} steps in {result.seconds / 60:.1f} min (this call {time.perf_counter() - started:.0f} s)")
    if not result.already_trained:
        _record("train", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, steps=result.steps,
                minutes=round(result.seconds / 60, 1), threads=torch.get_num_threads(), params=result.params,
                sub_networks=result.sub_networks)  # fmt: skip


def throughput(args: argparse.Namespace) -> None:
    """Scoring only, both ways, on the same machine and threads: inherited weights (copy, BatchNorm on
    2,048 training images, the first --val-images validation images) against the default brief training
    (scored on all 10,000)."""
    space = load_space("v3")
    data = load_dataset("fashion-mnist", val_size=VAL_SIZE, seed=SPLIT_SEED)
    trained = open_supernet(space, _supernet_folder())
    draws = random.Random(123)
    archs = [trained.supernet.arch(*random_decisions(space, draws)) for _ in range(max(args.score, args.brief))]
    score_inherited(trained, archs[0], data)  # warm-up: the first call pays one-off costs
    inherited = [
        score_inherited(
            trained, arch, data, InheritedScoring(val_images=args.val_images, finetune_steps=args.finetune_steps[0])
        ).seconds
        for arch in archs[: args.score]
    ]
    brief = []
    for index, arch in enumerate(archs[: args.brief]):
        torch.manual_seed(index)
        brief.append(evaluate(arch, data, Recipe(DEFAULT_PROXY, seed=index)).seconds)
    row = {
        "threads": torch.get_num_threads(),
        "inherited_s": statistics.median(inherited),
        "brief_s": statistics.median(brief),
        "inherited_per_hour": 3600 / statistics.mean(inherited),
        "brief_per_hour": 3600 / statistics.mean(brief),
        "scored": len(inherited),
        "val_images": args.val_images,
        "finetune_steps": args.finetune_steps[0],
        "trained": len(brief),
    }
    row["ratio"] = row["inherited_per_hour"] / row["brief_per_hour"]
    print(json.dumps(row, indent=1))
    _record("throughput", **row)


def fidelity(args: argparse.Namespace) -> None:
    """Kendall tau of inherited accuracy against fidelity.py's reference (1 epoch x 50,000 images, its first
    seed), on the random panel's v3 members (the four MobileNets are no sub-networks of v3: no inherited
    score), beside the default brief proxy and the reference's second seed on the very same members."""
    space = load_space("v3")
    data = load_dataset("fashion-mnist", val_size=VAL_SIZE, seed=SPLIT_SEED)
    trained = open_supernet(space, _supernet_folder())
    reference = json.loads(REFERENCE_FILE.read_text())["runs"]
    proxies = json.loads(PROXY_FILE.read_text())["runs"]
    members = {name: arch for name, arch in panel().items() if name.startswith("v3-")}
    first = {n: reference[f"{n}|ref=0"]["accuracy"] for n in members if f"{n}|ref=0" in reference}
    second = {n: reference[f"{n}|ref=1"]["accuracy"] for n in members if f"{n}|ref=1" in reference}
    brief = {n: proxies.get(f"e1-n8k-b64|{n}|seed=0", {}).get("accuracy") for n in members}
    names = [n for n in members if n in first and n in second and brief.get(n) is not None]
    truth = [first[n] for n in names]
    scored, seconds = {}, {}
    for steps in args.finetune_steps:  # 0: the inherited weights as they are
        label = "inherited" if steps == 0 else f"inherited + {steps} fine-tune steps"
        scoring = InheritedScoring(val_images=args.val_images, finetune_steps=steps)
        scores = [score_inherited(trained, members[n], data, scoring) for n in names]
        scored[label] = {n: s.accuracy for n, s in zip(names, scores, strict=True)}
        seconds[label] = statistics.median(s.seconds for s in scores)
    rows = _tau_rows(scored | {"brief (default proxy)": brief, "reference seed 2": second}, names, truth)
    for label, median_s in seconds.items():
        rows[label] |= {"median_s": median_s, "mean_accuracy": statistics.mean(scored[label][n] for n in names)}
    _record("fidelity", members=len(names), rows=rows, val_images=args.val_images, inherited=scored,
            steps=trained.manifest["steps"])  # fmt: skip


def _tau_rows(series: dict[str, dict[str, float]], names: list[str], truth: list[float], panel_name: str = ""):
    """Kendall tau of each labelled set of accuracies against `truth` over `names`, with its bootstrap
    interval, printed as it goes."""
    rows = {}
    for label, values in series.items():
        x = [values[n] for n in names]
        rows[label] = {"tau": kendall_tau(x, truth), "interval": bootstrap_tau(x, truth)}
        print(f"{panel_name}{label}: tau {rows[label]['tau']:.3f} [{rows[label]['interval'][0]:.3f}, "
              f"{rows[label]['interval'][1]:.3f}] over {len(names)} members")  # fmt: skip
    return rows


FRONT_FILE = HERE / "supernet_front.json"


def front(args: argparse.Namespace) -> None:
    """The front-region panel: near-equal networks of real searches (fidelity.py's front_panel over
    --front-study), each trained by fidelity.py's reference recipe with its two seeds and by the default
    brief proxy (seed 0), and scored with inherited weights (and --finetune-steps). Resumable: every result
    is kept in benchmarks/supernet_front.json with the member's architecture, and a rerun trains only what
    is missing."""
    space = load_space("v3")
    data = load_dataset("fashion-mnist", val_size=VAL_SIZE, seed=SPLIT_SEED)
    store = json.loads(FRONT_FILE.read_text()) if FRONT_FILE.is_file() else {"members": {}, "runs": {}}
    if not store["members"]:
        members = front_panel([Path(p) for p in args.front_study])
        store["members"] = {name: arch.to_dict() for name, arch in members.items()}
        store["studies"] = args.front_study
    members = {name: Arch.from_dict(raw) for name, raw in store["members"].items()}
    trained = open_supernet(space, _supernet_folder())

    def save() -> None:
        write_atomic(FRONT_FILE, json.dumps(store, indent=1) + "\n")  # a stopped run keeps what it trained

    jobs = [(f"{n}|ref={i}", n, REFERENCE_BUDGET, seed) for i, seed in enumerate(REFERENCE_SEEDS) for n in members]
    jobs += [(f"{n}|brief", n, DEFAULT_PROXY, 0) for n in members]
    for key, name, budget, seed in jobs:
        if key not in store["runs"]:
            store["runs"][key] = _train_one(members[name], data, budget, seed) | {"machine": machine()}
            print(key, store["runs"][key]["accuracy"], flush=True)
            save()
    for steps in args.finetune_steps:
        for name, arch in members.items():
            score = score_inherited(
                trained, arch, data, InheritedScoring(val_images=args.val_images, finetune_steps=steps)
            )
            store["runs"][f"{name}|inherited+{steps}"] = {"accuracy": score.accuracy, "seconds": score.seconds,
                                                          "supernet_steps": trained.manifest["steps"]}  # fmt: skip
    save()
    names = [n for n in members if all(store["runs"][f"{n}|ref={i}"]["accuracy"] is not None for i in (0, 1))]
    truth = [store["runs"][f"{n}|ref=0"]["accuracy"] for n in names]
    labels = {f"inherited+{k}": f"inherited + {k} fine-tune steps" if k else "inherited" for k in args.finetune_steps}
    labels |= {"brief": "brief (default proxy)", "ref=1": "reference seed 2"}
    series = {label: {n: store["runs"][f"{n}|{suffix}"]["accuracy"] for n in names} for suffix, label in labels.items()}
    rows = _tau_rows(series, names, truth, "front region, ")
    _record("front", members=len(names), rows=rows, val_images=args.val_images, steps=trained.manifest["steps"],
            studies=store.get("studies"))  # fmt: skip


def search(args: argparse.Namespace) -> None:
    """One seed: a brief search and a supernet search, each stopped by --timeout after --minutes (one after
    the other, alone on the machine), then each front verified with one common budget."""
    inherit = ["--evaluator", "supernet", "--supernet", str(_supernet_folder())]
    arms = {"brief": [], "supernet": inherit, "tuned": [*inherit, "--finetune-steps", str(args.finetune_steps)]}
    results = {}
    for arm, extra in arms.items():
        if arm == "tuned" and arm not in args.arms:
            continue  # added 2026-12-06: runs of earlier seeds have no such arm to read back
        minutes = args.supernet_minutes if arm == "supernet" and args.supernet_minutes is not None else args.minutes
        study = f"sn-{arm}-{minutes:g}-{args.seed}"
        if arm not in args.arms:  # searched and verified already (a run stopped in the other arm): read it
            frame = open_finished(study, RUNS, None).frame
            verified = frame[frame["verified_accuracy"].notna()]
            results[arm] = {"search_seconds": None, "trials": int((frame["state"] == "COMPLETE").sum()),
                            "verified": verified[["number", "val_accuracy", "verified_accuracy",
                                                  "latency_ms"]].to_dict("records")}  # fmt: skip
            continue
        command = [sys.executable, "-m", "mbsearch", "run", "--space", "v3", "--trials", "100000", "--timeout",
                   str(minutes * 60), "--runs-dir", str(RUNS), "--sampler-seed", str(args.seed), "--study", study,
                   "--device", "cpu", *extra]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        verify = [sys.executable, "-m", "mbsearch", "verify", study, "--runs-dir", str(RUNS), "--top",
                  str(args.top), "--epochs", str(args.verify_epochs), "--train-size", str(args.verify_train_size),
                  "--device", "cpu"]  # fmt: skip
        subprocess.run(verify, check=True, stdout=subprocess.DEVNULL)
        frame = open_finished(study, RUNS, None).frame
        verified = frame[frame["verified_accuracy"].notna()]
        results[arm] = {
            "search_seconds": round(wall, 1),
            "trials": int((frame["state"] == "COMPLETE").sum()),
            "verified": verified[["number", "val_accuracy", "verified_accuracy", "latency_ms"]].to_dict("records"),
        }
        print(arm, results[arm]["trials"], "trials;", len(results[arm]["verified"]), "verified", flush=True)
    if args.supernet_minutes is not None:
        results["supernet"]["search_minutes"] = args.supernet_minutes  # its own search time, training apart
    _record("search", minutes=args.minutes, seed=args.seed, top=args.top,
            verify={"epochs": args.verify_epochs, "train_size": args.verify_train_size}, results=results)  # fmt: skip


def summary(args: argparse.Namespace) -> None:
    """Verified hypervolume of every seed's two arms against one common reference point (accuracy 0, 1.1x
    the slowest verified latency of all runs), with mean, sd and the paired difference's t interval."""
    runs = [r for r in json.loads(RESULTS.read_text())
            if r["kind"] == "search" and r["minutes"] == args.minutes and r["date"] >= args.since]  # fmt: skip
    slowest = 1.1 * max(p["latency_ms"] for r in runs for arm in r["results"].values() for p in arm["verified"])
    table: dict[str, dict[int, float]] = {}
    print(f"| seed | arm | trials | verified | verified hypervolume (reference {slowest:.3f} ms) |")
    print("|---|---|---:|---:|---:|")
    for run in runs:
        for arm, result in run["results"].items():
            points = result["verified"]
            volume = hypervolume(np.array([p["verified_accuracy"] for p in points]),
                                 np.array([p["latency_ms"] for p in points]), slowest)  # fmt: skip
            table.setdefault(arm, {})[run["seed"]] = volume
            print(f"| {run['seed']} | {arm} | {result['trials']} | {len(points)} | {volume:.4f} |")
    for arm, by_seed in table.items():
        volumes = list(by_seed.values())
        spread = f", sd {np.std(volumes, ddof=1):.4f}" if len(volumes) > 1 else ""
        print(f"{arm}: mean {np.mean(volumes):.4f}{spread} over {len(volumes)} seed(s)")
    for arm in (a for a in table if a != "brief"):
        seeds = sorted(set(table[arm]) & set(table.get("brief", {})))
        differences = np.array([table[arm][s] - table["brief"][s] for s in seeds])
        if len(differences) > 1:
            from scipy import stats

            half = stats.t.ppf(0.975, len(differences) - 1) * np.std(differences, ddof=1) / np.sqrt(len(differences))
            mean = float(np.mean(differences))
            print(f"{arm} - brief: mean {mean:+.4f}, 95% t interval [{mean - half:+.4f}, {mean + half:+.4f}] "
                  f"over seeds {seeds}")  # fmt: skip
        elif len(differences) == 1:
            print(f"{arm} - brief: {differences[0]:+.4f} (seed {seeds[0]} only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.003)
    p = commands.add_parser("throughput")
    p.add_argument("--score", type=int, default=40)
    p.add_argument("--brief", type=int, default=8)
    fidelity_parser = commands.add_parser("fidelity")
    front_parser = commands.add_parser("front")
    front_parser.add_argument("--front-study", nargs="+", default=[], help="runs/STUDY folders to draw the panel from")
    for q in (p, fidelity_parser, front_parser):  # the search's default (RunConfig); 10000 for the whole split
        q.add_argument("--val-images", type=int, default=INHERITED_VAL_SIZE)
        q.add_argument("--finetune-steps", type=int, nargs="+", default=[0], help="0: inherited weights as they are")
    for name in ("search", "summary"):
        p = commands.add_parser(name)
        p.add_argument("--minutes", type=float, default=5)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--top", type=int, default=4)
        p.add_argument("--verify-epochs", type=float, default=1)
        p.add_argument("--verify-train-size", type=int, default=8000)
        p.add_argument("--arms", nargs="+", default=["brief", "supernet"], help="arms to run (others: read back)")
        p.add_argument("--finetune-steps", type=int, default=30, help="the tuned arm's --finetune-steps")
        counted = "read back the supernet arm searched this long (--minutes then counts its training)"
        p.add_argument("--supernet-minutes", type=float, default=None, help=counted)
        p.add_argument("--since", default="", help="summary: only runs recorded on or after this date (YYYY-MM-DD)")
    args = parser.parse_args()
    {
        "train": train,
        "throughput": throughput,
        "fidelity": fidelity,
        "front": front,
        "search": search,
        "summary": summary,
    }[args.command](args)


if __name__ == "__main__":
    main()
