"""Folder datasets: real Fashion-MNIST images written as JPEG/PNG/WebP files in class folders, decoded once in
parallel into a mapped cache, reused, rebuilt when the folder changes, and refused or skipped when corrupt."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from mbsearch.errors import BadInput
from mbsearch.train.data import load_dataset
from mbsearch.train.image_cache import META_FILE, load_folder

PER_CLASS = 12


@pytest.fixture
def jpeg_folder(tmp_path):
    """3 classes x 12 real Fashion-MNIST images, upscaled to 48x48 RGB, as JPEG, PNG and WebP files."""
    fashion = load_dataset("fashion-mnist", val_size=1000)
    images, labels = fashion.train.images.numpy(), fashion.train.labels.numpy()
    root = tmp_path / "fashion"
    for label in range(3):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        picks = np.flatnonzero(labels == label)[:PER_CLASS]
        for i, index in enumerate(picks):
            image = Image.fromarray(images[index, 0]).convert("RGB").resize((48, 48), Image.Resampling.BILINEAR)
            image.save(folder / f"{i}.{('jpg', 'png', 'webp')[i % 3]}")
    return root


def test_decoded_once_then_mapped_from_the_cache(jpeg_folder, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = load_folder(jpeg_folder, 32, 3, cache, workers=2)
    assert first.images.shape == (3 * PER_CLASS, 3, 32, 32) and first.images.dtype == np.uint8
    assert isinstance(first.images, np.memmap)  # mapped, not held in memory
    assert list(first.labels) == [c for c in range(3) for _ in range(PER_CLASS)]
    made = (first.folder / META_FILE).stat().st_mtime_ns
    again = load_folder(jpeg_folder, 32, 3, cache, workers=2)
    assert again.folder == first.folder and (again.folder / META_FILE).stat().st_mtime_ns == made  # not decoded again
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))
    grey = load_folder(jpeg_folder, 32, 1, cache, workers=1)  # another size or channel count: its own cache
    assert grey.folder != first.folder and grey.images.shape[1] == 1


def test_a_changed_folder_is_decoded_again_never_read_stale(jpeg_folder, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = load_folder(jpeg_folder, 32, 3, cache, workers=1)
    changed = jpeg_folder / "class0" / "1.png"
    Image.new("RGB", (48, 48), (255, 255, 255)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different modification time, as any edit gives
    second = load_folder(jpeg_folder, 32, 3, cache, workers=1)
    assert second.folder != first.folder
    assert int(np.asarray(second.images[1]).min()) == 255  # the new image, not the cached one


def test_a_corrupt_image_is_named_or_skipped_and_counted(jpeg_folder, tmp_path) -> None:
    bad = jpeg_folder / "class1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    cache = tmp_path / "cache"
    with pytest.raises(BadInput, match=r"broken\.jpg: not a readable image.*--skip-bad-images"):
        load_folder(jpeg_folder, 32, 3, cache, workers=2)
    assert not cache.exists()  # nothing a later run would trust, not even an empty cache folder
    skipped = load_folder(jpeg_folder, 32, 3, cache, skip_bad=True, workers=2)
    assert skipped.skipped == 1 and len(skipped.labels) == 3 * PER_CLASS == skipped.images.shape[0]


def test_seeded_validation_split_is_slices_of_one_mapped_file(jpeg_folder) -> None:
    data = load_dataset("folder", jpeg_folder, input_size=32, channels=3, val_size=6, seed=3)
    assert (len(data.train), len(data.val), data.num_classes, data.size) == (30, 6, 3, 32)
    again = load_dataset("folder", jpeg_folder, input_size=32, channels=3, val_size=6, seed=3)
    assert torch.equal(again.val.images, data.val.images) and torch.equal(again.val.labels, data.val.labels)
    other = load_dataset("folder", jpeg_folder, input_size=32, channels=3, val_size=6, seed=4)
    assert not bool((other.val.labels == data.val.labels).all()) or not bool(
        (other.val.images == data.val.images).all()
    )
    # every image is in exactly one split, with its own label
    pool = load_folder(jpeg_folder, 32, 3)
    keys = {np.asarray(pool.images[i]).tobytes(): int(pool.labels[i]) for i in range(len(pool.labels))}
    for split in (data.train, data.val):
        for image, label in zip(split.images, split.labels, strict=True):
            assert keys[image.numpy().tobytes()] == int(label)


def test_train_val_test_layout_uses_the_given_validation_folder(jpeg_folder, tmp_path) -> None:
    root = tmp_path / "splits"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for folder in jpeg_folder.iterdir():
            (root / split / folder.name).symlink_to(folder, target_is_directory=True)
    data = load_dataset("folder", root, input_size=32, channels=3, val_size=5)
    assert len(data.val) == len(data.train) == 3 * PER_CLASS  # val/ as given, not carved from train/


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from mbsearch.errors import MbsearchError
from mbsearch.train.image_cache import load_folder
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    load_folder(Path(sys.argv[1]), 32, 3, Path(sys.argv[2]), workers=1)
except MbsearchError as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_a_failed_cache_write_is_one_line_and_leaves_nothing_to_trust(jpeg_folder, tmp_path) -> None:
    import subprocess
    import sys

    cache = tmp_path / "cache"
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(jpeg_folder), str(cache)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.startswith("RuntimeFailure: cannot write the image cache") and "free some disk space" in out.stdout
    )
    assert len(out.stdout.strip().splitlines()) == 1
    assert not cache.exists()  # no partial folder, no empty cache a later run would trust
    assert load_folder(jpeg_folder, 32, 3, cache, workers=1).images.shape[0] == 3 * PER_CLASS  # then it works


def test_a_failed_build_never_removes_a_cache_another_process_put_beside_it(jpeg_folder, tmp_path, monkeypatch) -> None:
    """Issue 30: a build that made the cache's parent folder and then failed removed that whole folder, with
    the cache another process had just finished in it."""
    from mbsearch.train import image_cache

    (jpeg_folder / "class0" / "0.jpg").write_bytes(b"not an image")
    cache = tmp_path / "new-cache"
    real = image_cache._decoded

    def another_process_finishes_first(*args, **kwargs):
        (cache / "other-study-cache").mkdir(parents=True)
        (cache / "other-study-cache" / META_FILE).write_text("{}")
        yield from real(*args, **kwargs)

    monkeypatch.setattr(image_cache, "_decoded", another_process_finishes_first)
    with pytest.raises(BadInput):
        load_folder(jpeg_folder, 16, 1, cache)
    assert (cache / "other-study-cache" / META_FILE).is_file()
