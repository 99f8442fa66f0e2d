"""Datasets -> in-memory uint8 tensors with fixed, seeded train/validation splits.

The search sees the train and validation splits only; the test split is loaded only by full training
(`mbsearch train`). Images are N x C x H x W uint8, resized once at load time to the input size.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from mbsearch.errors import BadInput
from mbsearch.train.budget import DEFAULT_VAL_SIZE
from mbsearch.train.image_cache import CachedImages, load_folder, print_progress

DATASETS = ("fashion-mnist", "cifar10", "folder")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MAX_IDX_BYTES = 1 << 30  # Fashion-MNIST's largest file inflates to 47 MB
# Float32 bytes resized at a time (input and output of one chunk): the whole set in float32 at 224x224 would
# be ~12 GB, and a fixed 1,000 images was still 1.2 GB at 224 (issue 16), so a chunk is sized in bytes.
_RESIZE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Split:
    """Images (uint8, N x C x H x W) and labels (int64)."""

    images: torch.Tensor
    labels: torch.Tensor
    # Copies on other devices, by (device, count): a process's trials share one copy of the split per GPU.
    _copies: dict[tuple[str, int], Split] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> Split:
        return Split(self.images[:count], self.labels[:count])

    def to(self, device: torch.device, count: int | None = None) -> Split:
        """The split's first `count` images (all by default) on `device`, still uint8 (4x smaller than
        float). Copied once per process and device, then reused by every later trial; the CPU split is
        returned as is. No pinned staging copy: the copy happens once, and pinning would allocate a host
        copy of the whole split (and, in a worker whose GPU is not yet current, a CUDA context on GPU 0)."""
        count = len(self) if count is None else min(count, len(self))
        if device.type == "cpu":
            return self if count == len(self) else self.head(count)
        key = (str(device), count)
        if key not in self._copies:
            self._copies.clear()  # one copy per process: a new budget or device replaces the old one
            part = self.head(count)
            self._copies[key] = Split(part.images.to(device), part.labels.to(device))
        return self._copies[key]


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    num_classes: int
    channels: int
    size: int


def default_data_dir(name: str) -> Path | None:
    return FASHION_MNIST_DIR if name == "fashion-mnist" else None


def _how_to_get(name: str) -> str:
    return {
        "fashion-mnist": "install it with 'apt-get install dataset-fashion-mnist' or pass --data-dir",
        "cifar10": "pass --data-dir pointing at the extracted 'cifar-10-batches-py' folder",
        "folder": "pass --data-dir pointing at a folder with one sub-folder of images per class",
    }[name]


# ---- readers: each returns (train images, train labels, test images, test labels) as numpy ----


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    try:
        if not path.is_file():
            raise ValueError("not a regular file")
        if path.suffix == ".gz":
            with gzip.open(path) as handle:  # bounded: a small .gz may inflate to gigabytes
                raw = handle.read(MAX_IDX_BYTES + 1)
        else:
            raw = path.read_bytes()[: MAX_IDX_BYTES + 1]
        if len(raw) > MAX_IDX_BYTES:
            raise ValueError(f"over {MAX_IDX_BYTES:,} bytes once inflated")
        zero, dtype, dims = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08 or dims != expected_dims:
            raise ValueError("bad IDX header")
        shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"expected {int(np.prod(shape))} values, found {data.size}")
        return data.reshape(shape)
    except (OSError, EOFError, ValueError, struct.error, gzip.BadGzipFile) as exc:
        raise BadInput(f"{path}: corrupt IDX file ({exc}); reinstall the dataset or fix --data-dir") from None


def _read_fashion(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = _FASHION_FILES[split]
    for name in (images_name, labels_name):
        if not (root / name).is_file() and not (root / name.removesuffix(".gz")).is_file():
            raise BadInput(f"{root}: missing {name}; {_how_to_get('fashion-mnist')}")

    def pick(name: str) -> Path:
        return root / name if (root / name).is_file() else root / name.removesuffix(".gz")

    images = _read_idx(pick(images_name), 3)[:, None]
    labels = _read_idx(pick(labels_name), 1).astype(np.int64)
    if len(images) != len(labels):
        raise BadInput(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's batches are pickles: allow only the numpy pieces they hold, never arbitrary code."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise BadInput(f"{path.parent}: missing {path.name}; {_how_to_get('cifar10')}")
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        if len(labels) != len(data) or labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{len(data)} images, {len(labels)} labels in 0-9 expected")
    except Exception as exc:  # any malformed pickle is bad input, whatever it raises
        raise BadInput(
            f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}); {_how_to_get('cifar10')}"
        ) from None
    return data, labels


def _read_cifar(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_read_cifar_batch(root / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _folder_root(root: Path, split: str) -> Path:
    """root/<class>/ (one split), or root/train|val|test/<class>/ (the splits as given)."""
    has_splits = (root / "train").is_dir()
    if split == "test" and not (has_splits and (root / "test").is_dir()):
        raise BadInput(f"{root}: no test/ folder; full training needs root/train/<class>/ and root/test/<class>/")
    return root / split if has_splits else root


def check_test_split(dataset: str, data_dir: Path | None) -> None:
    """Refuse a folder dataset without a test/ folder before anything is decoded (full training needs one)."""
    if dataset == "folder" and data_dir is not None:
        _folder_root(Path(data_dir), "test")


@dataclass(frozen=True)
class FolderReading:
    """How a folder dataset is read: unreadable images skipped (counted) with `skip_bad`, else refused; the
    decoded images kept in (and mapped from) the image cache `cache_dir` (default: the runs folder's)."""

    skip_bad: bool = False
    cache_dir: Path | None = None


def _read_folder(
    root: Path, split: str, size: int, channels: int, folder_reading: FolderReading = FolderReading()
) -> CachedImages:
    """A split of a folder dataset, decoded once into the on-disk cache (image_cache.py) and mapped."""
    folder = _folder_root(root, split)
    cached = load_folder(
        folder, size, channels, folder_reading.cache_dir, skip_bad=folder_reading.skip_bad, on_progress=print_progress()
    )
    if cached.skipped:
        print(f"mbsearch: skipped {cached.skipped} unreadable image(s) in {root} (--skip-bad-images)", file=sys.stderr)
    return cached


def _read(
    name: str,
    root: Path,
    split: str,
    size: int | None,
    channels: int | None,
    folder_reading: FolderReading = FolderReading(),
) -> tuple[np.ndarray, np.ndarray]:
    if name not in DATASETS:
        raise BadInput(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    if not root.is_dir():
        raise BadInput(f"dataset folder not found: {root}; {_how_to_get(name)}")
    if name == "fashion-mnist":
        return _read_fashion(root, split)
    if name == "cifar10":
        return _read_cifar(root, split)
    cached = _read_folder(root, split, size or 32, channels or 3, folder_reading)
    return cached.images, cached.labels


def _to_split(images: np.ndarray, labels: np.ndarray, size: int) -> Split:
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if tensor.shape[-1] != size:
        out = torch.empty((tensor.shape[0], tensor.shape[1], size, size), dtype=torch.uint8)
        per_image = 4 * tensor.shape[1] * (tensor.shape[-1] * tensor.shape[-2] + size * size)
        step = max(1, _RESIZE_BYTES // per_image)
        for start in range(0, len(tensor), step):  # float32 for a chunk only, uint8 for the set
            chunk = tensor[start : start + step].float()
            resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out[start : start + step] = resized.round().clamp(0, 255).to(torch.uint8)
        tensor = out
    return Split(tensor, torch.from_numpy(np.ascontiguousarray(labels)))


def _resolve_root(name: str, data_dir: Path | None) -> Path:
    if name not in DATASETS:
        raise BadInput(
            f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} (any image set works as --dataset folder)"
        )
    root = data_dir or default_data_dir(name)
    if root is None:
        raise BadInput(f"--dataset {name} needs --data-dir; {_how_to_get(name)}")
    return Path(root)


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: Path | None = None,
    input_size: int | None = None,
    channels: int | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
    seed: int = 0,
    folder_reading: FolderReading = FolderReading(),
) -> Dataset:
    """Train and validation splits: a fixed, seeded validation split carved from the training set (a folder
    with a val/ split uses that instead)."""
    root = _resolve_root(name, data_dir)
    if name == "folder" and root.is_dir():
        return _folder_dataset(root, input_size or 32, channels or 3, val_size, seed, folder_reading)
    images, labels = _read(name, root, "train", input_size, channels)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise BadInput(f"{root}: the training data holds a single class; a classifier needs at least 2")
    if labels.min() < 0:
        raise BadInput(f"{root}: negative class labels")
    if not 0 < val_size < len(labels):
        raise BadInput(f"--val-size {val_size} must be between 1 and {len(labels) - 1} (the training set size - 1)")
    size = input_size or images.shape[-1]
    order = np.random.default_rng(seed).permutation(len(labels))
    train, val = order[val_size:], order[:val_size]
    return Dataset(
        name=name,
        train=_to_split(images[train], labels[train], size),
        val=_to_split(images[val], labels[val], size),
        num_classes=int(labels.max()) + 1,
        channels=images.shape[1],
        size=size,
    )


def _folder_dataset(
    root: Path, size: int, channels: int, val_size: int, seed: int, folder_reading: FolderReading
) -> Dataset:
    """A folder dataset, mapped from the image cache: the validation split is val/ where the folder has one,
    else seeded and carved from the training images, laid out once on disk in split order so that both
    splits are slices of one mapped file (never a copy in memory, whatever the dataset's size)."""
    train = _read_folder(root, "train", size, channels, folder_reading)
    if (root / "train").is_dir() and (root / "val").is_dir():
        val = _read_folder(root, "val", size, channels, folder_reading)
        if val.classes != train.classes:
            raise BadInput(f"{root}: val/ and train/ hold different class folders; give both the same classes")
        train_split = Split(torch.from_numpy(train.images), torch.from_numpy(train.labels))
        val_split = Split(torch.from_numpy(val.images), torch.from_numpy(val.labels))
    else:
        count = len(train.labels)
        if not 0 < val_size < count:
            raise BadInput(f"--val-size {val_size} must be between 1 and {count - 1} (the training set size - 1)")
        order = np.random.default_rng(seed).permutation(count)
        images = torch.from_numpy(train.in_split_order(order, f"{seed}"))
        labels = torch.from_numpy(train.labels[order])
        val_split = Split(images[:val_size], labels[:val_size])
        train_split = Split(images[val_size:], labels[val_size:])
    if len(np.unique(train.labels)) < 2:
        raise BadInput(f"{root}: the training data holds a single class; a classifier needs at least 2")
    return Dataset("folder", train_split, val_split, len(train.classes), channels, size)


def load_study_data(settings: dict, data_dir: Path | None, cache_dir: Path | None = None) -> Dataset:
    """The dataset and validation split a study used, from its stored settings (the seed fixes the split).
    `cache_dir` is the study's runs folder's image cache (the search decoded a folder dataset there)."""
    return load_dataset(
        settings["dataset"],
        data_dir,
        settings.get("input_size"),
        settings.get("channels"),
        settings["val_size"],
        settings.get("seed", 0),
        FolderReading(bool(settings.get("skip_bad_images")), cache_dir),
    )


def load_whole_split(
    name: str,
    data_dir: Path | None,
    split: str,
    input_size: int,
    channels: int | None = None,
    folder_reading: FolderReading = FolderReading(),
) -> tuple[Split, int]:
    """A whole split ("train": no validation split carved out; "test": the held-out test split, which only
    full training, `mbsearch train`, reads) and the number of classes in it."""
    root = _resolve_root(name, data_dir)
    images, labels = _read(name, root, split, input_size, channels, folder_reading)
    return _to_split(images, labels, input_size), int(labels.max()) + 1
