"""The one place a target flag becomes a Target: local, remote (an agent) or predicted (a lookup table).

It sits above the three kinds, so none of them imports another's module to be opened.
"""

from __future__ import annotations

from pathlib import Path

from mbsearch.errors import BadInput
from mbsearch.latency.lut import LookupTable
from mbsearch.latency.remote import RemoteTarget
from mbsearch.latency.targets import LocalTarget, Target, is_remote


def open_target(
    name: str,
    runtime: str = "onnxruntime",
    threads: int = 1,
    token: str | None = None,
    lut: Path | None = None,
    gpu: int = 0,
) -> Target:
    """The target a flag names; refuses an unknown, unavailable or unreachable one before any work is done.
    `gpu` is the GPU a local `cuda` target times on (the worker's training GPU)."""
    if name == "predicted" or lut is not None:
        if lut is None:
            raise BadInput("--latency predicted needs --lut FILE (made by 'mbsearch profile')")
        return LookupTable.load(lut)
    if is_remote(name):
        if runtime != "onnxruntime":
            raise BadInput(f"--target {name}: an agent times ONNX models; use --runtime onnxruntime")
        return RemoteTarget(name, token)
    return LocalTarget(name, runtime, threads, gpu)
