"""Folder datasets at deployment resolutions: load time, peak memory and training throughput.

    python benchmarks/data.py make --size 96            # Fashion-MNIST as 70,000 JPEGs, 96x96 RGB, in class folders
    python benchmarks/data.py measure --size 96 --images 7000 70000

`make` writes Fashion-MNIST's 60,000 training and 10,000 test images, upscaled (bilinear) to SIZE x SIZE RGB,
as JPEG files (quality 90) in DIR/<class>/, and a subset folder per --images count (the first images of every
class, as links). `measure` then, for each count, in fresh processes:
- first load: `load_dataset` with an empty image cache (parallel decode into the cache), wall time and peak RSS;
- cached load: the same call again (the cache mapped), wall time and peak RSS;
- `mbsearch run` of 1 trial (train size 2,000, 1 epoch, --device auto) from a cold cache (it decodes the folder
  itself): peak RSS of the whole command (`/usr/bin/time -v`'s maximum resident set size, the largest of the
  command and its decoding processes) and the candidate's training images per second.
Results go to benchmarks/data_results.json, with the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "data_results.json"
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "mbsearch-bench-data"


def _write_class(job: tuple[Path, int, np.ndarray, int, int]) -> int:
    from PIL import Image

    folder, _label, images, size, offset = job
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        picture = Image.fromarray(image[0]).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        picture.save(folder / f"{offset + i:05d}.jpg", quality=90)
    return len(images)


def make(root: Path, size: int, counts: list[int]) -> None:
    """All 70,000 Fashion-MNIST images as JPEGs, and subset folders of links."""
    from mbsearch.train.data import FASHION_MNIST_DIR, _read_fashion

    full = root / f"fmnist{size}-70000"
    if not full.is_dir():
        parts = [_read_fashion(FASHION_MNIST_DIR, split) for split in ("train", "test")]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        jobs = []
        for label in range(10):
            chosen = images[labels == label]
            for start in range(0, len(chosen), 1000):
                jobs.append((full / f"class{label}", label, chosen[start : start + 1000], size, start))
        started = time.perf_counter()
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            written = sum(pool.map(_write_class, jobs))
        print(f"wrote {written} JPEGs to {full} in {time.perf_counter() - started:.0f} s", flush=True)
    for count in counts:
        subset = root / f"fmnist{size}-{count}"
        if count >= 70000 or subset.is_dir():
            continue
        for folder in sorted(full.iterdir()):
            (subset / folder.name).mkdir(parents=True)
            for file in sorted(folder.iterdir())[: count // 10]:
                (subset / folder.name / file.name).symlink_to(file)


LOAD = """
import json, resource, sys, time
from pathlib import Path
from mbsearch.train.data import load_dataset
started = time.perf_counter()
data = load_dataset("folder", Path(sys.argv[1]), input_size=int(sys.argv[2]), channels=3, val_size=1000)
seconds = time.perf_counter() - started
peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": peak // 1024, "train": len(data.train)}))
"""


def _load(folder: Path, size: int, cache: Path) -> dict:
    env = os.environ | {"MBSEARCH_IMAGE_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", LOAD, str(folder), str(size)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(folder: Path, size: int, runs: Path) -> dict:
    """`mbsearch run` of one trial under /usr/bin/time -v: peak RSS of the command, and training throughput."""
    command = [
        "/usr/bin/time", "-v", sys.executable, "-m", "mbsearch", "run", "--dataset", "folder",
        "--data-dir", str(folder), "--input-size", str(size), "--channels", "3", "--trials", "1",
        "--train-size", "2000", "--val-size", "1000", "--device", "auto", "--runs-dir", str(runs), "--study", "bench",
    ]  # fmt: skip
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(out.stdout + out.stderr)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    trials = (runs / "bench" / "trials.csv").read_text().splitlines()
    header, row = trials[0].split(","), trials[1].split(",")
    train_seconds = float(row[header.index("train_seconds")])
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": peak_kb // 1024,
        "train_images_per_s": round(2000 / train_seconds, 1),
    }


def measure(root: Path, size: int, counts: list[int]) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
    for count in counts:
        folder = root / f"fmnist{size}-{count}"
        with tempfile.TemporaryDirectory() as scratch:
            cache = Path(scratch) / "cache"
            first = _load(folder, size, cache)
            cached = _load(folder, size, cache)
            runs = Path(scratch) / "runs"
            runs.mkdir()
            search = _run(folder, size, runs)  # a cold cache: the run decodes the folder itself
        row = {
            "images": count, "size": size, "first_load": first, "cached_load": cached, "run": search,
            "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores",
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        results["runs"].append(row)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["make", "measure"])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, nargs="+", default=[7000, 70000])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args()
    if args.step == "make":
        make(args.root, args.size, args.images)
    else:
        measure(args.root, args.size, args.images)


if __name__ == "__main__":
    main()
