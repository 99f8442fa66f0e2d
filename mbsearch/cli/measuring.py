"""The commands that time networks on a device: `measure`, `profile`, `agent`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mbsearch.cli.flags import (
    AgentPrecision,
    Classes,
    LatencyInputSize,
    Precision,
    PrecisionChoice,
    TargetToken,
    is_loopback,
)
from mbsearch.cli.output import console, printable
from mbsearch.errors import BadInput


def load_arch_or_reference(name_or_path: str, input_size: int | None, channels: int | None, classes: int | None):
    from mbsearch.architecture.arch import load_arch
    from mbsearch.architecture.zoo import reference_arch, reference_names

    if name_or_path in reference_names():
        return reference_arch(name_or_path, input_size or 224, channels or 3, classes or 1000)
    if not Path(name_or_path).exists():
        raise BadInput(f"{name_or_path!r} is neither a file nor a reference ({', '.join(reference_names())})")
    if input_size or channels or classes:
        raise BadInput("--input-size/--channels/--classes apply to reference names only; edit the arch file instead")
    return load_arch(name_or_path)


def measure(
    arch: Annotated[str, typer.Argument(help="Arch JSON file or a reference name.")],
    target: Annotated[str, typer.Option(help="cpu, cuda, or http://HOST:PORT of 'mbsearch agent'.")] = "cpu",
    runtime: Annotated[str, typer.Option(help="onnxruntime or torch.")] = "onnxruntime",
    threads: Annotated[int, typer.Option(min=1, max=256, help="Threads for inference (local targets).")] = 1,
    runs: Annotated[
        int | None, typer.Option(min=5, max=10_000, help="Timed runs per turn (default: the search's recipe).")
    ] = None,
    target_token: TargetToken = None,
    latency_input_size: LatencyInputSize = None,
    precision: Precision = PrecisionChoice.fp32,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Time batch-1 inference of an architecture on a target and print latency statistics."""
    from dataclasses import asdict

    from mbsearch.latency.factory import open_target
    from mbsearch.latency.profiler import latency_of
    from mbsearch.latency.targets import check_target_precision

    if precision == PrecisionChoice.int8 and runtime != "onnxruntime":
        raise BadInput("--precision int8 is ONNX Runtime's quantization: use --runtime onnxruntime")
    device = open_target(target, runtime, threads, target_token)
    check_target_precision(device, precision.value)
    spec = load_arch_or_reference(arch, None, None, None).at_resolution(latency_input_size)
    stats = latency_of(spec, device, runs=runs, precision=precision.value)
    info = device.device()
    if as_json:
        sys.stdout.write(json.dumps(asdict(stats) | {"precision": precision.value, "device": info}) + "\n")
        return
    console.print(
        f"{printable(spec.name or arch)} at {spec.input.size}x{spec.input.size}: median {stats.median_ms:.3f} ms, "
        f"IQR {stats.iqr_ms:.3f} ms ({stats.relative_iqr:.1%}), mean {stats.mean_ms:.3f} ms, min {stats.min_ms:.3f} ms "
        f"over {stats.runs} runs (attempt {stats.attempts}) on {device.name}/{stats.runtime}"
        f"{' in int8' if precision == PrecisionChoice.int8 else ''} with {stats.threads} "
        f"thread(s); device {info['fingerprint']}: {info['cpu']}, {info['cores']} core(s)",
        highlight=False,
    )


def profile(
    space: Annotated[str, typer.Option(help="Shipped space (v1, v2, v3) or a path to a YAML file.")] = "v3",
    target: Annotated[str, typer.Option(help="cpu, cuda, or http://HOST:PORT of 'mbsearch agent'.")] = "cpu",
    target_token: TargetToken = None,
    threads: Annotated[int, typer.Option(min=1, max=256, help="Threads for inference (local targets).")] = 1,
    input_size: Annotated[int, typer.Option(min=8, max=1024, help="Input size the table is for.")] = 28,
    channels: Annotated[int, typer.Option(min=1, max=16, help="Input channels.")] = 1,
    classes: Classes = 10,
    calibrate: Annotated[int, typer.Option(min=0, max=10_000, help="Whole networks timed to fit the overhead.")] = 30,
    seed: Annotated[int, typer.Option(min=0, max=2**31, help="Seed of the calibration networks.")] = 0,
    adaptive: Annotated[
        int, typer.Option(min=0, max=100_000, help="Parts at other widths, timed where the regressor errs most.")
    ] = 0,
    sample: Annotated[
        int, typer.Option(min=0, max=1_000_000, help="Time this many blocks of the space (0: all); the rest predicted.")
    ] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Lookup table file to write.")] = Path("lut.json"),
    precision: Precision = PrecisionChoice.fp32,
) -> None:
    """Build a per-block latency lookup table for a space on a target (for 'run --latency predicted').
    With --precision int8 the parts are timed as int8 graphs, for int8 searches. Interrupted, the same
    command resumes from OUTPUT.partial."""
    from mbsearch.latency.profiling import ProfilePlan, profile_to_file

    def say(line: str) -> None:
        console.print(line, highlight=False)

    plan = ProfilePlan(input_size, channels, classes, calibrate, seed, adaptive, sample, precision.value)
    table = profile_to_file(space, target, target_token, threads, plan, output, say)
    for line in (table.calibration_line(), table.quiet_line()):
        if line is not None:
            say(line)
    say(f"wrote {output}")


def agent(
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 picks a free one).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(envvar="MBSEARCH_AGENT_TOKEN", help="Token clients must send (default: a new one, printed)."),
    ] = None,
    threads: Annotated[int, typer.Option(min=1, max=256, help="Inference threads on this device.")] = 1,
    provider: Annotated[str, typer.Option(help="ONNX Runtime execution provider.")] = "CPUExecutionProvider",
    max_model_mb: Annotated[float, typer.Option(min=0.01, max=4096, help="Largest model accepted, in MB.")] = 64,
    max_seconds: Annotated[float, typer.Option(min=1, max=86400, help="Longest timing of one request.")] = 120,
    precision: Annotated[
        AgentPrecision,
        typer.Option(help="Graphs it times: any, or fp32 or int8 only (a device kept for one deployment)."),
    ] = AgentPrecision.any,
) -> None:
    """Serve latency measurements on this device (run it on the target: a Pi, a Jetson, a server, a phone).
    Needs onnxruntime, numpy, bottle, typer, rich and pydantic, not torch."""
    import onnxruntime

    from mbsearch.device.agent import AgentConfig, new_token, serve

    if provider not in onnxruntime.get_available_providers():
        raise BadInput(
            f"--provider {provider}: not available here; use one of {', '.join(onnxruntime.get_available_providers())}"
        )
    if token is not None and (len(token.strip()) < 16 or not (token.isascii() and token.isprintable()) or " " in token):
        raise BadInput(
            "--token must be at least 16 printable ASCII characters without spaces; leave it out to get a random one"
        )
    if not is_loopback(host):
        print(
            f"mbsearch: warning: --host {host} lets every machine that can reach this one send models; "
            "keep the token secret",
            file=sys.stderr,
        )
    config = AgentConfig(
        token or new_token(), threads, provider, int(max_model_mb * 1024 * 1024), max_seconds, precision=precision.value
    )
    try:
        serve(host, port, config, announce=lambda line: print(line, flush=True), token_chosen=token is not None)
    except OSError as exc:
        reason = exc.strerror or exc
        raise BadInput(f"cannot listen on {host}:{port}: {reason}; pick another --port or --host") from None
