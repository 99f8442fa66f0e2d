"""How the command line talks: one console, every failure as one line on stderr (exit 2 for bad input,
1 for runtime failures, 130 interrupted), user text printed escaped, and the training progress bar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pydantic
from rich.console import Console
from typer._click.exceptions import UsageError
from typer.core import TyperGroup
from typer.exceptions import Abort

from mbsearch.errors import MbsearchError
from mbsearch.files import describe_validation_error

# A pipe or a test gets a wide table rather than folded cells.
# markup=False: file names, study names and arch names are printed as given ('exp[v2]' stays as is,
# '[/]' is not a markup error).
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)


class OneLineErrors(TyperGroup):
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
            fail(exc.format_message().replace("\n", " ") + where, 2)
        except Abort:
            fail("interrupted", 130)
        except MbsearchError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except pydantic.ValidationError as exc:
            # Our data types (arch, space, settings) are only ever built from what a user passed in
            fail(describe_validation_error(exc, exc.title), 2)
        except OSError as exc:
            fail(_os_error_line(exc), 1)
        except Exception as exc:  # a bug or an unforeseen failure: still one line, unless asked for more
            if os.environ.get("MBSEARCH_DEBUG"):
                raise
            expected = _expected_failure(exc)
            if expected is not None:
                fail(expected, 1)
            fail(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0] + " (MBSEARCH_DEBUG=1 shows more)", 1)
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


def fail(message: str, code: int) -> None:
    print(f"mbsearch: error: {message}", file=sys.stderr)
    sys.exit(code)


def printable(text: str) -> str:
    """User text for the terminal: control characters (escape sequences, newlines) shown escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@contextmanager
def training_progress(description: str) -> Iterator[Callable[[int, int, float, float], None]]:
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
