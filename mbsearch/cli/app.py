"""The `mbsearch` command line: thin typer commands that parse flags, make one library call and print.
This module holds the app and the search's commands; the others are registered here from their modules.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mbsearch.cli.flags import (
    Channels,
    Classes,
    InputSize,
    LatencyInputSize,
    PrecisionChoice,
    RunsDir,
    Storage,
    StudyName,
    TargetToken,
    config_from,
    is_loopback,
)
from mbsearch.cli.measuring import agent, load_arch_or_reference, measure, profile
from mbsearch.cli.options import options_from
from mbsearch.cli.output import OneLineErrors, console, printable
from mbsearch.cli.training import adapt, supernet_app, train_command
from mbsearch.cli.verify import verify
from mbsearch.errors import BadInput
from mbsearch.study.config import RunConfig

app = typer.Typer(
    cls=OneLineErrors,
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

    rows, totals = summarize(load_arch_or_reference(arch, input_size, channels, classes))
    if as_json:
        sys.stdout.write(json.dumps(totals) + "\n")
        return
    console.print(_summary_table(rows, totals, f"{printable(totals['name'] or arch)}"))


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


@app.command()
@options_from(RunConfig, {"target_token": TargetToken, "latency_input_size": LatencyInputSize, "storage": Storage})
def run(**flags: Any) -> None:
    """Search a space: train each candidate briefly, time it on the target, keep the Pareto front."""
    config = config_from(RunConfig, **flags)
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
    from mbsearch.report.page import report_study
    from mbsearch.results.finished import open_finished

    finished = open_finished(study, runs_dir, storage)
    path, missing = report_study(finished, baselines, data_dir, adapted_frame(adapted or [], finished))
    for line in missing:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"wrote {path}", highlight=False)


app.command()(verify)


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
    from mbsearch.results.export import ExportRequest, export_study

    chosen = precision.value if precision is not None else None
    exported = export_study(study, runs_dir, storage, ExportRequest(pick, output, onnx, max_latency, timm, chosen))
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
    if not is_loopback(host):
        print(
            f"mbsearch: warning: --host {host} serves the whole study, with no authentication, to every machine "
            "that can reach this one; use 127.0.0.1 unless you mean it",
            file=sys.stderr,
        )
    console.print(f"dashboard for {redact(url)} on http://{shown_host}:{port}/ (Ctrl-C stops it)", highlight=False)
    serve(url, runs_dir / study, host, port)


# Registered in this order: `mbsearch --help` lists the commands as a user meets them.
app.command("train")(train_command)
app.add_typer(supernet_app, name="supernet")
app.command()(measure)
app.command()(adapt)
app.command()(profile)
app.command()(agent)


def main() -> None:
    app()
