"""Float against int8 (ONNX Runtime static quantization, QDQ, per-channel) on the 9 reference MobileNets and
sampled v3 networks: latency of each (with its repeatability: two timings of each graph), speed-up, the
accuracy drop of the quantized graph, and whether the int8 front differs from the float front.

    python benchmarks/int8.py --samples 30 --train-size 8000    # results appended to int8_results.json

Every network is trained once with the search's default proxy (1 epoch x 8,000 images), exported, and
quantized with activations calibrated on 256 training images; both graphs are scored by ONNX Runtime on the
10,000 validation images (split seed 0) and timed on this CPU by the search's gated recipe, 1 thread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import machine

from mbsearch.architecture.sample import random_arch
from mbsearch.architecture.space import load_space
from mbsearch.architecture.zoo import reference_arch, reference_names
from mbsearch.latency.recipes import time_network
from mbsearch.latency.targets import LocalTarget, Prepared, input_shape
from mbsearch.nn.model import build_model
from mbsearch.nn.onnx_export import export_onnx
from mbsearch.nn.quantize import CALIBRATION_IMAGES, int8_recipe, onnx_accuracy, quantize_int8
from mbsearch.results.pareto import pareto_mask
from mbsearch.train.budget import Budget
from mbsearch.train.data import load_dataset
from mbsearch.train.loop import Normalizer, TrainOptions, train

HERE = Path(__file__).resolve().parent


def measure(name: str, arch, data, normalizer, budget: Budget, target) -> dict:
    torch.manual_seed(0)
    model = build_model(arch)
    train(model, data.train, data.val, budget, TrainOptions(normalize=normalizer))
    graph = export_onnx(model, arch).data
    calibration = normalizer(data.train.images[:CALIBRATION_IMAGES]).numpy()
    quantized = quantize_int8(graph, calibration)
    images, labels = normalizer(data.val.images).numpy(), data.val.labels.numpy()
    row = {"name": name}
    for kind, payload in (("fp32", graph), ("int8", quantized)):
        row[f"{kind}_accuracy"] = onnx_accuracy(payload, images, labels)
        prepared = Prepared(payload, input_shape(arch), arch)
        row[f"{kind}_ms"] = [time_network(target, prepared).median_ms for _ in range(2)]  # repeatability
    print(json.dumps(row), flush=True)
    return row


def fronts(rows: list[dict]) -> dict:
    """How many points of each front the other precision's objectives dominate."""
    out = {}
    for kind, other in (("fp32", "int8"), ("int8", "fp32")):
        acc = np.array([r[f"{kind}_accuracy"] for r in rows])
        lat = np.array([np.mean(r[f"{kind}_ms"]) for r in rows])
        mask = pareto_mask(acc, lat)
        other_mask = pareto_mask(
            np.array([r[f"{other}_accuracy"] for r in rows]), np.array([np.mean(r[f"{other}_ms"]) for r in rows])
        )
        names = [r["name"] for r, keep in zip(rows, mask, strict=True) if keep]
        off = [r["name"] for r, keep, kept in zip(rows, mask, other_mask, strict=True) if keep and not kept]
        out[kind] = {"front": names, "off_the_other_front": off}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--train-size", type=int, default=8000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("fashion-mnist", val_size=10_000, seed=0)
    budget = Budget(train_size=args.train_size)
    normalizer = Normalizer.fit(data.train.images[: args.train_size])
    target = LocalTarget("cpu", "onnxruntime", 1)
    space = load_space("v3")
    networks = {name: reference_arch(name, 28, 1, 10) for name in reference_names()}
    networks |= {f"v3-seed{seed}": random_arch(space, seed, 28, 1, 10) for seed in range(args.samples)}
    rows = [measure(name, arch, data, normalizer, budget, target) for name, arch in networks.items()]
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "recipe": int8_recipe(),
        "budget": {"epochs": budget.epochs, "train_size": budget.train_size},
        "rows": rows,
        "fronts": fronts(rows),
    }
    path = HERE / "int8_results.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps([*runs, record], indent=1) + "\n")
    summarize(record)


def summarize(record: dict) -> None:
    print("| network | fp32 acc | int8 acc | drop (points) | fp32 ms (2 timings) | int8 ms (2 timings) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in record["rows"]:
        drop = 100 * (r["fp32_accuracy"] - r["int8_accuracy"])
        speed = np.mean(r["fp32_ms"]) / np.mean(r["int8_ms"])
        print(f"| {r['name']} | {r['fp32_accuracy']:.4f} | {r['int8_accuracy']:.4f} | {drop:+.2f} | "
              f"{r['fp32_ms'][0]:.3f} / {r['fp32_ms'][1]:.3f} | {r['int8_ms'][0]:.3f} / {r['int8_ms'][1]:.3f} | "
              f"{speed:.2f}x |")  # fmt: skip
    speeds = [np.mean(r["fp32_ms"]) / np.mean(r["int8_ms"]) for r in record["rows"]]
    drops = [100 * (r["fp32_accuracy"] - r["int8_accuracy"]) for r in record["rows"]]
    repeat = [abs(a - b) / min(a, b) for r in record["rows"] for a, b in (r["fp32_ms"], r["int8_ms"])]
    print(f"speed-up median {np.median(speeds):.2f}x (range {min(speeds):.2f}-{max(speeds):.2f}); drop median "
          f"{np.median(drops):+.2f} points (range {min(drops):+.2f} to {max(drops):+.2f}); timing repeatability "
          f"median |diff| {100 * np.median(repeat):.1f}%")  # fmt: skip
    for kind, front in record["fronts"].items():
        print(f"{kind} front: {len(front['front'])} points, {len(front['off_the_other_front'])} of them "
              f"dominated on the other precision's objectives: {front['off_the_other_front']}")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["summary"]:
        summarize(json.loads((HERE / "int8_results.json").read_text())[-1])
    else:
        main()
