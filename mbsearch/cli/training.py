"""The commands that train one network or the supernet: `train`, `supernet train`, `adapt`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mbsearch.adapt.config import AdaptConfig
from mbsearch.cli.flags import AdaptArch, Precision, PrecisionChoice, TargetToken, TrainDevice, config_from
from mbsearch.cli.options import options_from
from mbsearch.cli.output import OneLineErrors, console, training_progress
from mbsearch.study.supernet_config import SupernetConfig


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
    with training_progress(f"training {arch.name}") as on_step:
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


supernet_app = typer.Typer(
    cls=OneLineErrors, help="Weight-sharing supernets: train once, score sub-networks in seconds.",
    no_args_is_help=True,
)  # fmt: skip


@supernet_app.command("train")
@options_from(SupernetConfig)
def supernet_train(**flags: Any) -> None:
    """Train the supernet of a space on a dataset (sandwich rule, in-place distillation); rerun the same
    command to resume. A later 'run --evaluator supernet' on the same data scores with it."""
    config = config_from(SupernetConfig, **flags)
    from mbsearch.search.supernet import train_for

    with training_progress("training the supernet") as on_step:
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


@options_from(AdaptConfig, {"arch": AdaptArch, "target_token": TargetToken})
def adapt(**flags: Any) -> None:
    """NetAdapt: trim layer widths until a latency target is met (MobileNetV3's second step). Rerun the same
    command to resume from the last finished iteration."""
    from mbsearch.adapt.session import run_adapt

    outcome = run_adapt(config_from(AdaptConfig, **flags), on_event=lambda line: console.print(line, highlight=False))
    console.print(outcome.summary(), highlight=False)
