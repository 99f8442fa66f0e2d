from __future__ import annotations

import gzip
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from mbsearch.errors import BadInput
from mbsearch.train.data import FASHION_MNIST_DIR, load_dataset, load_whole_split


def test_fashion_mnist_splits_are_fixed_disjoint_and_uint8() -> None:
    a = load_dataset("fashion-mnist", val_size=1000, seed=0)
    b = load_dataset("fashion-mnist", val_size=1000, seed=0)
    assert a.train.images.dtype.is_floating_point is False and a.train.images.shape[1:] == (1, 28, 28)
    assert len(a.train) == 59000 and len(a.val) == 1000 and a.num_classes == 10
    assert (a.val.labels == b.val.labels).all() and (a.val.images == b.val.images).all()
    # The validation images are carved from the training set and not repeated in the train split.
    val_rows = {bytes(x.flatten().tolist()) for x in a.val.images[:200]}
    train_rows = {bytes(x.flatten().tolist()) for x in a.train.images[:20000]}
    assert len(val_rows & train_rows) < 5  # Fashion-MNIST has a few duplicate images, not more


def test_resize_on_load() -> None:
    data = load_dataset("fashion-mnist", input_size=32, val_size=100)
    assert data.train.images.shape[-2:] == (32, 32) and data.size == 32


def test_test_split_is_separate() -> None:
    test = load_whole_split("fashion-mnist", None, "test", 28)[0]
    assert len(test) == 10000


def test_missing_directory_says_how_to_get_it(tmp_path) -> None:
    with pytest.raises(BadInput, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "nope")
    with pytest.raises(BadInput, match="missing train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", tmp_path)
    with pytest.raises(BadInput, match="needs --data-dir"):
        load_dataset("cifar10")


def test_corrupt_idx_file_is_bad_input(tmp_path) -> None:
    for name in FASHION_MNIST_DIR.iterdir():
        shutil.copy(name, tmp_path / name.name)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    with pytest.raises(BadInput, match="corrupt IDX file"):
        load_dataset("fashion-mnist", tmp_path)


def _cifar_batch(path, count: int, seed: int, classes: int = 10) -> None:
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"labels": [int(x) for x in rng.integers(0, classes, count)],
    }
    path.write_bytes(pickle.dumps(batch))


def test_cifar10_python_batches(tmp_path) -> None:
    for index in range(1, 6):
        _cifar_batch(tmp_path / f"data_batch_{index}", 20, index)
    _cifar_batch(tmp_path / "test_batch", 20, 9)
    data = load_dataset("cifar10", tmp_path, val_size=10)
    assert data.train.images.shape == (90, 3, 32, 32) and data.channels == 3
    assert len(load_whole_split("cifar10", tmp_path, "test", 32)[0]) == 20


def test_cifar10_refuses_pickles_that_run_code(tmp_path) -> None:
    for index in range(1, 6):
        _cifar_batch(tmp_path / f"data_batch_{index}", 20, index)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(BadInput, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path)


def _image_folder(root, classes: int, per_class: int = 6) -> None:
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((40, 30, 3), 40 * c + i, dtype=np.uint8)).save(folder / f"{i}.png")


def test_image_folder_dataset_resizes_and_labels_by_folder(tmp_path) -> None:
    _image_folder(tmp_path, 3)
    data = load_dataset("folder", tmp_path, input_size=24, channels=3, val_size=3)
    assert data.train.images.shape == (15, 3, 24, 24) and data.num_classes == 3


def test_image_folder_errors(tmp_path) -> None:
    _image_folder(tmp_path / "one", 1)
    with pytest.raises(BadInput, match="need at least 2"):
        load_dataset("folder", tmp_path / "one", input_size=24)
    _image_folder(tmp_path / "bad", 2)
    (tmp_path / "bad" / "class0" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(BadInput, match="not a readable image"):
        load_dataset("folder", tmp_path / "bad", input_size=24)
    with pytest.raises(BadInput, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)
