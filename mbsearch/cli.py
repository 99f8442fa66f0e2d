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

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
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
        table.add_row(name, f"{space.size():.3e}" if space.size() > 1e6 else str(space.size()),
                      str(len(space.stages)), space.description)
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
    table = Table("layer", "type", "k", "exp", "se", "act", "out", "stride", "res", "params", "MACs",
                  title=f"{totals['name'] or arch} ({totals['input']}, {totals['num_classes']} classes)")
    for row in rows:
        table.add_row(row.layer, row.type, _cell(row.kernel), _cell(row.expand), _cell(row.se), row.act,
                      str(row.out), str(row.stride), str(row.resolution), f"{row.params:,}", f"{row.macs:,}")
    table.add_section()
    table.add_row("total", "", "", "", "", "", "", "", "", f"{totals['params']:,}", f"{totals['macs']:,}")
    console.print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def main() -> None:
    import logging

    # Optuna's INFO lines ("A new study created ...") would drown our own output.
    logging.getLogger("optuna").setLevel(logging.WARNING)
    app()
