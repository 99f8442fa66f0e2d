"""Supernet training rules compared at a small budget, by Kendall tau on fidelity.py's 20 v3 random-panel
members (inherited weights, and after a few fine-tune steps), against its reference's first seed.

    python benchmarks/supernet_rules.py --rule sandwich --steps 300 --finetune 0,30
    python benchmarks/supernet_rules.py --rule uniform --steps 300 --finetune 0,30

sandwich: mbsearch's rule (largest on the labels, smallest and two random on its soft predictions);
uniform: single-path one-shot's (four random sub-networks per step, each on the labels), the same four
forward passes per step. The supernet is trained into a temporary folder and removed after scoring.
Results are appended to benchmarks/supernet_rules_results.json with the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import PROXY_FILE, REFERENCE_FILE, bootstrap_tau, machine, panel

import mbsearch.train.supernet as supernet_training
from mbsearch.architecture.decisions import random_decisions
from mbsearch.architecture.space import load_space
from mbsearch.ranking import kendall_tau
from mbsearch.train.budget import Budget
from mbsearch.train.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "supernet_rules_results.json"


def uniform_step(supernet, space, train_split, normalize, index, big, small, draws, budget, optimizer, scaler,
                 params, device, check) -> float:  # fmt: skip
    """Single-path one-shot: as many uniformly drawn sub-networks as the sandwich trains, each on the labels."""
    images = normalize(train_split.images[index]).contiguous(memory_format=torch.channels_last)
    labels = train_split.labels[index]
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros(())
    for width, decisions in [random_decisions(space, draws) for _ in range(supernet_training.RANDOM_PER_STEP + 2)]:
        loss = F.cross_entropy(supernet(images, width, decisions), labels, label_smoothing=budget.label_smoothing)
        loss.backward()
        total = total + loss.detach()
    torch.nn.utils.clip_grad_norm_(params, supernet_training.GRAD_CLIP)
    optimizer.step()
    return float(total.item()) if check else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", choices=["sandwich", "uniform"], default="sandwich")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--finetune", default="0,30", help="fine-tune steps to score with, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rule == "uniform":
        supernet_training._sandwich_step = uniform_step  # the one step that differs; all else is the product's
    space = load_space("v3")
    data = load_dataset("fashion-mnist", val_size=10_000, seed=0)
    budget = Budget(epochs=args.steps / 391, train_size=len(data.train), batch_size=128, lr=0.003)
    identity = supernet_training.SupernetIdentity.of(space, data, None, 10_000, budget, 0)
    folder = Path(tempfile.mkdtemp(prefix="supernet-rules-"))
    try:
        started = time.perf_counter()
        supernet_training.train_supernet(space, data, folder, identity, budget, supernet_training.SupernetTraining(0))
        train_s = time.perf_counter() - started
        trained = supernet_training.open_supernet(space, folder)
        reference = json.loads(REFERENCE_FILE.read_text())["runs"]
        brief_runs = json.loads(PROXY_FILE.read_text())["runs"]
        names = [n for n in panel() if n.startswith("v3-") and f"{n}|ref=1" in reference]
        members = {n: a for n, a in panel().items() if n in names}
        truth = [reference[f"{n}|ref=0"]["accuracy"] for n in names]
        brief = [brief_runs[f"e1-n8k-b64|{n}|seed=0"]["accuracy"] for n in names]
        row = {
            "rule": args.rule,
            "steps": args.steps,
            "train_s": round(train_s),
            "brief_tau": kendall_tau(brief, truth),
        }
        for steps in (int(x) for x in args.finetune.split(",")):
            scores = [supernet_training.score_inherited(
                trained, members[n], data, supernet_training.InheritedScoring(val_images=2000, finetune_steps=steps)
            ) for n in names]  # fmt: skip
            accuracies = [s.accuracy for s in scores]
            row[f"finetune_{steps}"] = {
                "tau": kendall_tau(accuracies, truth),
                "interval": bootstrap_tau(accuracies, truth),
                "mean_accuracy": sum(accuracies) / len(accuracies),
                "seconds": sum(s.seconds for s in scores) / len(scores),
            }
            print(args.rule, args.steps, steps, json.dumps(row[f"finetune_{steps}"]), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    runs = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    runs.append({"date": datetime.date.today().isoformat(), "machine": machine(), "threads": args.threads, **row})
    RESULTS.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
