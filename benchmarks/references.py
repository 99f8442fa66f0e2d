"""The nine reference MobileNets as the report compares with them (issue 35: four of them changed to the
papers' networks on 2026-12-07): parameters and MACs at 224x224x3 / 1000 classes and at the demo's 28x28x1 /
10 classes, latency on this CPU (ONNX Runtime, 1 thread, the search's timing recipe), and validation accuracy
at the demo's proxy budget (1 epoch x 8,000 images) and verify budget (1 epoch x the whole training split),
trained and timed by the same code `verify` stores them with (results/baselines.py).

Usage: python benchmarks/references.py [--names a,b] [--runs-dir DIR] [--out benchmarks/references_results.json]
One seed per budget (the demo study's seed rule): a weak figure for accuracy; the counts are exact.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

from mbsearch.architecture.zoo import reference_arch, reference_names
from mbsearch.nn.cost import count_macs, count_params
from mbsearch.nn.model import build_model
from mbsearch.results.baselines import baseline_frame
from mbsearch.study.config import RunConfig

VERIFY = {"epochs": 1.0, "train_size": 50_000, "batch_size": 128, "lr": 0.004}  # verify's default recipe


def _counts(name: str) -> dict[str, int]:
    counts = {}
    for label, arch in (("224", reference_arch(name)), ("28", reference_arch(name, 28, 1, 10))):
        model = build_model(arch)
        counts[f"params_{label}"] = count_params(model)
        counts[f"macs_{label}"] = int(count_macs(model, arch)[0])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default=",".join(reference_names()))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/references-bench"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/references_results.json"))
    args = parser.parse_args()
    names = args.names.split(",")
    settings = RunConfig().identity()  # the demo's settings: dataset, split, proxy budget, target, seed
    started = time.perf_counter()
    proxy = baseline_frame(settings, args.runs_dir, names=names).set_index("name")
    verified = baseline_frame(settings | VERIFY | {"train_seed": 1}, args.runs_dir, names=names).set_index("name")
    rows = []
    for name in names:
        row = {"name": name, **_counts(name), "latency_ms_28": float(proxy.loc[name, "latency_ms"])}
        row |= {"proxy_accuracy": float(proxy.loc[name, "val_accuracy"])}
        row |= {"verify_accuracy": float(verified.loc[name, "val_accuracy"])}
        rows.append(row)
        print(" | ".join(str(v) if not isinstance(v, float) else f"{v:.4f}" for v in row.values()))
    record = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "seconds": round(time.perf_counter() - started, 1), "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
