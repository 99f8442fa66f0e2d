"""Proxy fidelity: how well does a brief training rank architectures the way a long training does?

The instrument behind the default proxy budget (benchmarks/README.md). Three steps, each resumable
(results are written after every training, and a rerun only trains what is missing):

    python benchmarks/fidelity.py run --prefer reference &   # one process per core share the jobs:
    python benchmarks/fidelity.py run --prefer proxies &     #   long references, then the proxy grid
    python benchmarks/fidelity.py table       # Kendall tau with bootstrap 95% intervals, per panel

Seeds never shared: proxies train with the search's seeds, the reference with seeds derived apart from them
(twice per member, so its agreement with itself is measured, not simulated). `--front-study runs/STUDY`
adds a second panel: near-equal networks from a real search's front region, reported separately.

Data: Fashion-MNIST's training set split once (seed 0) into 50,000 training and 10,000 validation
images. Every training here uses the training part only and is scored on the validation part; the
test set is never read. References are cached in benchmarks/fidelity_reference.json and proxies in
benchmarks/fidelity_proxies.json, both committed, with the recipe, date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import math
import os
import platform
import random
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import optuna
import torch

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.rules import scale_channels
from mbsearch.architecture.sample import random_arch
from mbsearch.architecture.space import SearchSpace, load_space
from mbsearch.architecture.zoo import reference_arch
from mbsearch.files import write_atomic
from mbsearch.ranking import kendall_tau, spearman_rho, top_overlap
from mbsearch.train.budget import DEFAULT_PROXY, Budget
from mbsearch.train.data import Dataset, load_dataset
from mbsearch.train.evaluate import Recipe, derived_seed, evaluate
from mbsearch.train.loop import Diverged

HERE = Path(__file__).resolve().parent
# Results of the recipe below (arch format /3, seeds disjoint between proxy and reference). The files of
# 2026-11-23 (fidelity_reference.json, fidelity_proxies.json) hold the old ds meaning and shared seeds;
# they are kept as the record behind the old table (`table --old`), never resumed into these.
REFERENCE_FILE = HERE / "fidelity_reference_v2.json"
PROXY_FILE = HERE / "fidelity_proxies_v2.json"
OLD_FILES = (HERE / "fidelity_reference.json", HERE / "fidelity_proxies.json")
# The reference trains with seeds of its own (never a proxy's), twice on every member, so that its
# agreement with itself across seeds is measured on the whole panel instead of simulated.
REFERENCE_SEEDS = (derived_seed(0, "reference"), derived_seed(1, "reference"))
FRONT_MEMBERS = 10  # the second panel: near-equal networks from a real search's front region
FRONT_LATENCY_BAND = 0.20  # +-20% of the knee latency (pooled studies: the median knee)
BOOTSTRAP = 2000
MIN_INTERVAL_MEMBERS = 8  # below this a bootstrap interval of tau is meaningless; the table says so
VAL_SIZE = 10_000
SPLIT_SEED = 0
SAMPLES_PER_WIDTH = 5  # v3 has four widths: 20 sampled members
REFERENCES = ("mobilenet_v3_small_050", "mobilenet_v3_small", "mobilenet_v2_050", "mobilenet_v3_large_050")
CEILING_MEMBERS = 6  # members trained with a second reference seed, and with 3 proxy seeds
# 1 epoch over the 50,000 training images (391 steps, 12x the old proxy's images). Longer would be better;
# 2 epochs would have taken over 4 hours of the 2-core machine for the panel alone.
REFERENCE_BUDGET = Budget(epochs=1, train_size=50_000, batch_size=128, lr=0.004)

# The grid of proxy budgets. The first is the default before this benchmark (1 epoch x 4,000 images).
PROXIES: dict[str, Budget] = {
    "e1-n4k-b64": Budget(epochs=1, train_size=4000, batch_size=64, lr=0.003),
    "e1-n16k-b128-lr6": Budget(epochs=1, train_size=16000, batch_size=128, lr=0.006),
    "e1-n8k-b64": Budget(epochs=1, train_size=8000, batch_size=64, lr=0.003),
    "e2-n4k-b64": Budget(epochs=2, train_size=4000, batch_size=64, lr=0.003),
}

DEFAULT_BUDGET = next(name for name, budget in PROXIES.items() if budget == DEFAULT_PROXY)
NOISE_BUDGETS = ("e1-n4k-b64", "e1-n16k-b128-lr6", "e1-n8k-b64")


def panel(input_size: int = 28, channels: int = 1, num_classes: int = 10) -> dict[str, Arch]:
    """The fixed panel: seeded v3 samples, SAMPLES_PER_WIDTH per width, then the reference MobileNets."""
    space = load_space("v3")
    members: dict[str, Arch] = {}
    per_width: dict[float, int] = dict.fromkeys(space.width, 0)
    seed = 0
    while sum(per_width.values()) < SAMPLES_PER_WIDTH * len(per_width):
        arch = random_arch(space, seed, input_size, channels, num_classes)
        width = _width_of(arch, space)
        if per_width[width] < SAMPLES_PER_WIDTH:
            per_width[width] += 1
            members[f"v3-seed{seed}"] = arch
        seed += 1
    for name in REFERENCES:
        members[name] = reference_arch(name, input_size, channels, num_classes)
    return members


def _width_of(arch: Arch, space: SearchSpace) -> float:
    """Recover the sampled width multiplier from the head width, which differs for every width."""
    return next(w for w in space.width if scale_channels(space.head.conv, w) == arch.head.conv)


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} training thread(s)"


def _header(kind: str) -> dict:
    recipe = {"val_size": VAL_SIZE, "split_seed": SPLIT_SEED}
    if kind == "reference":
        recipe = {**asdict(REFERENCE_BUDGET), **recipe}
    return {"recipe": recipe, "machine": machine(), "runs": {}}


@contextmanager
def _locked(path: Path) -> Iterator[dict]:
    """Read-modify-write a results file under a lock, so that several processes can share the work."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = (
            json.loads(path.read_text())
            if path.is_file()
            else _header("reference" if path == REFERENCE_FILE else "proxies")
        )
        yield store
        write_atomic(path, json.dumps(store, indent=1) + "\n")


def _data() -> Dataset:
    return load_dataset("fashion-mnist", val_size=VAL_SIZE, seed=SPLIT_SEED)


def _train_one(arch: Arch, data: Dataset, budget: Budget, seed: int) -> dict:
    try:
        result = evaluate(arch, data, Recipe(budget, seed))
    except Diverged as exc:
        return {"accuracy": None, "diverged": str(exc), "budget": asdict(budget)}
    return {
        "accuracy": result.accuracy,
        "seconds": round(result.seconds, 2),
        "date": datetime.date.today().isoformat(),
        "budget": asdict(budget),
    }


def front_panel(study_dirs: list[Path]) -> dict[str, Arch]:
    """The second panel: up to FRONT_MEMBERS distinct architectures of finished searches whose latency is
    within FRONT_LATENCY_BAND of their knees' (the median knee latency when several studies of one space
    and device are pooled): near-equal networks, where a search must rank well."""
    from mbsearch.results.finished import open_finished
    from mbsearch.results.pareto import knee

    pool, knees = [], []
    for study_dir in study_dirs:
        finished = open_finished(study_dir.name, study_dir.parent, None)
        front = finished.decision
        knees.append(float(front.iloc[knee(front)]["latency_ms"]))
        complete = finished.frame[finished.frame["state"] == "COMPLETE"]
        pool += [(float(row.latency_ms), finished.arch(int(row.number))) for row in complete.itertuples()]
    target = statistics.median(knees)
    near = [
        (abs(latency - target), arch) for latency, arch in pool if abs(latency - target) <= FRONT_LATENCY_BAND * target
    ]
    near.sort(key=lambda item: item[0])
    members: dict[str, Arch] = {}
    seen: set[str] = set()
    for _, arch in near:
        if arch.key() not in seen and len(members) < FRONT_MEMBERS:
            seen.add(arch.key())
            name = f"front-{len(members)}"
            members[name] = arch.with_info(name=name)
    return members


def jobs(members: list[str]) -> list[tuple[Path, str, str, Budget, int]]:
    """Every training the benchmark needs, as (results file, key, member, budget, seed). Proxies train with
    the search's seeds (0, then 1 and 2 for the noise); the reference with REFERENCE_SEEDS, apart from them."""
    ceiling = members[:CEILING_MEMBERS]
    out = [(REFERENCE_FILE, f"{n}|ref=0", n, REFERENCE_BUDGET, REFERENCE_SEEDS[0]) for n in members]
    out += [(REFERENCE_FILE, f"{n}|ref=1", n, REFERENCE_BUDGET, REFERENCE_SEEDS[1]) for n in members]
    # Seed 0 of every budget on the panel first (the default budget first, the costliest last), then the
    # proxy's own seed noise on NOISE_BUDGETS: a session that stops early still has every budget's row.
    for b in sorted(PROXIES, key=lambda b: (b != DEFAULT_BUDGET, PROXIES[b].epochs * PROXIES[b].train_size)):
        out += [(PROXY_FILE, f"{b}|{n}|seed=0", n, PROXIES[b], 0) for n in members]
    for b in NOISE_BUDGETS:
        out += [(PROXY_FILE, f"{b}|{n}|seed={seed}", n, PROXIES[b], seed) for seed in (1, 2) for n in ceiling]
    return out


def run_jobs(args: argparse.Namespace) -> None:
    """Train whatever is missing. Several processes may run this at once (one per core): each claims a
    job in the results file before training it, and a claim whose process has died is taken over."""
    data = _data()
    members = panel() | (front_panel([Path(p) for p in args.front_study]) if args.front_study else {})
    todo = jobs(list(members))
    if args.prefer == "proxies":
        todo = [j for j in todo if j[0] == PROXY_FILE] + [j for j in todo if j[0] != PROXY_FILE]
    for path, key, name, budget, seed in todo:
        with _locked(path) as store:
            run = store["runs"].get(key)
            if run is not None and ("accuracy" in run or _alive(run.get("claimed_by"))):
                continue
            store["runs"][key] = {"claimed_by": os.getpid()}
        print(f"{path.stem} {key} ...", flush=True)
        try:
            result = _train_one(members[name], data, budget, seed)
        except BaseException:
            with _locked(path) as store:
                store["runs"].pop(key, None)
            raise
        print(f"  {result}", flush=True)
        if name.startswith("front-"):  # drawn from studies outside the repository: keep what was trained
            result["arch"] = members[name].to_dict()
        with _locked(path) as store:
            store["runs"][key] = result


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def fidelity_rows(reference: dict, proxies: dict) -> tuple[dict, list[dict]]:
    """The ceiling (reference seed 0 vs seed 1) and one row of rank agreement per proxy budget."""
    runs = reference["runs"]
    ref = {k.split("|")[0]: v["accuracy"] for k, v in runs.items() if k.endswith("seed=0") and v.get("accuracy")}
    second = {k.split("|")[0]: v["accuracy"] for k, v in runs.items() if k.endswith("seed=1") and v.get("accuracy")}
    both = [name for name in second if name in ref]
    # The reference's own seed noise: sd = sqrt(mean((a - b)^2) / 2) over the members trained twice.
    seed_sd = math.sqrt(statistics.mean((ref[n] - second[n]) ** 2 for n in both) / 2) if both else None
    ceiling = {
        "members": len(both),
        "tau": kendall_tau([ref[n] for n in both], [second[n] for n in both]) if len(both) > 1 else None,
        "seed_sd": seed_sd,
        # Over only a few members the two-seed tau is a weak figure; this estimates the whole panel's
        # ceiling: tau between two simulated reference runs, each the measured accuracies plus seed noise.
        "simulated_tau": _simulated_ceiling(list(ref.values()), seed_sd) if seed_sd else None,
    }
    rows = []
    for budget in PROXIES:
        seed0 = {}
        seconds = []
        by_member: dict[str, list[float]] = {}
        for key, run in proxies["runs"].items():
            b, name, seed = key.split("|")
            if b != budget or run.get("accuracy") is None:
                continue
            by_member.setdefault(name, []).append(run["accuracy"])
            if seed == "seed=0":
                seed0[name] = run["accuracy"]
                seconds.append(run["seconds"])
        common = [n for n in ref if n in seed0]
        if len(common) < 2:
            continue
        x, y = [seed0[n] for n in common], [ref[n] for n in common]
        few = [n for n in both if n in seed0]
        noisy = [statistics.stdev(v) for v in by_member.values() if len(v) >= 3]
        rows.append(
            {
                "budget": budget,
                "members": len(common),
                "tau": kendall_tau(x, y),
                "rho": spearman_rho(x, y),
                "top25": top_overlap(x, y),
                "seconds": statistics.mean(seconds),
                "seed_sd": statistics.mean(noisy) if noisy else None,
                "spread": (max(x) - min(x)) * 100,
                "tau_ceiling_members": kendall_tau([seed0[n] for n in few], [ref[n] for n in few])
                if len(few) > 1
                else None,
            }
        )
    return ceiling, rows


def bootstrap_tau(x: list[float], y: list[float], repeats: int = BOOTSTRAP) -> tuple[float, float]:
    """A 95% percentile interval for Kendall τ, resampling the members with replacement (seeded)."""
    rng = random.Random(0)
    taus = []
    for _ in range(repeats):
        picks = [rng.randrange(len(x)) for _ in x]
        if len({x[i] for i in picks}) > 1 and len({y[i] for i in picks}) > 1:
            taus.append(kendall_tau([x[i] for i in picks], [y[i] for i in picks]))
    taus.sort()
    return taus[int(0.025 * len(taus))], taus[int(0.975 * len(taus)) - 1]


def bootstrap_difference(a: list[float], b: list[float], y: list[float], repeats: int = BOOTSTRAP) -> tuple:
    """A 95% percentile interval for tau(a, y) - tau(b, y), both on the same resampled members (paired):
    whether one budget ranks better than another, beyond what the choice of members explains."""
    rng = random.Random(1)
    differences = []
    for _ in range(repeats):
        picks = [rng.randrange(len(y)) for _ in y]
        if len({y[i] for i in picks}) > 1 and len({a[i] for i in picks}) > 1 and len({b[i] for i in picks}) > 1:
            ys = [y[i] for i in picks]
            differences.append(kendall_tau([a[i] for i in picks], ys) - kendall_tau([b[i] for i in picks], ys))
    differences.sort()
    return differences[int(0.025 * len(differences))], differences[int(0.975 * len(differences)) - 1]


def disjoint_rows(reference: dict, proxies: dict, front: bool) -> tuple[dict, list[dict]]:
    """The recipe of 2026-12-01, for one panel (random samples, or the front region): the reference's
    agreement with itself across its two seeds, and each proxy budget (seed 0) against the reference's
    first seed. No two compared trainings share a seed. Every τ with its bootstrap 95% interval."""

    def mine(name: str) -> bool:
        return name.startswith("front-") == front

    runs = reference["runs"]
    first = {k.split("|")[0]: v["accuracy"] for k, v in runs.items() if k.endswith("ref=0") and v.get("accuracy")}
    second = {k.split("|")[0]: v["accuracy"] for k, v in runs.items() if k.endswith("ref=1") and v.get("accuracy")}
    both = [n for n in first if n in second and mine(n)]
    self_agreement = {"members": len(both), "tau": None, "interval": None}
    if len(both) > 2:
        x, y = [first[n] for n in both], [second[n] for n in both]
        interval = bootstrap_tau(x, y) if len(both) >= MIN_INTERVAL_MEMBERS else None
        self_agreement |= {"tau": kendall_tau(x, y), "interval": interval}
    rows = []
    for budget in PROXIES:
        seed0 = {
            key.split("|")[1]: run["accuracy"]
            for key, run in proxies["runs"].items()
            if key.startswith(f"{budget}|") and key.endswith("seed=0") and run.get("accuracy") is not None
        }
        common = [n for n in first if n in seed0 and mine(n)]
        if len(common) < 3:
            continue
        x, y = [seed0[n] for n in common], [first[n] for n in common]
        seconds = [
            run["seconds"]
            for key, run in proxies["runs"].items()
            if key.startswith(f"{budget}|") and key.endswith("seed=0") and run.get("seconds")
            if mine(key.split("|")[1])
        ]
        rows.append(
            {
                "budget": budget,
                "members": len(common),
                "tau": kendall_tau(x, y),
                "interval": bootstrap_tau(x, y),
                "seconds": statistics.mean(seconds) if seconds else float("nan"),
                "by_member": dict(zip(common, x, strict=True)),
            }
        )
    # Each budget against the default, on the members both trained: the paired difference of their tau.
    default = next((r for r in rows if r["budget"] == DEFAULT_BUDGET), None)
    for row in rows:
        if default is None or row is default:
            continue
        shared = [n for n in row["by_member"] if n in default["by_member"]]
        if len(shared) >= MIN_INTERVAL_MEMBERS:
            mine_, theirs = ([r["by_member"][n] for n in shared] for r in (row, default))
            row["vs_default"] = bootstrap_difference(mine_, theirs, [first[n] for n in shared])
    return self_agreement, rows


def _simulated_ceiling(accuracies: list[float], sd: float, repeats: int = 2000) -> float:
    rng = random.Random(0)
    taus = []
    for _ in range(repeats):
        first = [a + rng.gauss(0, sd) for a in accuracies]
        second = [a + rng.gauss(0, sd) for a in accuracies]
        taus.append(kendall_tau(first, second))
    return statistics.mean(taus)


def choose_default(rows: list[dict], max_seconds: float = 60.0, target_tau: float = 0.7) -> tuple[dict, str]:
    """The issue's rule: the cheapest budget with tau >= 0.7; else the best tau within max_seconds."""
    good = sorted((r for r in rows if r["tau"] >= target_tau), key=lambda r: r["seconds"])
    if good:
        return good[0], f"cheapest budget with tau >= {target_tau}"
    affordable = [r for r in rows if r["seconds"] <= max_seconds] or rows
    best = max(affordable, key=lambda r: (r["tau"], -r["seconds"]))
    return best, f"no budget reached tau {target_tau}; best tau within {max_seconds:.0f} s per candidate"


def print_disjoint_table() -> None:
    reference = json.loads(REFERENCE_FILE.read_text())
    proxies = json.loads(PROXY_FILE.read_text()) if PROXY_FILE.is_file() else {"runs": {}}
    print(f"reference: {reference['recipe']} on {reference['machine']}; reference seeds {REFERENCE_SEEDS}")
    for front, title in ((False, "random panel (v3 samples across widths, 4 MobileNets)"), (True, "front region")):
        agreement, rows = disjoint_rows(reference, proxies, front)
        if not agreement["members"] and not rows:
            continue
        ceiling = _with_interval(agreement["tau"], agreement["interval"])
        print(f"\n{title}: reference vs itself (two seeds, {agreement['members']} members): τ {ceiling}")
        print(
            f"| proxy budget | members | s / candidate | Kendall τ vs reference [95% bootstrap] "
            f"| τ − τ({DEFAULT_BUDGET}) [95% paired bootstrap] |"
        )
        print("|---|---:|---:|---|---|")
        for row in rows:
            difference = row.get("vs_default")
            versus = (
                "(the default)"
                if row["budget"] == DEFAULT_BUDGET
                else "n/a"
                if difference is None
                else f"[{difference[0]:+.3f}, {difference[1]:+.3f}]"
            )
            print(
                f"| {row['budget']} | {row['members']} | {row['seconds']:.1f} | "
                f"{_with_interval(row['tau'], row['interval'])} | {versus} |"
            )
        complete = [row for row in rows if row["members"] == max(r["members"] for r in rows)]
        if complete:
            chosen, why = choose_default(complete)
            print(f"\nby the rule ({why}), over the budgets trained on every member: {chosen['budget']}")


def _with_interval(tau: float | None, interval: tuple[float, float] | None) -> str:
    if tau is None:
        return "n/a"
    if interval is None:
        return f"{tau:.3f} (too few members for an interval)"
    return f"{tau:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def print_table(args: argparse.Namespace) -> None:
    if not args.old:
        print_disjoint_table()
        return
    global REFERENCE_FILE, PROXY_FILE
    REFERENCE_FILE, PROXY_FILE = OLD_FILES  # the table of 2026-11-23 (old ds meaning, shared seeds)
    reference = json.loads(REFERENCE_FILE.read_text())
    proxies = json.loads(PROXY_FILE.read_text()) if PROXY_FILE.is_file() else {"runs": {}}
    ceiling, rows = fidelity_rows(reference, proxies)
    ref_runs = [r for k, r in reference["runs"].items() if k.endswith("seed=0") and r.get("accuracy")]
    accuracies = [r["accuracy"] for r in ref_runs]
    print(f"reference: {reference['recipe']} on {reference['machine']}")
    print(
        f"reference members: {len(ref_runs)}, accuracy {min(accuracies):.4f}-{max(accuracies):.4f}, "
        f"{statistics.mean(r['seconds'] for r in ref_runs):.0f} s each on average"
    )
    tau = ceiling["tau"]
    print(
        f"ceiling (reference seed 0 vs seed 1, {ceiling['members']} members): tau "
        f"{'n/a' if tau is None else f'{tau:.3f}'}, reference seed sd {(ceiling['seed_sd'] or 0) * 100:.2f} pts; "
        f"simulated over the whole panel: tau {ceiling['simulated_tau'] or float('nan'):.3f}"
    )
    print()
    print(
        "| proxy budget | members | Kendall τ | Spearman ρ | top-25% overlap | s / candidate "
        "| seed sd (pts) | spread (pts) | τ on the 2-seed members |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        sd = "n/a" if row["seed_sd"] is None else f"{row['seed_sd'] * 100:.2f}"
        print(
            f"| {row['budget']} | {row['members']} | {row['tau']:.3f} | {row['rho']:.3f} | {row['top25']:.2f} | "
            f"{row['seconds']:.1f} | {sd} | {row['spread']:.1f} | "
            f"{'n/a' if row['tau_ceiling_members'] is None else format(row['tau_ceiling_members'], '.3f')} |"
        )
    if rows:
        chosen, why = choose_default(rows, args.max_seconds)
        print(f"\nchosen: {chosen['budget']} ({why}): tau {chosen['tau']:.3f}, {chosen['seconds']:.1f} s per candidate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["run", "table", "panel"])
    parser.add_argument("--prefer", choices=["reference", "proxies"], default="reference", help="which jobs first")
    parser.add_argument("--threads", type=int, default=1, help="training threads (default 1)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="seconds per candidate allowed (table)")
    parser.add_argument(
        "--front-study",
        action="append",
        help="runs/STUDY of a finished search (repeat to pool several of one space and device): adds its front "
        "region as a second panel",
    )
    parser.add_argument("--old", action="store_true", help="table: the 2026-11-23 results (shared seeds, old ds)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the panel samples through in-memory studies
    torch.set_num_threads(args.threads)
    if args.step == "run":
        run_jobs(args)
    elif args.step == "panel":
        for name, arch in panel().items():
            print(name, sum(1 for _ in arch.blocks), arch.head.conv, " ".join(arch.block_strings()))
    else:
        print_table(args)


if __name__ == "__main__":
    main()
