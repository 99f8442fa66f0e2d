"""A folder of images, decoded once: in parallel, resized to the input size, into a uint8 array on disk that
every later command and worker on the host maps instead of decoding again.

The cache is keyed by the folder's file list (paths, sizes, modification times), the input size, the channels
and the decoder's version, so a changed folder is decoded again, never read stale. It is written into a
private folder and renamed into place once complete: an interrupted or failed write (a full disk) leaves
nothing a later run would trust. Memory stays bounded: images go from the decoding processes straight into
the mapped file, a chunk at a time, and readers map it (pages are read on demand).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbsearch.errors import BadInput, RuntimeFailure

DECODER_VERSION = 1  # bump when decoding or resizing changes: old caches are then never read
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CHUNK = 256  # images per task of a decoding process: its memory is CHUNK x one image
IMAGES_FILE, LABELS_FILE, META_FILE = "images.u8", "labels.npy", "meta.json"


@dataclass(frozen=True)
class CachedImages:
    """A decoded folder: images (N x C x H x W uint8, memory-mapped copy-on-write: the file never changes),
    labels, class names, and the cache folder it lives in."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    skipped: int  # unreadable images left out (with --skip-bad-images)
    folder: Path

    def in_split_order(self, order: np.ndarray, tag: str) -> np.ndarray:
        """The images reordered by `order`, as one more mapped file beside the cache (made once, chunk by
        chunk), so that a seeded validation split is two contiguous slices and never a copy in memory."""
        path = self.folder / f"order-{tag}.u8"
        if not path.is_file():
            partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
            image_bytes = int(np.prod(self.images.shape[1:]))
            try:
                # Read with pread and write sequentially: neither file is mapped while it is made, so memory
                # stays one chunk whatever the dataset's size.
                with open(self.folder / IMAGES_FILE, "rb") as source, open(partial, "wb") as target:
                    for start in range(0, len(order), 4 * CHUNK):
                        rows = order[start : start + 4 * CHUNK]
                        chunk = b"".join(os.pread(source.fileno(), image_bytes, int(row) * image_bytes) for row in rows)
                        target.write(chunk)
                partial.rename(path)
            except OSError as exc:
                partial.unlink(missing_ok=True)
                raise _write_failure(self.folder, exc) from None
        return np.memmap(path, dtype=np.uint8, mode="c", shape=self.images.shape)


def default_cache_dir(runs_dir: Path = Path("runs")) -> Path:
    """Where decoded folder datasets are kept: $MBSEARCH_IMAGE_CACHE, else RUNS_DIR/image-cache (shared by
    every command and worker that uses the runs folder)."""
    return Path(os.environ.get("MBSEARCH_IMAGE_CACHE") or runs_dir / "image-cache")


def list_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folders) and (file, label) pairs in a stable order."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) < 2:
        raise BadInput(f"{root}: found {len(classes)} class folder(s), need at least 2 (one sub-folder per class)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not file.is_file():  # a FIFO or a device would block or never end
                raise BadInput(f"{file}: not a regular file; remove it from the dataset folder")
            files.append((file, label))
    if not files:
        raise BadInput(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes, files


def cache_key(root: Path, files: list[tuple[Path, int]], size: int, channels: int, skip_bad: bool) -> str:
    digest = hashlib.sha256(f"v{DECODER_VERSION}|{size}|{channels}|{skip_bad}".encode())
    for file, label in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def load_folder(
    root: Path,
    size: int,
    channels: int,
    cache_dir: Path | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> CachedImages:
    """The images of `root` (root/<class>/<image>) at size x size, from the cache, decoded into it first if
    needed. A corrupt image is refused with one line naming it, or skipped and counted with `skip_bad`."""
    classes, files = list_images(root)
    folder = (cache_dir or default_cache_dir()) / cache_key(root, files, size, channels, skip_bad)
    if not (folder / META_FILE).is_file():
        _build(folder, files, size, channels, skip_bad, workers, on_progress)
    meta = json.loads((folder / META_FILE).read_text())
    count = int(meta["count"])
    images = np.memmap(folder / IMAGES_FILE, dtype=np.uint8, mode="c", shape=(count, channels, size, size))
    return CachedImages(images, np.load(folder / LABELS_FILE), classes, int(meta["skipped"]), folder)


def _build(
    folder: Path,
    files: list[tuple[Path, int]],
    size: int,
    channels: int,
    skip_bad: bool,
    workers: int | None,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Decode into a private folder, then rename it into place (atomic: a reader sees all of it or none)."""
    created_parent = not folder.parent.exists()
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        labels = np.empty(len(files), dtype=np.int64)
        kept = skipped = done = 0
        # Plain sequential writes, not a writable mapping: written pages then never count in this process's
        # memory (a mapping kept every written page resident: 4 GB for 70,000 images at 96x96).
        with open(partial / IMAGES_FILE, "wb") as handle:
            for chunk_images, chunk_labels, bad in _decoded(files, size, channels, workers):
                if bad and not skip_bad:
                    raise BadInput(f"{bad[0][0]}: {bad[0][1]}")
                skipped += len(bad)
                handle.write(np.ascontiguousarray(chunk_images).tobytes())
                labels[kept : kept + len(chunk_images)] = chunk_labels
                kept += len(chunk_images)
                done += len(chunk_images) + len(bad)
                if on_progress:
                    on_progress(done, len(files))
        if kept == 0:
            raise BadInput(f"{files[0][0].parent.parent}: none of its {len(files)} images could be read")
        np.save(partial / LABELS_FILE, labels[:kept])
        meta = {"count": kept, "skipped": skipped, "size": size, "channels": channels, "version": DECODER_VERSION}
        (partial / META_FILE).write_text(json.dumps(meta))  # last: its presence says the cache is whole
        try:
            partial.rename(folder)
        except OSError:
            if not (folder / META_FILE).is_file():  # another process finished the same cache first: fine
                raise
    except OSError as exc:
        raise _write_failure(folder.parent, exc) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if created_parent and not (folder / META_FILE).is_file():
            # A refused folder leaves no empty cache behind; but never a tree: another process may have put
            # its own cache in this parent since we made it (rmdir removes an empty folder only).
            with contextlib.suppress(OSError):
                folder.parent.rmdir()


def _write_failure(folder: Path, exc: OSError) -> RuntimeFailure:
    """A full disk (or any failed write) while making the cache, as one line with the way out."""
    return RuntimeFailure(
        f"cannot write the image cache in {folder}: {exc.strerror or exc}; free some disk space or "
        "set MBSEARCH_IMAGE_CACHE to another folder"
    )


def _decoded(
    files: list[tuple[Path, int]], size: int, channels: int, workers: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]]:
    """Chunks of decoded images in file order, from a pool of processes (one per core)."""
    chunks = [files[start : start + CHUNK] for start in range(0, len(files), CHUNK)]
    jobs = [([str(f) for f, _ in chunk], [label for _, label in chunk], size, channels) for chunk in chunks]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(chunks) == 1:
        yield from map(_decode_chunk, jobs)
        return
    import multiprocessing

    # spawn, not fork: the caller may hold torch's thread pools
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_decode_chunk, jobs)


def _decode_chunk(
    job: tuple[list[str], list[int], int, int],
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode, convert and resize a chunk of images (in a pool process); unreadable ones are named."""
    from PIL import Image, UnidentifiedImageError

    paths, labels, size, channels = job
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    kept: list[int] = []
    bad: list[tuple[str, str]] = []  # (file, why)
    for path, label in zip(paths, labels, strict=True):
        try:
            with Image.open(path) as image:
                image.draft(mode, (size, size))  # JPEG: decode at a reduced scale when far larger than needed
                array = np.asarray(image.convert(mode).resize((size, size), Image.Resampling.BILINEAR), np.uint8)
        except Image.DecompressionBombError:
            pixels = 2 * Image.MAX_IMAGE_PIXELS
            bad.append((path, f"declares over {pixels:,} pixels (a decompression bomb?); remove it"))
            continue
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            bad.append((path, "not a readable image; remove it, fix it, or pass --skip-bad-images"))
            continue
        out[len(kept)] = array[None] if channels == 1 else array.transpose(2, 0, 1)
        kept.append(label)
    return out[: len(kept)], np.asarray(kept, dtype=np.int64), bad


def print_progress(stream=sys.stderr) -> Callable[[int, int], None]:
    """A decoding progress line on a terminal's stderr (every tenth), for a first load that takes a while;
    nothing in a pipe or a log, where a refusal stays one line."""
    shown = {"done": 0}

    def show(done: int, total: int) -> None:
        if not stream.isatty():
            return
        if done == total or done - shown["done"] >= max(1, total // 10):
            shown["done"] = done
            print(f"decoding images: {done}/{total}", file=stream, flush=True)

    return show
