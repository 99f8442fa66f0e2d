"""A corpus of malformed inputs. Each gets one line on stderr naming the problem, exit 2 for bad input
(1 for a runtime failure such as an unreachable server), no traceback, and nothing written."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mbsearch.architecture.space import SPACES_DIR
from mbsearch.architecture.zoo import reference_arch
from mbsearch.cli.app import app
from mbsearch.train.data import FASHION_MNIST_DIR

TINY = ["--train-size", "64", "--val-size", "64", "--epochs", "0.1", "--trials", "1"]


def space_file(old: str, new: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        text = (SPACES_DIR / "v3.yaml").read_text()
        assert old in text
        path = tmp / "space.yaml"
        path.write_text(text.replace(old, new))
        return ["run", "--space", str(path)]

    return make


def huge_space(tmp: Path) -> list[str]:
    path = tmp / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # 100 MB (sparse): refused by size, never read
    return ["run", "--space", str(path)]


def arch_file(change: Callable[[dict], object], command: str = "show") -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        data = reference_arch("mobilenet_v3_small", 28, 1, 10).to_dict()
        change(data)
        path = tmp / "arch.json"
        path.write_text(json.dumps(data))
        return [command, str(path)]

    return make


def arch_text(text: str, command: str = "show") -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        path = tmp / "arch.json"
        path.write_text(text)
        return [command, str(path)]

    return make


def flags(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", *args]


def fashion_copy(breaker: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        folder = tmp / "fashion"
        shutil.copytree(FASHION_MNIST_DIR, folder)
        breaker(folder)
        return ["run", "--data-dir", str(folder)]

    return make


def one_class_folder(tmp: Path) -> list[str]:
    folder = tmp / "images" / "only"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return ["run", "--dataset", "folder", "--data-dir", str(tmp / "images"), "--input-size", "16"]


def corrupt_sqlite(tmp: Path) -> list[str]:
    study = tmp / "runs" / "broken"
    study.mkdir(parents=True)
    (study / "study.db").write_bytes(b"this is not a database" * 100)
    return ["run", "--study", "broken"]


def read_only_runs_dir(tmp: Path) -> list[str]:
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new folders to everyone
        return ["run", "--runs-dir", "/proc/mbsearch-runs"]
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return ["run", "--runs-dir", str(folder / "runs")]


def _gz_bomb(folder: Path) -> None:
    """A small .gz that inflates past the reader's bound (written in chunks, never held whole)."""
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as handle:
        handle.write(b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        chunk = bytes(1 << 24)
        for _ in range(65):  # 1.09 GB of zeros, about 1 MB compressed
            handle.write(chunk)


def _fifo_folder(tmp: Path) -> list[str]:
    for name in ("a", "b"):
        (tmp / "images" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp / "images" / name / "0.png")
    os.mkfifo(tmp / "images" / "a" / "1.png")
    return ["run", "--dataset", "folder", "--data-dir", str(tmp / "images"), "--input-size", "16"]


def _cache_folder(tmp: Path) -> list[str]:
    (tmp / "runs" / "latency-cache.sqlite").mkdir(parents=True)
    return ["run"]


def blocks(count: int) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["blocks"] = [data["blocks"][0]] * count

    return change


CASES = {
    # space files
    "space missing key": (
        space_file("head: {conv: 576, hidden: 1024, act: hswish, dropout: 0.2}", ""),
        "head: missing required key",
    ),
    "space unknown block type": (space_file("block: [ir, ds]", "block: [ir, mb]"), "Input should be 'ir' or 'ds'"),
    "space even kernel": (space_file("kernel: [3, 5, 7]", "kernel: [3, 4]"), "kernel must be odd"),
    "space zero kernel": (space_file("kernel: [3, 5, 7]", "kernel: [0]"), "kernel must be odd"),
    "space expansion 0": (space_file("expand: [1, 3, 4, 6]", "expand: [0]"), "greater than or equal to 1"),
    "space negative channels": (space_file("{out: 40, stride: 2}", "{out: -40, stride: 2}"), "stages[2].out"),
    "space stride 3": (space_file("{out: 40, stride: 2}", "{out: 40, stride: 3}"), "Input should be 1 or 2"),
    "space wrong type": (space_file("depth: [1, 2, 3, 4]", "depth: four"), "choices.depth"),
    "space empty choice list": (space_file("act: [relu, hswish]", "act: []"), "choices.act"),
    "space syntax error": (space_file("choices:", "choices: [[["), "YAML syntax error"),
    "space 100 MB file": (huge_space, "over the 1,000,000 byte limit"),
    "space unknown name": (lambda tmp: ["run", "--space", "v7"], "unknown space 'v7'"),
    # arch JSON
    "arch missing key": (arch_file(lambda d: d.pop("stem")), "stem: missing required key"),
    "arch unknown block type": (arch_file(lambda d: d["blocks"][1].update(type="fused")), "blocks[1].type"),
    "arch even kernel": (arch_file(lambda d: d["blocks"][2].update(kernel=2), "train"), "kernel must be odd"),
    "arch zero kernel": (arch_file(lambda d: d["blocks"][2].update(kernel=0), "measure"), "kernel must be odd"),
    "arch expansion 0": (arch_file(lambda d: d["blocks"][2].update(expand=0)), "blocks[2].expand"),
    "arch negative channels": (arch_file(lambda d: d["blocks"][0].update(out=-16)), "blocks[0].out"),
    "arch stride 3": (arch_file(lambda d: d["stem"].update(stride=3)), "stem.stride: Input should be 1 or 2"),
    "arch wrong type": (arch_file(lambda d: d["blocks"][0].update(out="16")), "blocks[0].out"),
    "arch unknown key": (arch_file(lambda d: d.update(extra=1)), "extra: unknown key"),
    "arch truncated JSON": (arch_text('{"format": "mbsearch.spec.arch/1", "blocks": [{"type"'), "invalid JSON"),
    "arch wrong format version": (arch_file(lambda d: d.update(format="mbsearch.spec.arch/9")), "unsupported version"),
    "arch 10,000 blocks": (arch_file(blocks(10_000)), "10000 blocks, over the limit of 256"),
    "arch no blocks": (arch_file(blocks(0)), "blocks"),
    "arch not an object": (arch_text("[1, 2, 3]", "train"), "must be a JSON object"),
    # CLI flags
    "negative --trials": (flags("--trials", "-1"), "--trials"),
    "unknown target": (flags("--target", "tpu"), "unknown target 'tpu'"),
    "unknown runtime": (flags("--runtime", "tensorrt"), "unknown runtime 'tensorrt'"),
    "unknown sampler": (flags("--sampler", "grid"), "--sampler"),
    "--threads 0": (flags("--threads", "0"), "--threads"),
    "--epochs -1": (flags("--epochs", "-1"), "--epochs"),
    "--max-latency 0": (flags("--max-latency", "0"), "--max-latency"),
    "mnas without target": (flags("--objective", "mnas"), "--latency-target"),
    "bad study name": (flags("--study", "../escape"), "--study"),
    # datasets
    "dataset missing directory": (lambda tmp: ["run", "--data-dir", str(tmp / "absent")], "dataset folder not found"),
    "dataset wrong layout": (lambda tmp: ["run", "--data-dir", str(tmp)], "missing train-images-idx3-ubyte.gz"),
    "dataset corrupt IDX": (
        fashion_copy(lambda f: (f / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08"))),
        "corrupt IDX file",
    ),
    "dataset single class": (one_class_folder, "need at least 2"),
    "dataset unknown": (flags("--dataset", "imagenet", "--data-dir", "/tmp"), "unknown dataset 'imagenet'"),
    # storage
    "storage corrupt SQLite file": (corrupt_sqlite, "not a usable SQLite study database"),
    "storage read-only directory": (read_only_runs_dir, "cannot create"),
    "storage unsupported URL": (flags("--storage", "redis://127.0.0.1/0"), "unsupported storage URL"),
    # found from outside (issue 8): one case of ours for each defect
    "mnas w not a number": (flags("--objective", "mnas", "--latency-target", "1", "--mnas-w", "nan"), "--mnas-w"),
    "seed beyond 32 bits": (flags("--seed", str(2**40)), "--seed"),
    "negative seed": (flags("--seed", "-3"), "--seed"),
    "heartbeat of years": (flags("--heartbeat", "99999999", "--grace-period", "999999999"), "--heartbeat"),
    "two channels": (flags("--dataset", "folder", "--data-dir", "/tmp", "--channels", "2"), "--channels"),
    "dataset imagenet without folder": (flags("--dataset", "imagenet"), "unknown dataset 'imagenet'"),
    "space duplicate key": (space_file("choices:", "width: [0.5]\nchoices:"), "given twice"),
    "space nested 5,000 deep": (space_file("kernel: [3, 5, 7]", "kernel: " + "[" * 5000 + "]" * 5000), "nested"),
    "arch 5,000-digit integer": (arch_text('{"num_classes": ' + "9" * 5000 + "}"), "digits"),
    "arch with a BOM": (arch_text("\ufeff[1]"), "must be a JSON object"),
    "arch of 4.6e9 params": (
        arch_file(lambda d: [b.update(out=16384, expand=16) for b in d["blocks"]]),
        "parameters, over the",
    ),
    "dataset gz bomb": (fashion_copy(_gz_bomb), "once inflated"),
    "dataset FIFO image": (_fifo_folder, "not a regular file"),
    "latency cache is a folder": (_cache_folder, "latency cache"),
    "measure 300 threads": (lambda tmp: ["measure", "mobilenet_v3_small", "--threads", "300"], "--threads"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_line_and_exit_2_and_writes_nothing(runner, tmp_path, monkeypatch, case: str) -> None:
    monkeypatch.chdir(tmp_path)
    make, expected = CASES[case]
    args = make(tmp_path)
    if args[0] == "run" and "--runs-dir" not in args:
        args += ["--runs-dir", str(tmp_path / "runs")]
    before = {p for p in (tmp_path / "runs").rglob("*")} if (tmp_path / "runs").exists() else set()
    # The tiny budget goes first so that a case's own flag (the last one given) wins.
    result = runner.invoke(app, [args[0], *TINY, *args[1:]] if args[0] == "run" else args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mbsearch: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    after = {p for p in (tmp_path / "runs").rglob("*")} if (tmp_path / "runs").exists() else set()
    assert after == before  # no half-created run folder or study
    assert not list(tmp_path.glob("*-trained"))


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_a_study_that_cannot_be_written_is_one_clear_line(runner, tiny_study, tmp_path) -> None:
    """Issue 35: a study.db that cannot be written (immutable here; read-only for another user) ended in
    "internal error: StorageInternalError". It is an expected event: one line that says what to check."""
    import shutil
    import subprocess

    runs, name, _ = tiny_study
    copy = tmp_path / "runs"
    shutil.copytree(runs / name, copy / name)
    database = copy / name / "study.db"
    if subprocess.run(["chattr", "+i", str(database)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        result = runner.invoke(app, ["run", "--study", name, "--runs-dir", str(copy), "--trials", "8",
                                     "--sampler", "random", "--train-size", "256", "--val-size", "256",
                                     "--epochs", "0.5", "--train-threads", "1"])  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True)
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "internal error" not in line
    assert "storage could not be written" in line and "readonly database" in line


def test_a_disk_that_fills_in_the_first_trial_leaves_nothing_made(tmp_path) -> None:
    """Issue 35: a disk that filled during the first trial ended in one line but left the study folder, its
    artifacts folder and the latency cache behind. Nothing of a study without a complete trial is kept."""
    import subprocess
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    # 136 KB: room for a new study's SQLite file (112 KB) but not for the first trial's writes beside it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=136k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mbsearch", "run", "--trials", "1", "--runs-dir", str(disk / "runs"), "--study",
             "s", "--sampler", "random", "--train-size", "256", "--val-size", "256", "--epochs", "0.5",
             "--train-threads", "1"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        left = sorted(str(path.relative_to(disk)) for path in disk.rglob("*") if path.is_file())
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert result.returncode == 1, (result.returncode, result.stderr)
    line = result.stderr.strip()
    assert "\n" not in line and "internal error" not in line and "Traceback" not in line, line
    assert "could not be written" in line or "disk" in line, line
    assert left == [], left
