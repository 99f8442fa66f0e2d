"""`mbsearch profile` as one library call: check the outputs, open the target, time every part of a space
into a lookup table (resumable from OUTPUT.partial), calibrate, write it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mbsearch.architecture.space import load_space
from mbsearch.files import check_outputs
from mbsearch.latency.factory import open_target
from mbsearch.latency.lut import LookupTable, profile, sampled_parts, space_parts


def profile_to_file(
    space: str,
    target: str,
    token: str | None,
    threads: int,
    input_size: int,
    channels: int,
    classes: int,
    calibrate: int,
    seed: int,
    output: Path,
    on_event: Callable[[str], None],
    adaptive: int = 0,
    sample: int = 0,
    precision: str = "fp32",
) -> LookupTable:
    """Build the lookup table of `space` on `target` and write it to `output`; every output is checked first,
    and an interrupted run resumes from OUTPUT.partial. Timing runs single-threaded in torch (restored).
    With `precision` int8 every timed graph is quantized first (the search's int8 recipe)."""
    partial = output.with_name(output.name + ".partial")
    space_file = Path(space) if space.endswith((".yaml", ".yml")) or "/" in space else None
    check_outputs(
        {"--output": output, "--output's resume file": partial},
        inputs={"the --space file": space_file},
        kinds={"--output": "json:mbsearch.latency.lut/", "--output's resume file": "json:"},
    )
    search_space = load_space(space)
    device = open_target(target, "onnxruntime", threads, token)
    info = device.device()
    count = len(sampled_parts(space_parts(search_space, input_size, channels, classes), sample, seed))
    on_event(
        f"profiling {count} {precision} parts of space {search_space.name} at {channels}x{input_size}x{input_size} on "
        f"{device.name} (device {info['fingerprint']}: {info['cpu']}, {info['cores']} core(s), "
        f"{info['threads']} thread(s)), in context; then {adaptive} adaptive part(s) and {calibrate} calibration "
        "network(s)"
    )
    shown = {"part": 0, "adaptive part": 0, "calibration network": 0}

    def progress(what: str, done: int, total: int) -> None:
        if done == total or done - shown[what] >= max(1, total // 10):
            shown[what] = done
            on_event(f"{what}s: {done}/{total}")

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = profile(
            search_space,
            device,
            input_size,
            channels,
            classes,
            calibrate,
            seed,
            partial,
            progress,
            adaptive,
            sample,
            precision,
        )
    finally:
        torch.set_num_threads(previous_threads)
    table.save(output)
    partial.unlink(missing_ok=True)
    return table
