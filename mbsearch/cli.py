"""The `mbsearch` command line: thin typer commands that parse flags and call the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import UsageError
from typer.core import TyperGroup
from typer.exceptions import Abort

from mbsearch.errors import BadInput, MbsearchError

# A pipe or a test gets a wide table rather than folded cells.
console = Console(width=None if sys.stdout.isatty() else 160)


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
        sys.exit(code if isinstance(code, int) else 0)


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


InputSize = Annotated[int, typer.Option(min=8, max=1024, help="Input image size (square).")]
Channels = Annotated[int, typer.Option(min=1, max=16, help="Input image channels.")]
Classes = Annotated[int, typer.Option(min=2, max=100_000, help="Number of classes.")]


@app.command()
def spaces() -> None:
    """List the shipped search spaces and how many distinct architectures each holds."""
    from mbsearch.space import list_spaces, load_space

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
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    input_size: InputSize = 28,
    channels: Channels = 1,
    classes: Classes = 10,
) -> None:
    """Print a random architecture from a space as arch JSON."""
    from mbsearch.sample import random_arch
    from mbsearch.space import load_space

    arch = random_arch(load_space(space), seed, input_size, channels, classes)
    sys.stdout.write(arch.with_info(name=f"{arch.name}-seed{seed}").to_json())


def _load_arch_or_reference(name_or_path: str, input_size: int | None, channels: int | None, classes: int | None):
    from mbsearch.arch import load_arch
    from mbsearch.zoo import reference_arch, reference_names

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
    from mbsearch.summary import summarize

    rows, totals = summarize(_load_arch_or_reference(arch, input_size, channels, classes))
    if as_json:
        sys.stdout.write(json.dumps(totals) + "\n")
        return
    table = Table(
        "layer",
        "type",
        "k",
        "exp",
        "se",
        "act",
        "out",
        "stride",
        "res",
        "params",
        "MACs",
        title=f"{totals['name'] or arch} ({totals['input']}, {totals['num_classes']} classes)",
    )
    for row in rows:
        table.add_row(
            row.layer,
            row.type,
            _cell(row.kernel),
            _cell(row.expand),
            _cell(row.se),
            row.act,
            str(row.out),
            str(row.stride),
            str(row.resolution),
            f"{row.params:,}",
            f"{row.macs:,}",
        )
    table.add_section()
    table.add_row("total", "", "", "", "", "", "", "", "", f"{totals['params']:,}", f"{totals['macs']:,}")
    console.print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _config(**flags: Any):
    """Validate the flags of `run` as one RunConfig; a bad value is named by its flag."""
    import pydantic

    from mbsearch.config import RunConfig

    try:
        return RunConfig(**flags)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "flags"
        raise BadInput(f"{flag}: {error['msg'].removeprefix('Value error, ')}") from None


@app.command()
def run(
    space: Annotated[str, typer.Option(help="Shipped space (v1, v2, v3) or a path to a YAML file.")] = "v3",
    target: Annotated[str, typer.Option(help="Where latency is measured: cpu or cuda.")] = "cpu",
    runtime: Annotated[str, typer.Option(help="onnxruntime (deployed model) or torch (eager).")] = "onnxruntime",
    threads: Annotated[int, typer.Option(help="Threads for latency timing.")] = 1,
    dataset: Annotated[str, typer.Option(help="fashion-mnist, cifar10 or folder.")] = "fashion-mnist",
    data_dir: Annotated[Path | None, typer.Option(help="Dataset folder (fashion-mnist has a default).")] = None,
    input_size: Annotated[int | None, typer.Option(help="Resize images to this size (default: native).")] = None,
    channels: Annotated[int | None, typer.Option(help="Image channels for --dataset folder (1 or 3).")] = None,
    val_size: Annotated[int, typer.Option(help="Images held out of training for validation.")] = 2000,
    epochs: Annotated[float, typer.Option(help="Training epochs per candidate (0.5 allowed).")] = 1.0,
    train_size: Annotated[int, typer.Option(help="Training images per candidate.")] = 4000,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, one-cycle cosine).")] = 0.006,
    train_threads: Annotated[int | None, typer.Option(help="Threads for training (default: cores / workers).")] = None,
    sampler: Annotated[str, typer.Option(help="tpe, nsga2 or random.")] = "tpe",
    seed: Annotated[int, typer.Option(help="Seed for the sampler, the split and training.")] = 0,
    trials: Annotated[int, typer.Option(help="Complete trials to reach in total (a rerun resumes).")] = 30,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: SPACE-TARGET-DATASET).")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: RUNS_DIR/STUDY/study.db).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Folder for study outputs.")] = Path("runs"),
    max_latency: Annotated[float | None, typer.Option(help="Constraint: latency at most this many ms.")] = None,
    max_params: Annotated[int | None, typer.Option(help="Constraint: at most this many parameters.")] = None,
    objective: Annotated[str, typer.Option(help="pareto (two objectives) or mnas (ACC*(LAT/T)^w).")] = "pareto",
    latency_target: Annotated[float | None, typer.Option(help="T in ms for --objective mnas.")] = None,
    mnas_w: Annotated[float, typer.Option(help="w for --objective mnas.")] = -0.07,
) -> None:
    """Search a space: train each candidate briefly, time it on the target, keep the Pareto front."""
    from mbsearch.progress import ConsoleReporter
    from mbsearch.search import run_search

    flags = {key: value for key, value in locals().items() if key not in {"ConsoleReporter", "run_search"}}
    config = _config(**flags)
    result = run_search(config, ConsoleReporter(console))
    _print_front(result.front, config.trials)
    console.print(f"trials.csv and pareto.csv in {result.study_dir}", highlight=False)
    if result.timed_out:
        console.print("stopped by --timeout; rerun the same command to continue", highlight=False)


def _print_front(front, trials: int) -> None:
    table = Table(
        "trial",
        "val acc",
        "latency ms",
        "IQR ms",
        "params",
        "MMACs",
        "blocks",
        title=f"Pareto front: {len(front)} point(s)",
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


def _short_blocks(blocks: str) -> str:
    parts = blocks.split()
    return " ".join(parts[:3]) + (f" ... (+{len(parts) - 3})" if len(parts) > 3 else "")


def main() -> None:
    app()
