"""A search made ready once per command: its space, data, latency target, training device and supernet,
with every input checked before anything is written. The trial loop, the objective and the workers
receive it; none of them resolves or opens these again.
"""

from __future__ import annotations

from dataclasses import dataclass

from mbsearch.architecture.sample import check_space_fits
from mbsearch.architecture.space import SearchSpace, load_space
from mbsearch.errors import BadInput
from mbsearch.latency.factory import open_target
from mbsearch.latency.targets import Target, check_target_precision
from mbsearch.search.supernet import open_for_search
from mbsearch.study.config import RunConfig
from mbsearch.train.data import Dataset, FolderReading, load_dataset
from mbsearch.train.device import TrainingDevice, resolve_device
from mbsearch.train.image_cache import default_cache_dir
from mbsearch.train.supernet import TrainedSupernet


@dataclass(frozen=True)
class PreparedSearch:
    """What a search works with: its settings, space, data, latency target, training device, and the
    supernet that scores its candidates (None: each candidate trains briefly)."""

    config: RunConfig
    space: SearchSpace
    data: Dataset
    target: Target
    training: TrainingDevice
    supernet: TrainedSupernet | None = None


def open_config_target(config: RunConfig, training: TrainingDevice) -> Target:
    """The latency target of a search: local, a remote agent, or a lookup table."""
    return open_target(
        "predicted" if config.latency == "predicted" else config.target,
        config.runtime,
        config.threads,
        config.target_token,
        config.lut,
        gpu=training.index if training.is_cuda else 0,  # `--target cuda` times on this worker's own GPU
    )


def prepare(config: RunConfig) -> PreparedSearch:
    """Everything that can be wrong with the input is found here, before anything is written; the training
    device is resolved once (a GPU this machine lacks is refused first)."""
    training = resolve_device(config.device)
    space = load_space(config.space)
    target = open_config_target(config, training)
    check_target_precision(target, config.precision)  # an agent or a table kept for the other precision
    if config.confirm_on is not None:
        confirming = open_target(config.confirm_on, config.runtime, config.threads, config.target_token)
        check_target_precision(confirming, config.precision)
        made_for = target.device().get("predicts_for")
        if made_for is not None and made_for != confirming.device()["fingerprint"]:
            raise BadInput(
                f"--lut {target.name} was timed on device {made_for}, but --confirm-on {config.confirm_on} is device "
                f"{confirming.device()['fingerprint']}; profile that device with 'mbsearch profile --target "
                f"{config.confirm_on}', or confirm on the device the table was made on"
            )
    cache_path = config.runs_dir / "latency-cache.sqlite"
    if cache_path.exists() and not cache_path.is_file():
        raise BadInput(f"{cache_path}: the latency cache is a folder or a device, not a file; move it away")
    data = load_dataset(
        config.dataset,
        config.data_dir,
        config.input_size,
        config.channels,
        config.val_size,
        config.seed,
        # the image cache is shared by every command and worker on the host
        FolderReading(bool(config.skip_bad_images), default_cache_dir(config.runs_dir)),
    )
    if config.train_size > len(data.train):
        raise BadInput(
            f"--train-size {config.train_size} exceeds the {len(data.train)} training images left "
            f"after the validation split; lower it or --val-size"
        )
    check_space_fits(space, data.size, data.channels, data.num_classes)
    if config.latency_input_size is not None:
        check_space_fits(space, config.latency_input_size, data.channels, data.num_classes, "--latency-input-size")
    if config.latency == "predicted":
        target.check_covers(  # type: ignore[attr-defined]
            space, config.latency_input_size or data.size, data.channels, data.num_classes
        )
    # A missing or foreign supernet is refused here too, before the study exists.
    supernet = open_for_search(config, space, data) if config.evaluator == "supernet" else None
    return PreparedSearch(config, space, data, target, training, supernet)
