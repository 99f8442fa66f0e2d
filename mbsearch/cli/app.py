"""The `mbsearch` command line: thin typer commands that parse flags and call the library."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pydantic
import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import UsageError
from typer.core import TyperGroup
from typer.exceptions import Abort

from mbsearch.adapt.config import AdaptConfig
from mbsearch.cli.options import options_from
from mbsearch.errors import BadInput, MbsearchError
from mbsearch.files import describe_validation_error
from mbsearch.study.config import RunConfig
from mbsearch.study.supernet_config import SupernetConfig

# A pipe or a test gets a wide table rather than folded cells.
# markup=False: file names, study names and arch names are printed as given ('exp[v2]' stays as is,
# '[/]' is not a markup error).
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)


class _OneLineErrors(TyperGroup):
    """Every failure a user can cause ends as one line on stderr with exit 2 (1 for runtime failures)."""

    def main(
        self,
        args: Any = None,
        prog_name: Any = None,
        complete_var: Any = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name or "mbsearch", complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            where = f" (see 'mbsearch {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
            _fail(exc.format_message().replace("\n", " ") + where, 2)
        except Abort:
            _fail("interrupted", 130)
        except MbsearchError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except pydantic.ValidationError as exc:
            # Our data types (arch, space, settings) are only ever built from what a user passed in
            _fail(describe_validation_error(exc, exc.title), 2)
        except OSError as exc:
            _fail(_os_error_line(exc), 1)
        except Exception as exc:  # a bug or an unforeseen failure: still one line, unless asked for more
            if os.environ.get("MBSEARCH_DEBUG"):
                raise
            expected = _expected_failure(exc)
            if expected is not None:
                _fail(expected, 1)
            _fail(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0] + " (MBSEARCH_DEBUG=1 shows more)", 1)
        sys.exit(code if isinstance(code, int) else 0)


def _os_error_line(exc: OSError) -> str:
    """A failure of the disk or the terminal (full, read-only, gone) as one line that names the file."""
    import errno

    where = f" {exc.filename}" if exc.filename else (" the output" if exc.errno in (errno.ENOSPC, errno.EPIPE) else "")
    advice = {
        errno.ENOSPC: "free some disk space",
        errno.EROFS: "the file system is read-only; pick a writable place",
        errno.EACCES: "check the permissions",
        errno.EPIPE: "the output was closed",
    }.get(exc.errno or 0, "check the file and the disk")
    return f"cannot use{where}: {exc.strerror or exc}; {advice}"


def _expected_failure(exc: Exception) -> str | None:
    """Expected events that arrive as the libraries' own exceptions (a storage that cannot be written, an
    artifact on another host, a training that diverged or ran out of memory), as one line; None for a bug.
    Looked up in sys.modules: a library that was never imported raised nothing."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    optuna = sys.modules.get("optuna")
    if optuna is not None and isinstance(exc, optuna.exceptions.StorageInternalError):
        cause = exc.__cause__ or exc.__context__
        detail = (str(cause).strip().splitlines() or [first])[0][:200] if cause else first
        return (
            f"the study's storage could not be written ({detail}): check that its file or database is writable "
            "and that the disk has space, then rerun the same command"
        )
    artifacts = sys.modules.get("optuna.artifacts.exceptions")
    if artifacts is not None and isinstance(exc, artifacts.ArtifactNotFound):
        return (
            f"{first}: the study's artifacts folder is not on this machine; run this where the search ran, or "
            "copy the study's artifacts folder beside it"
        )
    loop = sys.modules.get("mbsearch.train.loop")
    if loop is not None and isinstance(exc, loop.TrainingFailed):
        return f"training failed: {first}"
    if isinstance(exc, RuntimeError) and "can't allocate memory" in first:  # the CPU allocator's own words
        return f"out of memory on the CPU ({first}); use a smaller --batch-size or input, or a larger machine"
    return None


def _fail(message: str, code: int) -> None:
    print(f"mbsearch: error: {message}", file=sys.stderr)
    sys.exit(code)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Hardware-aware neural architecture search over MobileNet-style spaces.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _quiet() -> None:
    """Hardware-aware neural architecture search over MobileNet-style spaces."""
    import logging
    import warnings

    # Optuna's INFO lines ("A new study created ...") and its tracebacks for failed trials, and library
    # warnings about experimental or deprecated APIs, would drown our own output. Our reporter prints a
    # line per trial with its failure reason, and our own problems end as one-line errors.
    logging.getLogger("optuna").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    # Optuna resets its logger's level when it is first imported: import it now, then quiet it. The agent
    # runs on small devices without optuna.
    try:
        import optuna
    except ImportError:
        return
    optuna.logging.set_verbosity(optuna.logging.ERROR)


InputSize = Annotated[int, typer.Option(min=8, max=1024, help="Input image size (square).")]
Channels = Annotated[int, typer.Option(min=1, max=16, help="Input image channels.")]
Classes = Annotated[int, typer.Option(min=2, max=100_000, help="Number of classes.")]
TargetToken = Annotated[
    str | None,
    typer.Option(envvar="MBSEARCH_TARGET_TOKEN", help="Token of the agent of an http:// target (or the env var)."),
]
AdaptArch = Annotated[Path, typer.Argument(help="Arch JSON file (e.g. from 'mbsearch export').")]
TrainDevice = Annotated[
    str, typer.Option(help="Where to train: auto (a GPU when one is visible), cpu, cuda, cuda:N or mps.")
]


class PrecisionChoice(StrEnum):
    fp32 = "fp32"
    int8 = "int8"


class AgentPrecision(StrEnum):
    any = "any"
    fp32 = "fp32"
    int8 = "int8"


Precision = Annotated[
    PrecisionChoice,
    typer.Option(help="fp32, or int8: ONNX Runtime static quantization (QDQ, per-channel), as --precision of run."),
]
LatencyInputSize = Annotated[
    int | None, typer.Option(min=8, max=1024, help="Time at this input size (the deployment resolution).")
]


@app.command()
def spaces() -> None:
    """List the shipped search spaces and how many distinct architectures each holds."""
    from mbsearch.architecture.space import list_spaces, load_space

    table = Table("space", "architectures", "stages", "description")
    for name in list_spaces():
        space = load_space(name)
        table.add_row(
            name,
            f"{space.size():.3e}" if space.size() > 1e6 else str(space.size()),
            str(len(space.stages)),
            space.description,
        )
    console.print(table)


@app.command()
def sample(
    space: Annotated[str, typer.Option(help="Shipped space name (v1, v2, v3) or a path to a YAML file.")] = "v3",
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = 0,
    input_size: InputSize = 28,
    channels: Channels = 1,
    classes: Classes = 10,
) -> None:
    """Print a random architecture from a space as arch JSON."""
    from mbsearch.architecture.sample import random_arch
    from mbsearch.architecture.space import load_space

    arch = random_arch(load_space(space), seed, input_size, channels, classes)
    sys.stdout.write(arch.with_info(name=f"{arch.name}-seed{seed}").to_json())


def _load_arch_or_reference(name_or_path: str, input_size: int | None, channels: int | None, classes: int | None):
    from mbsearch.architecture.arch import load_arch
    from mbsearch.architecture.zoo import reference_arch, reference_names

    if name_or_path in reference_names():
        return reference_arch(name_or_path, input_size or 224, channels or 3, classes or 1000)
    if not Path(name_or_path).exists():
        raise BadInput(f"{name_or_path!r} is neither a file nor a reference ({', '.join(reference_names())})")
    if input_size or channels or classes:
        raise BadInput("--input-size/--channels/--classes apply to reference names only; edit the arch file instead")
    return load_arch(name_or_path)


@app.command()
def show(
    arch: Annotated[str, typer.Argument(help="A reference name (e.g. mobilenet_v3_large) or an arch JSON file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the totals as JSON.")] = False,
    input_size: Annotated[int | None, typer.Option(min=8, max=1024, help="Input size for a reference.")] = None,
    channels: Annotated[int | None, typer.Option(min=1, max=16, help="Channels for a reference.")] = None,
    classes: Annotated[int | None, typer.Option(min=2, help="Classes for a reference.")] = None,
) -> None:
    """Print an architecture block by block with params and MACs, and the totals."""
    from mbsearch.nn.summary import summarize

    rows, totals = summarize(_load_arch_or_reference(arch, input_size, channels, classes))
    if as_json:
        sys.stdout.write(json.dumps(totals) + "\n")
        return
    console.print(_summary_table(rows, totals, f"{_printable(totals['name'] or arch)}"))


def _summary_table(rows, totals: dict, name: str) -> Table:
    """`show`'s table: one row per layer, then the totals."""
    title = f"{name} ({totals['input']}, {totals['num_classes']} classes)"
    columns = ("layer", "type", "k", "exp", "se", "act", "out", "stride", "res", "params", "MACs")
    table = Table(*columns, title=title)
    for row in rows:
        cells = (row.layer, row.type, _cell(row.kernel), _cell(row.expand), _cell(row.se), row.act)
        table.add_row(*cells, str(row.out), str(row.stride), str(row.resolution), f"{row.params:,}", f"{row.macs:,}")
    table.add_section()
    table.add_row("total", "", "", "", "", "", "", "", "", f"{totals['params']:,}", f"{totals['macs']:,}")
    return table


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _config(model: type[pydantic.BaseModel], **flags: Any) -> Any:
    """Validate a command's flags as one settings model; a bad value is named by its flag."""
    try:
        return model(**flags)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule across flags: its message names them
            raise BadInput(message) from None
        raise BadInput(f"--{str(error['loc'][0]).replace('_', '-')}: {message}") from None


# From the environment too, so that a cluster's worker command (docs/cluster.md) need not carry the password.
Storage = Annotated[
    str | None,
    typer.Option(
        envvar="MBSEARCH_STORAGE", help="Optuna storage URL (or the env var; default: RUNS_DIR/STUDY/study.db)."
    ),
]


@app.command()
@options_from(RunConfig, {"target_token": TargetToken, "latency_input_size": LatencyInputSize, "storage": Storage})
def run(**flags: Any) -> None:
    """Search a space: train each candidate briefly, time it on the target, keep the Pareto front."""
    config = _config(RunConfig, **flags)
    from mbsearch.search.loop import run_search
    from mbsearch.search.progress import ConsoleReporter
    from mbsearch.search.workers import run_workers

    result = run_workers(config, console) if config.workers > 1 else run_search(config, ConsoleReporter(console))
    _print_front(result.front, result.basis)
    console.print(f"trials.csv and pareto.csv in {result.study_dir}", highlight=False)
    if result.timed_out:
        console.print("stopped by --timeout; rerun the same command to continue", highlight=False)


def _print_front(front, basis: str = "proxy") -> None:
    table = Table(
        "trial",
        "val acc",
        "latency ms",
        "IQR ms",
        "params",
        "MMACs",
        "blocks",
        title=f"Pareto front: {len(front)} point(s)" + _basis_note(basis),
    )
    for row in front.itertuples():
        table.add_row(
            str(row.number),
            f"{row.val_accuracy:.4f}",
            f"{row.latency_ms:.3f}",
            f"{row.latency_iqr_ms:.3f}",
            f"{int(row.params):,}",
            f"{row.macs / 1e6:.1f}",
            _short_blocks(row.blocks),
        )
    console.print(table)


def _basis_note(basis: str) -> str:
    from mbsearch.results.pareto import MULTI_FIDELITY

    if basis == MULTI_FIDELITY:
        return ", accuracy at each trial's highest rung (dominance judged at the highest rung a pair shares)"
    return "" if basis == "proxy" else f", accuracy at {basis}"


def _short_blocks(blocks: str) -> str:
    parts = blocks.split()
    return " ".join(parts[:3]) + (f" ... (+{len(parts) - 3})" if len(parts) > 3 else "")


def _study_name(name: str) -> str:
    from mbsearch.study.config import check_study_name

    try:
        return check_study_name(name)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


StudyName = Annotated[
    str, typer.Argument(help="Study name (as given to or derived by 'mbsearch run').", callback=_study_name)
]
RunsDir = Annotated[Path, typer.Option(help="Folder of study outputs.")]


@app.command()
def report(
    study: StudyName,
    runs_dir: RunsDir = Path("runs"),
    storage: Storage = None,
    baselines: Annotated[bool, typer.Option(help="Draw the stored MobileNet baselines ('verify' makes them).")] = True,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset folder, if the search used --data-dir.")] = None,
    adapted: Annotated[
        list[Path] | None,
        typer.Option(help="An 'adapt' output (adapted.json or its folder) to show beside the front; repeatable."),
    ] = None,
) -> None:
    """Write RUNS_DIR/STUDY/report.html: the Pareto front beside the MobileNet baselines, and more. Draws what
    the study and the stored baselines hold; trains and times nothing ('verify' does)."""
    from mbsearch.adapt.adapted import adapted_frame
    from mbsearch.report.page import write_report
    from mbsearch.results.baselines import stored_study_baselines
    from mbsearch.results.finished import open_finished
    from mbsearch.results.seed_noise import stored_seed_noise
    from mbsearch.study import records

    finished = open_finished(study, runs_dir, storage)
    adapted_points = adapted_frame(adapted or [], finished)
    frame = verified_frame = None
    if baselines:
        stored = stored_study_baselines(finished, runs_dir, data_dir)
        frame, verified_frame = stored.proxy, stored.verified
        for line in stored.missing:
            console.print(line, highlight=False, soft_wrap=True)
    budget = records.verify_budget(finished.study)
    noise = stored_seed_noise(finished) if verified_frame is not None else None
    path = write_report(finished, frame, budget, verified_frame, adapted_points, noise)
    console.print(f"wrote {path}", highlight=False)


@app.command()
def verify(
    study: StudyName,
    top: Annotated[int, typer.Option(min=1, max=1000, help="Verify the front, then whole next layers, up to K.")] = 8,
    epochs: Annotated[float, typer.Option(min=0.01, max=100, help="Epochs of the verification training.")] = 1.0,
    train_size: Annotated[
        int | None, typer.Option(min=64, help="Training images (default: the whole training split).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Local processes sharing the work.")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, max=256, help="Training threads per process.")] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=2**32 - 1,
            help="Seed the verification's training seed is derived from (default: "
            "the study's); never the proxy's own seed.",
        ),
    ] = None,
    runs_dir: RunsDir = Path("runs"),
    storage: Storage = None,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset folder, if the search used --data-dir.")] = None,
    target: Annotated[
        str | None, typer.Option(help="Also re-time the verified trials on this target (cpu, cuda, http://...).")
    ] = None,
    target_token: TargetToken = None,
    device: TrainDevice = "auto",
    precision: Annotated[
        PrecisionChoice | None,
        typer.Option(help="fp32 or int8 (default: the study's; an int8 study scores the int8 graph)."),
    ] = None,
    baselines: Annotated[
        bool,
        typer.Option(
            help="Also train and time the MobileNet baselines at both budgets (stored once per data and device)."
        ),
    ] = True,
    seed_noise: Annotated[
        int,
        typer.Option(
            min=0, max=10, help="Retrain the verified knee and two baselines with N more seeds: the seed noise."
        ),
    ] = 0,
) -> None:
    """Retrain the front (and the next non-dominated layers, up to --top) at a longer budget, on the training
    split, scored on the search's validation split, then train and time the MobileNet baselines the report
    compares with. Stored in the study and in RUNS_DIR/baselines.json; rerun to resume."""
    from mbsearch.results.finished import open_finished, study_target
    from mbsearch.results.verify import plan_verify, verify_study

    finished = open_finished(study, runs_dir, storage)
    searched = finished.settings.get("precision", "fp32")
    if precision is not None and precision.value != searched:
        raise BadInput(
            f"study {study!r} searched in {searched}: its verification is in {searched} too; drop --precision "
            f"or give --precision {searched}"
        )
    # opened first: an unknown or absent target, or another device than the study's, is refused before training
    retime_on = _open_study_target(finished, target, target_token) if target is not None else None
    timer = study_target(finished, target_token) if baselines or seed_noise else None
    plan = plan_verify(finished, data_dir, epochs, train_size, workers, threads, device)
    console.print(plan.describe(top, study, epochs), highlight=False)

    def say(event: str, number: int, accuracy: float | None) -> None:
        if event == "done":
            console.print(f"trial {number}: verified accuracy {accuracy:.4f}", highlight=False)

    worker_args = (study, str(runs_dir), storage, str(data_dir) if data_dir else None, epochs, train_size, top, seed)
    result = verify_study(finished, plan, top, seed, worker_args, on_event=say)
    if retime_on is not None:
        _retime(finished, result.chosen, retime_on, target)
    _print_verified(result)
    if timer is not None:
        _verify_baselines(open_finished(study, runs_dir, storage), runs_dir, data_dir, timer, seed_noise)


def _verify_baselines(finished, runs_dir: Path, data_dir: Path | None, timer, seed_noise: int) -> None:
    """The baselines at the proxy budget (on the study's training instrument, where this machine has it) and
    at the verification budget (on verify's), trained and timed where missing; then the seed noise."""
    from mbsearch.results.baselines import study_baselines
    from mbsearch.results.finished import study_training

    try:
        training = study_training(finished, None)
    except BadInput as exc:  # searched on a GPU, verified on a CPU: the proxy baselines are made there
        console.print(f"baselines at the proxy budget skipped: {exc}", highlight=False)
        training = None
    verify_training = study_training(finished, None, verified=True)

    def progress(name: str, _: bool) -> None:
        console.print(f"baseline {name}: training and timing (stored for later studies)", highlight=False)

    _, verified_frame = study_baselines(finished, runs_dir, data_dir, timer, progress, training, verify_training)
    if seed_noise and verified_frame is not None:
        from mbsearch.results.seed_noise import measure_seed_noise

        console.print(f"seed noise: the verified knee and two baselines with {seed_noise} more seed(s)")
        noise = measure_seed_noise(finished, verified_frame, runs_dir, seed_noise, data_dir, timer, verify_training)
        if noise is not None:
            console.print(f"seed noise of one verified accuracy: {noise.sd_points:.2f} points (sd)", highlight=False)


def _open_study_target(finished, target: str, token: str | None):
    from mbsearch.latency.factory import open_target
    from mbsearch.latency.targets import check_target_precision

    device = open_target(target, finished.settings["runtime"], finished.settings["threads"], token)
    check_target_precision(device, finished.settings.get("precision", "fp32"))
    return device


def _retime(finished, numbers: list[int], device, target: str) -> None:
    from mbsearch.results.retime import retime

    def timed(number: int, searched: float, measured: float) -> None:
        console.print(f"trial {number}: latency {searched:.3f} ms in the search, {measured:.3f} ms on {target}")

    retime(finished.study, numbers, device, on_done=timed, precision=finished.settings.get("precision", "fp32"))


def _print_verified(result) -> None:
    missing = [n for n in result.chosen if n not in result.verified]
    tau = "n/a (fewer than 3 verified)" if result.tau is None else f"{result.tau:.3f}"
    console.print(
        f"{len(result.verified)} trial(s) verified; Kendall tau proxy vs verified: {tau}"
        + (f"; not verified yet: {missing}" if missing else ""),
        highlight=False,
    )
    for number in missing:
        console.print(f"trial {number}: {result.why_not.get(number, 'not started')}", highlight=False)


@app.command()
def export(
    study: StudyName,
    pick: Annotated[str, typer.Option(help="knee, max-accuracy or min-latency.")] = "knee",
    max_latency: Annotated[float | None, typer.Option(help="Only consider front points at most this fast.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Arch JSON file to write.")] = Path("best.json"),
    onnx: Annotated[Path | None, typer.Option("--onnx", help="Also write this ONNX file.")] = None,
    timm: Annotated[bool, typer.Option("--timm", help="Also print timm's arch_def strings.")] = False,
    runs_dir: RunsDir = Path("runs"),
    storage: Storage = None,
    precision: Annotated[
        PrecisionChoice | None,
        typer.Option(help="The --onnx graph: int8 (an int8 study's timed graph, its default) or fp32."),
    ] = None,
) -> None:
    """Write a Pareto-optimal architecture as arch JSON (with metrics and provenance), ONNX and timm strings."""
    from mbsearch.results.export import export_study

    chosen = precision.value if precision is not None else None
    exported = export_study(study, runs_dir, storage, pick, output, onnx, max_latency, timm, chosen)
    metrics, trial = exported.arch.metrics or {}, exported.arch.provenance["trial"]
    console.print(f"picked by {exported.basis}", highlight=False)
    console.print(
        f"trial {trial}: val acc {metrics['val_accuracy']:.4f}, latency {metrics['latency_ms']:.3f} ms, "
        f"{metrics['params']:,} params -> {output}",
        highlight=False,
    )
    if exported.int8_onnx:
        console.print(f"int8 ONNX (trained and quantized: the graph the search timed) -> {onnx}", highlight=False)
    elif onnx is not None:
        console.print(f"ONNX (untrained weights; 'mbsearch train' writes trained ones) -> {onnx}", highlight=False)
    if exported.timm_arch_def is not None:
        sys.stdout.write(json.dumps(exported.timm_arch_def, indent=1) + "\n")


@app.command()
def dashboard(
    study: StudyName,
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8080,
    runs_dir: RunsDir = Path("runs"),
    storage: Storage = None,
) -> None:
    """Open optuna-dashboard on the study's storage (Ctrl-C stops it)."""
    from mbsearch.study.dashboard import check_port, serve
    from mbsearch.study.storage import default_url, load_study, redact

    url = storage or default_url(runs_dir / study)
    if storage is None and not (runs_dir / study / "study.db").is_file():
        raise BadInput(f"unknown study {study!r}: no {runs_dir / study / 'study.db'}; check --runs-dir or --storage")
    load_study(url, study)  # fail early, with one line, on an unknown study
    check_port(host, port)
    shown_host = f"[{host}]" if ":" in host else host  # an IPv6 address needs brackets in a URL
    if not _is_loopback(host):
        print(
            f"mbsearch: warning: --host {host} serves the whole study, with no authentication, to every machine "
            "that can reach this one; use 127.0.0.1 unless you mean it",
            file=sys.stderr,
        )
    console.print(f"dashboard for {redact(url)} on http://{shown_host}:{port}/ (Ctrl-C stops it)", highlight=False)
    serve(url, runs_dir / study, host, port)


def _printable(text: str) -> str:
    """User text for the terminal: control characters (escape sequences, newlines) shown escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("train")
def train_command(
    arch: Annotated[Path, typer.Argument(help="Arch JSON file (e.g. from 'mbsearch export').")],
    epochs: Annotated[float, typer.Option(min=0.01, max=1000, help="Training epochs on the whole training set.")] = 10,
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the one the arch was searched on).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset folder.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: ARCH without .json + '-trained').")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(min=1e-8, help="Peak learning rate.")] = 0.006,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed.")] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="Training threads (default: all cores).")] = None,
    device: TrainDevice = "auto",
    runs_dir: Annotated[
        Path, typer.Option(help="Runs folder whose image cache a folder dataset is decoded into (shared with run).")
    ] = Path("runs"),
    skip_bad_images: Annotated[
        bool, typer.Option("--skip-bad-images", help="Skip unreadable images of a folder dataset (counted).")
    ] = False,
    precision: Precision = PrecisionChoice.fp32,
) -> None:
    """Train an architecture fully and report its test accuracy (the only command that reads the test set).
    With --precision int8, also its int8 graph (model.int8.onnx) and that graph's test accuracy."""
    from mbsearch.train.fulltrain import FullTraining, train_arch_file
    from mbsearch.train.image_cache import default_cache_dir

    recipe = FullTraining(epochs, dataset, data_dir, batch_size, lr, seed, skip_bad_images,
                          default_cache_dir(runs_dir), precision.value)  # fmt: skip
    with _training_progress(f"training {arch.name}") as on_step:
        _, result = train_arch_file(arch, out, recipe, on_step, device, threads)
    if result.resumed_from_epoch:
        console.print(f"resumed from the checkpoint after epoch {result.resumed_from_epoch}", highlight=False)
    console.print(
        f"test accuracy {result.test_accuracy:.4f} after {result.epochs:g} epochs ({result.params:,} params); "
        f"weights, ONNX and metrics in {result.out_dir}",
        highlight=False,
    )
    if result.int8_test_accuracy is not None:
        console.print(
            f"int8 (ONNX Runtime static, per-channel): test accuracy {result.int8_test_accuracy:.4f} "
            f"({100 * (result.int8_test_accuracy - result.test_accuracy):+.2f} points); model.int8.onnx",
            highlight=False,
        )


@contextmanager
def _training_progress(description: str) -> Iterator[Callable[[int, int, float, float], None]]:
    """A progress bar with smoothed loss and accuracy, shown from the first step (a refusal before training
    prints no bar); yields the per-step callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    scores = TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}")
    progress = Progress(*columns, scores, TimeRemainingColumn(), console=console)
    smoothed = {"loss": 0.0, "acc": 0.0}

    def on_step(step: int, total: int, loss: float, accuracy: float) -> None:
        if not progress.task_ids:
            progress.start()
            progress.add_task(description, total=total, loss=0.0, acc=0.0)
        for key, value in (("loss", loss), ("acc", accuracy)):
            smoothed[key] = value if step == 1 else 0.98 * smoothed[key] + 0.02 * value
        progress.update(progress.task_ids[0], completed=step, total=total, **smoothed)

    try:
        yield on_step
    finally:
        if progress.task_ids:
            progress.stop()


supernet_app = typer.Typer(
    cls=_OneLineErrors, help="Weight-sharing supernets: train once, score sub-networks in seconds.",
    no_args_is_help=True,
)  # fmt: skip
app.add_typer(supernet_app, name="supernet")


@supernet_app.command("train")
@options_from(SupernetConfig)
def supernet_train(**flags: Any) -> None:
    """Train the supernet of a space on a dataset (sandwich rule, in-place distillation); rerun the same
    command to resume. A later 'run --evaluator supernet' on the same data scores with it."""
    config = _config(SupernetConfig, **flags)
    from mbsearch.search.supernet import train_for

    with _training_progress("training the supernet") as on_step:
        result = train_for(config, on_step)
    if result.already_trained:
        console.print(f"already trained ({result.steps} steps): {result.folder}", highlight=False)
        return
    resumed = f", resumed from step {result.resumed_from_step}" if result.resumed_from_step else ""
    console.print(
        f"supernet of {result.sub_networks:,} sub-networks ({result.params:,} shared weights) trained for "
        f"{result.steps} steps in {result.seconds / 60:.1f} min{resumed}: {result.folder}",
        highlight=False,
    )


@app.command()
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
    spec = _load_arch_or_reference(arch, None, None, None).at_resolution(latency_input_size)
    stats = latency_of(spec, device, runs=runs, precision=precision.value)
    info = device.device()
    if as_json:
        sys.stdout.write(json.dumps(asdict(stats) | {"precision": precision.value, "device": info}) + "\n")
        return
    console.print(
        f"{_printable(spec.name or arch)} at {spec.input.size}x{spec.input.size}: median {stats.median_ms:.3f} ms, "
        f"IQR {stats.iqr_ms:.3f} ms ({stats.relative_iqr:.1%}), mean {stats.mean_ms:.3f} ms, min {stats.min_ms:.3f} ms "
        f"over {stats.runs} runs (attempt {stats.attempts}) on {device.name}/{stats.runtime}"
        f"{' in int8' if precision == PrecisionChoice.int8 else ''} with {stats.threads} "
        f"thread(s); device {info['fingerprint']}: {info['cpu']}, {info['cores']} core(s)",
        highlight=False,
    )


@app.command()
@options_from(AdaptConfig, {"arch": AdaptArch, "target_token": TargetToken})
def adapt(**flags: Any) -> None:
    """NetAdapt: trim layer widths until a latency target is met (MobileNetV3's second step). Rerun the same
    command to resume from the last finished iteration."""
    from mbsearch.adapt.session import run_adapt

    outcome = run_adapt(_config(AdaptConfig, **flags), on_event=lambda line: console.print(line, highlight=False))
    console.print(outcome.summary(), highlight=False)


@app.command()
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


@app.command()
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
    if not _is_loopback(host):
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


def main() -> None:
    app()
