"""How disturbed is the timing device? The timing gate's probe and a network, timed alternately for a while.

Usage: python benchmarks/contention.py [--seconds 90] [--network mobilenet_v2] [--size 224]
                                       [--probes conv16-dw-pw@112,conv16-dw-pw@224]
                                       [--target cpu | http://HOST:PORT --target-token T]
Writes benchmarks/contention_results.json (--out). Each turn: each probe (targets.QuietGate, the fastest
of 8 runs) then the network (a fresh session, fastest of 10 runs). Reported per probe: its slowdown
against its own 5th percentile, how often it ran more than 10% / 20% slow, the correlation of its slowdown
with the network's, and the network's slowdown when the probe was quiet against when it was not: whether
a gate's probe sees what slows networks (issue 20). The default probe is ROUNDS_RECIPE's for --size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from mbsearch.architecture.zoo import reference_arch
from mbsearch.device.timing import cpu_model
from mbsearch.latency.factory import open_target
from mbsearch.latency.recipes import ROUNDS_RECIPE, probe_for, quiet_gate, time_rounds
from mbsearch.latency.targets import exported
from mbsearch.nn.model import build_model

RESULTS = Path(__file__).with_name("contention_results.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--network", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--probes", help="comma-separated probe specs (default: the recipe's for --size)")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--target-token", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {0})
    os.environ.setdefault("MBSEARCH_LOCK_DIR", tempfile.mkdtemp())
    target = open_target(args.target, "onnxruntime", 1, args.target_token)
    probes = args.probes.split(",") if args.probes else [probe_for(ROUNDS_RECIPE, args.size)]
    gates = [quiet_gate(target, ROUNDS_RECIPE | {"probe": probe}, args.size) for probe in probes]
    arch = reference_arch(args.network, args.size, 1, 10)
    network = exported(build_model(arch), arch)
    rows, started = [], time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        reads = [gate.read(target) for gate in gates]
        rows.append((time.perf_counter() - started, *reads, time_rounds(target, [network], 1, 3, 10)[0][0]))
    series = np.array(rows)
    slowdown = series[:, 1:] / np.quantile(series[:, 1:], 0.05, axis=0)
    network_slowdown = slowdown[:, -1]
    per_probe = {}
    for column, probe in enumerate(probes):
        quiet = slowdown[:, column] <= 1 + ROUNDS_RECIPE["tolerance"]
        per_probe[probe] = {
            "probe_ms_p05": float(np.quantile(series[:, 1 + column], 0.05)),
            "probe_slow_10pct": float(np.mean(slowdown[:, column] > 1.1)),
            "probe_slow_20pct": float(np.mean(slowdown[:, column] > 1.2)),
            "correlation": float(np.corrcoef(slowdown[:, column], network_slowdown)[0, 1]),
            "quiet_share": float(np.mean(quiet)),
            "network_slowdown_when_probe_quiet": float(np.median(network_slowdown[quiet])) if quiet.any() else None,
            "network_slowdown_when_probe_slow": float(np.median(network_slowdown[~quiet])) if (~quiet).any() else None,
        }
    result = {
        "date": str(date.today()),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        "target": args.target,
        "network": f"{args.network}@{args.size}",
        "turns": len(series),
        "seconds": args.seconds,
        "network_ms_p05": float(np.quantile(series[:, -1], 0.05)),
        "network_slow_20pct": float(np.mean(network_slowdown > 1.2)),
        "probes": per_probe,
        "columns": ["seconds", *probes, "network"],
        "series": [[round(v, 4) for v in row] for row in rows],
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "series"}, indent=1))


if __name__ == "__main__":
    main()
