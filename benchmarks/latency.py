"""Latency instruments: repeatability, agent overhead, and the lookup table's prediction error.

Usage: python benchmarks/latency.py [--archs 30] [--held-out 100] [--calibrate 30] [--sizes 28,224]
                                   [--target http://HOST:PORT --target-token T]   (measure your own device)
Writes benchmarks/latency_results.json and prints the tables for benchmarks/README.md.

- repeatability: `--archs` sampled v3 networks timed twice, in two separate passes (fresh ONNX Runtime sessions),
  on this CPU with 1 thread: Kendall tau of the two rankings and the median |difference| in percent.
- agent overhead: the same networks timed locally and through `mbsearch agent` on 127.0.0.1 (pinned to the
  other core): seconds per candidate on each path, and the agent's latencies against the local ones.
- lookup table: `mbsearch profile` of v3 (every part timed alone, then `--calibrate` networks timed whole),
  then `--held-out` other sampled networks timed whole and predicted: share within 5% and 10%, Kendall tau,
  for the plain sum (+ per-network overhead) and for the linear correction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from mbsearch.device.agent import start_local_agent
from mbsearch.device.timing import cpu_model
from mbsearch.latency.factory import open_target
from mbsearch.latency.lut import calibrated, calibration_archs, prediction_error, profile
from mbsearch.latency.remote import RemoteTarget
from mbsearch.latency.targets import LocalTarget, Target, measure_on
from mbsearch.nn.model import build_model
from mbsearch.ranking import kendall_tau
from mbsearch.spec.sample import random_arch
from mbsearch.spec.space import load_space

RESULTS = Path(__file__).with_name("latency_results.json")
HELD_OUT_SEED = 5_000  # apart from the calibration networks' seeds (lut.CALIBRATION_SEED)


SPACE = "v3"


def archs(count: int, size: int, first_seed: int = 0):
    space = load_space(SPACE)
    return [random_arch(space, first_seed + index, size, 1, 10) for index in range(count)]


def timed(target, networks, statistic: str = "median_ms") -> tuple[list[float], float]:
    """Latency of each network (median by default), and wall seconds per network (export + timing)."""
    started = time.perf_counter()
    stats = [measure_on(target, build_model(arch), arch) for arch in networks]
    return [getattr(s, statistic) for s in stats], (time.perf_counter() - started) / len(networks)


def repeatability(networks, local: Target) -> dict:
    """Two passes; the median is what mbsearch records, the minimum is shown beside it for comparison."""
    passes = [[measure_on(local, build_model(arch), arch) for arch in networks] for _ in range(2)]
    result: dict = {"networks": len(networks)}
    for statistic in ("median_ms", "min_ms"):
        first, second = ([getattr(s, statistic) for s in one] for one in passes)
        deltas = [abs(a - b) / a * 100 for a, b in zip(first, second, strict=True)]
        result[statistic] = {
            "kendall_tau": kendall_tau(first, second),
            "median_abs_delta_pct": statistics.median(deltas),
            "max_abs_delta_pct": max(deltas),
            "range_ms": [min(first), max(first)],
        }
    return result


def agent_overhead(networks) -> dict:
    local = LocalTarget("cpu", "onnxruntime", 1)
    agent = start_local_agent(threads=1, cpus="1")
    try:
        remote = RemoteTarget(agent.url, agent.token)
        local_ms, local_s = timed(local, networks)
        remote_ms, remote_s = timed(remote, networks)
    finally:
        agent.stop()
    deltas = [abs(a - b) / a * 100 for a, b in zip(local_ms, remote_ms, strict=True)]
    return {
        "networks": len(networks),
        "local_seconds_per_candidate": local_s,
        "agent_seconds_per_candidate": remote_s,
        "overhead_seconds_per_candidate": remote_s - local_s,
        "kendall_tau_local_vs_agent": kendall_tau(local_ms, remote_ms),
        "median_abs_delta_pct_local_vs_agent": statistics.median(deltas),
    }


def lut_error(size: int, calibrate: int, held_out: int, local: Target) -> dict:
    space = load_space(SPACE)
    started = time.perf_counter()
    table = profile(space, local, size, 1, 10, calibrate=0)
    profile_seconds = time.perf_counter() - started
    calibration = calibration_archs(space, calibrate, size, 1, 10)  # as `mbsearch profile` draws them
    calibration_ms, _ = timed(local, calibration)
    table = calibrated(table, calibration, calibration_ms)
    networks = archs(held_out, size, HELD_OUT_SEED)
    measured, per_network = timed(local, networks)
    plain = [table.plain_sum(arch) + table.data.network_overhead_ms for arch in networks]
    corrected = [table.predict(arch, "corrected") for arch in networks]
    return {
        "input_size": size,
        "parts": len(table.data.entries),
        "profile_seconds": profile_seconds,
        "calibration_networks": calibrate,
        "network_overhead_ms": table.data.network_overhead_ms,
        "correction": table.data.correction,
        "uses": table.data.use,
        "held_out_seconds_per_network": per_network,
        "measured_range_ms": [min(measured), max(measured)],
        "sum": prediction_error(plain, measured),
        "corrected": prediction_error(corrected, measured),
    }


def markdown(results: dict) -> str:
    """The tables of benchmarks/README.md, from a results file."""
    lines = [
        "| input | statistic | Kendall tau | median abs diff | max abs diff | range ms |",
        "|---|---|---|---|---|---|",
    ]
    for size, by_statistic in results["repeatability"].items():
        for statistic in ("median_ms", "min_ms"):
            r = by_statistic[statistic]
            lines.append(
                f"| {size}x{size} | {statistic[:-3]} | {r['kendall_tau']:.3f} | {r['median_abs_delta_pct']:.1f}% | "
                f"{r['max_abs_delta_pct']:.1f}% | {r['range_ms'][0]:.2f}-{r['range_ms'][1]:.2f} |"
            )
    agent = results.get("agent") or {}
    lines += [
        "",
        "Agent overhead: not measured (a remote --target run)."
        if not agent
        else f"Agent on 127.0.0.1 (1 core): {agent['local_seconds_per_candidate']:.3f} s per candidate locally, "
        f"{agent['agent_seconds_per_candidate']:.3f} s through the agent (overhead "
        f"{agent['overhead_seconds_per_candidate']:+.3f} s); agent against local latencies: tau "
        f"{agent['kendall_tau_local_vs_agent']:.3f}, "
        f"median abs diff {agent['median_abs_delta_pct_local_vs_agent']:.1f}%.",
        "",
        "| input | parts | profile s | predictor | within 5% | within 10% | median abs error | Kendall tau |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lut in results["lut"]:
        for name in ("sum", "corrected"):
            e = lut[name]
            lines.append(
                f"| {lut['input_size']}x{lut['input_size']} | {lut['parts']} | {lut['profile_seconds']:.0f} | {name} | "
                f"{e['within_5pct']:.0%} | {e['within_10pct']:.0%} | {e['median_abs_error']:.1%} | "
                f"{e['kendall_tau']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", type=int, default=30)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--calibrate", type=int, default=30)
    parser.add_argument("--sizes", default="28,224")
    parser.add_argument("--space", default="v3", help="v3 is the figure of record; v1 makes a quick smoke run")
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
    global SPACE
    SPACE = args.space
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {0})  # local timing on core 0; the agent gets core 1
    device = open_target(args.target, "onnxruntime", 1, args.target_token)
    with tempfile.TemporaryDirectory() as lock_dir:
        os.environ["MBSEARCH_LOCK_DIR"] = lock_dir  # nothing else on this machine holds our timing lock
        results = {
            "date": str(date.today()),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
            "target": args.target,
            "device": device.device(),
            "repeatability": {size: repeatability(archs(args.archs, size), device) for size in (28, 224)},
            # the agent-overhead comparison needs both paths on this machine: local CPU runs only
            "agent": agent_overhead(archs(args.archs, 28)) if args.target == "cpu" else None,
            "lut": [lut_error(int(size), args.calibrate, args.held_out, device) for size in args.sizes.split(",")],
        }
    results["space"] = SPACE
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
