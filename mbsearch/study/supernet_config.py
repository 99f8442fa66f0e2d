"""What `mbsearch supernet train` is asked to do, as a typed model: the command's options are made from its
fields. No torch, so the command line (and the agent, which shares it) loads without it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import ConfigDict, Field

from mbsearch.train.budget import DEFAULT_VAL_SIZE


class SupernetConfig(pydantic.BaseModel):
    """What `mbsearch supernet train` is asked to do; each field is one of its options. The data options
    mean what they mean for `run`: a search uses this supernet when they match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    space: str = Field("v3", description="Shipped space (v1, v2, v3) or a path to a YAML file.")
    dataset: str = Field("fashion-mnist", description="fashion-mnist, cifar10 or folder.")
    data_dir: Path | None = Field(None, description="Dataset folder (fashion-mnist has a default).")
    skip_bad_images: bool = Field(False, description="--dataset folder: skip unreadable images (counted).")
    input_size: Annotated[int, Field(ge=8, le=1024)] | None = Field(
        None, description="Resize images to this size (default: native)."
    )
    channels: int | None = Field(None, description="Image channels for --dataset folder (1 or 3).")
    latency_input_size: Annotated[int, Field(ge=8, le=1024)] | None = Field(
        None, description="The search's --latency-input-size: the stride plan sub-networks follow."
    )
    val_size: Annotated[int, Field(ge=1)] = Field(DEFAULT_VAL_SIZE, description="Validation images held out.")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="Seed of the validation split (the search's --seed) and of the training."
    )
    epochs: Annotated[float, Field(gt=0, le=1000)] = Field(3.0, description="Epochs over the training images.")
    train_size: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Training images (default: the whole training split)."
    )
    batch_size: Annotated[int, Field(ge=1, le=65536)] = Field(128, description="Batch size.")
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(0.003, description="Peak learning rate.")
    device: str = Field("auto", description="Where to train: auto (a GPU when one is visible), cpu, cuda, cuda:N.")
    threads: Annotated[int, Field(ge=1, le=256)] | None = Field(None, description="Training threads (default: all).")
    runs_dir: Path = Field(Path("runs"), description="Runs folder (its image cache, and supernets/ inside it).")
    out: Path | None = Field(None, description="Folder (default: RUNS_DIR/supernets/SPACE-DATASET-SIZE).")
