"""Latency instruments (issue 20): timing repeatability by recipe, and the per-block predictor's error on
held-out networks against a ground truth with its own noise floor.

Usage: python benchmarks/latency.py [--archs 30] [--held-out 100] [--netadapt 20] [--calibrate 30]
                                   [--adaptive 60] [--sample 0] [--sizes 28,224] [--seed 0] [--precision int8]
                                   [--target http://HOST:PORT --target-token T]   (measure your own device)
       python benchmarks/latency.py --table benchmarks/latency_v2_results.json   (print the README tables)
Writes benchmarks/latency_v2_results.json. Run it on a quiet machine: every figure is a timing.

- repeatability: `--archs` sampled v3 networks timed in two passes by each of seven recipes (see _pass:
  pooled, the search's before issue 20; turns; interleaved; anchored, in turns with mobilenet_v3_small;
  gated, targets.ROUNDS_RECIPE over all networks; gated-turns, targets.SEARCH_RECIPE one at a time;
  gated-turns-small-probe, the same gated by the small probe at every size, the recipe of 2026-12-02).
  Per recipe: median and max |difference| between the passes, and Kendall tau; with the CPU steal time
  seen meanwhile. `--reverse` takes the recipes in the opposite order (the first ones run on a machine
  that may still be settling).
- predictor: `mbsearch profile` of v3 (every stem and head and `--sample` blocks timed in context,
  `--adaptive` more at other widths,
  `--calibrate` networks timed whole for the network-level correction), then `--held-out` sampled networks
  (seeds apart from the calibration's) plus `--netadapt` networks shaped by NetAdapt's own shrink steps
  (explicit `mid` and output widths no table holds), each timed whole twice with the rounds recipe. The
  first pass is the ground truth; the second against the first is the noise floor. Per input size: the
  share within ±5% and ±10%, RMSPE and Kendall tau, of the predictor and of the floor; the profiling cost
  in minutes and timings; how often the truth lay within 2 predicted sds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from mbsearch.adapt.widths import STEP, shrunk, widths, with_explicit_mids
from mbsearch.architecture.arch import Arch
from mbsearch.architecture.sample import random_arch
from mbsearch.architecture.space import load_space
from mbsearch.architecture.zoo import reference_arch
from mbsearch.device.timing import cpu_model
from mbsearch.latency.calibration import whole_network_latencies
from mbsearch.latency.factory import open_target
from mbsearch.latency.lut import prediction_error
from mbsearch.latency.profiling import ProfilePlan, profile
from mbsearch.latency.recipes import (
    POOLED_RECIPE,
    ROUNDS_RECIPE,
    ROUNDS_RECIPE_SMALL_PROBE,
    SEARCH_RECIPE,
    latencies_by_rounds,
    latency_anchored,
    time_network,
    time_rounds,
)
from mbsearch.latency.targets import Target, exported
from mbsearch.nn.model import build_model
from mbsearch.ranking import kendall_tau

RESULTS = Path(__file__).with_name("latency_v2_results.json")
OLD_RESULTS = Path(__file__).with_name("latency_results.json")  # the predictor before issue 20 (2026-11)
HELD_OUT_SEED = 5_000  # apart from the calibration networks' seeds (lut.CALIBRATION_SEED)
NETADAPT_SEED = 7_000
SEED_STRIDE = 10_000  # --seed K draws held-out and NetAdapt networks K x this further on (and calibration K)
SPACE = "v3"
REVERSE = False
CHOSEN: tuple[str, ...] = ()


def archs(count: int, size: int, first_seed: int = 0) -> list[Arch]:
    space = load_space(SPACE)
    return [random_arch(space, first_seed + index, size, 1, 10) for index in range(count)]


def netadapt_shaped(count: int, size: int, first_seed: int = NETADAPT_SEED) -> list[Arch]:
    """Sampled networks trimmed by 3 to 6 of NetAdapt's own shrink steps (adapt.netadapt.shrunk): the widths
    `mbsearch adapt` produces, which lie between and below the space's."""
    rng = random.Random(first_seed)
    out = []
    for arch in archs(count, size, first_seed):
        arch = with_explicit_mids(arch)
        for _ in range(rng.randint(3, 6)):
            options = [(k, b, w) for k, b, w in widths(arch) if w - STEP >= 8]
            if not options:
                break
            kind, blocks, width = rng.choice(options)
            narrower = max(8, width - STEP * rng.randint(1, 3))
            arch = shrunk(arch, kind, blocks, narrower) or arch
        out.append(arch)
    return out


def steal_jiffies() -> tuple[int, int]:
    """(steal, total) CPU jiffies since boot: the hypervisor's share taken from this VM."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


RECIPES = ("pooled", "turns", "interleaved", "anchored", "gated", "gated-turns", "gated-turns-small-probe")
ANCHOR = "mobilenet_v3_small"  # the anchored recipe's fixed network, at the benchmark's input size


def _pass(recipe: str, networks: list[Arch], target: Target, anchor: tuple | None) -> tuple[list[float], float]:
    """One pass over the networks by one recipe; with the steal time (%) seen meanwhile.

    pooled: one network at a time, the search's recipe before issue 20 (one session of 50 runs, median,
    re-measured while IQR/median > 10%). turns: one network at a time, 7 fresh sessions of 10 runs, the
    median of their minima. interleaved: the same turns, taken in rounds over all networks. anchored: each
    network in turns with a fixed anchor network, scaled by the anchor's reference latency (taken once,
    before the first pass). gated: interleaved, but a turn counts only when the probe beside it ran near
    its fastest (targets.ROUNDS_RECIPE: tables' ground truth). gated-turns: the same one network at a time
    (targets.SEARCH_RECIPE: the search's and `mbsearch measure`'s since issue 20). gated-turns-small-probe:
    gated-turns with the small probe at every input size (targets.ROUNDS_RECIPE_SMALL_PROBE)."""
    before = steal_jiffies()
    prepared = [exported(build_model(arch), arch) for arch in networks]
    rounds, warmup, runs = ROUNDS_RECIPE["rounds"], ROUNDS_RECIPE["warmup"], ROUNDS_RECIPE["runs"]
    if recipe == "pooled":
        values = [time_network(target, item, POOLED_RECIPE).median_ms for item in prepared]
    elif recipe == "turns":
        values = [statistics.median(time_rounds(target, [item], rounds, warmup, runs)[0]) for item in prepared]
    elif recipe == "interleaved":
        values = [statistics.median(turns) for turns in time_rounds(target, prepared, rounds, warmup, runs)]
    elif recipe == "gated":
        values = latencies_by_rounds(target, prepared)
    elif recipe == "gated-turns":
        values = [time_network(target, item, SEARCH_RECIPE).median_ms for item in prepared]
    elif recipe == "gated-turns-small-probe":
        values = [time_network(target, item, ROUNDS_RECIPE_SMALL_PROBE).median_ms for item in prepared]
    else:
        anchor_prepared, anchor_ms = anchor
        values = [latency_anchored(target, item, anchor_prepared, anchor_ms, ROUNDS_RECIPE) for item in prepared]
    after = steal_jiffies()
    return values, (after[0] - before[0]) / max(after[1] - before[1], 1) * 100


def agreement(first: list[float], second: list[float]) -> dict:
    deltas = [abs(a - b) / a * 100 for a, b in zip(first, second, strict=True)]
    return {
        "kendall_tau": kendall_tau(first, second),
        "median_abs_delta_pct": statistics.median(deltas),
        "max_abs_delta_pct": max(deltas),
        "range_ms": [min(first), max(first)],
    }


def repeatability(networks: list[Arch], target: Target) -> dict:
    order = [recipe for recipe in (RECIPES[::-1] if REVERSE else RECIPES) if recipe in CHOSEN]
    result: dict = {"networks": len(networks), "rounds_recipe": ROUNDS_RECIPE, "anchor": ANCHOR, "order": order}
    size = networks[0].input.size
    anchor_arch = reference_arch(ANCHOR, size, 1, 10)
    anchor_prepared = exported(build_model(anchor_arch), anchor_arch)
    anchor_ms = statistics.median(time_rounds(target, [anchor_prepared], 21, ROUNDS_RECIPE["warmup"], 10)[0])
    for recipe in order:
        started = time.perf_counter()
        (first, steal_a), (second, steal_b) = (
            _pass(recipe, networks, target, (anchor_prepared, anchor_ms)) for _ in range(2)
        )
        result[recipe] = agreement(first, second) | {
            "steal_pct": [round(steal_a, 2), round(steal_b, 2)],
            "seconds_per_network_per_pass": (time.perf_counter() - started) / 2 / len(networks),
        }
    return result


def predictor(
    size: int,
    calibrate: int,
    held_out: int,
    netadapt: int,
    adaptive: int,
    sample: int,
    target: Target,
    seed: int,
    precision: str = "fp32",
) -> dict:
    space = load_space(SPACE)
    started = time.perf_counter()
    plan = ProfilePlan(
        size, 1, 10, calibrate=calibrate, seed=seed, adaptive=adaptive, sample=sample, precision=precision
    )
    table = profile(space, target, plan)
    minutes = (time.perf_counter() - started) / 60
    first = seed * SEED_STRIDE
    groups = {
        "sampled": archs(held_out, size, HELD_OUT_SEED + first),
        "netadapt": netadapt_shaped(netadapt, size, NETADAPT_SEED + first),
    }
    networks = groups["sampled"] + groups["netadapt"]
    truth = whole_network_latencies(target, networks, precision)
    again = whole_network_latencies(target, networks, precision)
    predictions = [table.prediction(arch) for arch in networks]
    result: dict = {
        "input_size": size,
        "precision": precision,
        "sample": sample,
        "seed": seed,
        "profiling": table.data.profiling | {"minutes": minutes},
        "uses": table.data.use,
        "calibration": table.data.calibration,
        "sources": {s: sum(p.source == s for p in predictions) for s in ("table", "interpolated", "extrapolated")},
        "within_2sd": statistics.mean(abs(p.ms - t) <= 2 * p.sd_ms for p, t in zip(predictions, truth, strict=True)),
        "measured_range_ms": [min(truth), max(truth)],
    }
    start = 0
    for name, group in (("all", networks), *groups.items()):
        index = range(len(networks)) if name == "all" else range(start, start + len(group))
        if name != "all":
            start += len(group)
        picked_truth = [truth[i] for i in index]
        result[name] = {
            "predictor": prediction_error([predictions[i].ms for i in index], picked_truth),
            "noise_floor": prediction_error([again[i] for i in index], picked_truth),
        }
    return result


def wilson(share: float, count: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of a share seen in `count` networks (it stays inside 0-1 near 100%)."""
    centre = (share + z * z / (2 * count)) / (1 + z * z / count)
    half = z / (1 + z * z / count) * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count))
    return centre - half, centre + half


def markdown(results: dict) -> str:
    """The tables of benchmarks/README.md, from a results file."""
    lines = [
        "| input | recipe | Kendall τ | median abs diff | max abs diff | steal % | s / network / pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, by_recipe in results["repeatability"].items():
        for recipe in [recipe for recipe in RECIPES if recipe in by_recipe]:
            r = by_recipe[recipe]
            lines.append(
                f"| {size}x{size} | {recipe} | {r['kendall_tau']:.3f} | {r['median_abs_delta_pct']:.1f}% | "
                f"{r['max_abs_delta_pct']:.1f}% | {'/'.join(f'{s:.1f}' for s in r['steal_pct'])} | "
                f"{r['seconds_per_network_per_pass']:.2f} |"
            )
    lines += [
        "",
        "| input | networks | predictor | within 5% | within 10% (95% interval) | RMSPE | Kendall τ |",
        "|---|---|---|---|---|---|---|",
    ]
    if OLD_RESULTS.is_file():
        for old in json.loads(OLD_RESULTS.read_text()).get("lut", []):
            e = old[old.get("uses", "sum")]
            lines.append(
                f"| {old['input_size']}x{old['input_size']} | {e['networks']} sampled | before issue 20 (parts alone, "
                f"stored {OLD_RESULTS.name}) | {e['within_5pct']:.0%} | {e['within_10pct']:.0%} | n/a | "
                f"{e['kendall_tau']:.3f} |"
            )
    for lut in results["predictor"]:
        size = lut["input_size"]
        table = "full table" if lut.get("sample") == 0 else f"{lut.get('sample', 400)} blocks + regressors"
        table += ", int8" if lut.get("precision") == "int8" else ""
        for group in ("all", "sampled", "netadapt"):
            for name in ("predictor", "noise_floor"):
                e = lut[group][name]
                if not e.get("networks"):
                    continue  # a group of none (--netadapt 0)
                label = f"in context, {table}" if name == "predictor" else "noise floor (pass 2 vs pass 1)"
                low, high = wilson(e["within_10pct"], e["networks"])
                lines.append(
                    f"| {size}x{size} | {e['networks']} {group} | {label} | {e['within_5pct']:.0%} | "
                    f"{e['within_10pct']:.0%} ({low:.0%}-{high:.0%}) | {e['rmspe']:.1%} | {e['kendall_tau']:.3f} |"
                )
        cost = lut["profiling"]
        lines.append(
            f"\n{size}x{size}: profiling {cost['minutes']:.1f} min, {cost['timings']} timings ({cost['parts']} parts, "
            f"{cost['adaptive']} adaptive, {cost['networks']} calibration networks); predicts with the {lut['uses']}; "
            f"sources {lut['sources']}; truth within 2 predicted sds for {lut['within_2sd']:.0%}.\n"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", type=int, default=30)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--netadapt", type=int, default=20)
    parser.add_argument("--calibrate", type=int, default=30)
    parser.add_argument("--adaptive", type=int, default=60)
    parser.add_argument("--sample", type=int, default=0, help="blocks timed per table (0: every part, as profile)")
    parser.add_argument("--seed", type=int, default=0, help="another draw of networks (0-49): a spread across runs")
    parser.add_argument("--sizes", default="28,224")
    parser.add_argument("--space", default="v3", help="v3 is the figure of record; v1 makes a quick smoke run")
    parser.add_argument("--skip-repeatability", action="store_true")
    parser.add_argument("--reverse", action="store_true", help="the recipes in reverse order")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="the recipes compared (default: all)")
    parser.add_argument("--skip-predictor", action="store_true", help="the repeatability table alone")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="the predictor's graphs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--target", default="cpu", help="the device measured: cpu, or http://HOST:PORT of 'mbsearch agent' on it"
    )
    parser.add_argument("--target-token", default=None, help="the agent's token (or MBSEARCH_TARGET_TOKEN)")
    parser.add_argument("--table", type=Path, help="only print the markdown tables of this results file")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    global SPACE, REVERSE, CHOSEN
    SPACE, REVERSE, CHOSEN = args.space, args.reverse, tuple(args.recipes.split(","))
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {0})  # local timing on core 0
    device = open_target(args.target, "onnxruntime", 1, args.target_token)
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as lock_dir:
        os.environ["MBSEARCH_LOCK_DIR"] = lock_dir  # nothing else on this machine holds our timing lock
        results = {
            "date": str(date.today()),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
            "target": args.target,
            "device": device.device(),
            "space": SPACE,
            "repeatability": {}
            if args.skip_repeatability
            else {size: repeatability(archs(args.archs, size), device) for size in sizes},
            "predictor": [],
        }
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        for size in [] if args.skip_predictor else sizes:  # written after each size: a long run keeps it
            results["predictor"].append(
                predictor(
                    size,
                    args.calibrate,
                    args.held_out,
                    args.netadapt,
                    args.adaptive,
                    args.sample,
                    device,
                    args.seed,
                    args.precision,
                )
            )
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
