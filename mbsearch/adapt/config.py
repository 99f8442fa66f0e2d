"""What `mbsearch adapt` is asked to do, as a typed model: the command's options are made from its fields.
No torch, so the command line can describe its options without loading it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import ConfigDict, Field, model_validator

from mbsearch.train.budget import DEFAULT_VAL_SIZE


class AdaptConfig(pydantic.BaseModel):
    """What `mbsearch adapt` is asked to do; each field is one of its options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Path = Field(description="Arch JSON file (e.g. from 'mbsearch export').")
    latency_target: float | None = Field(None, description="Trim until the latency is at most this (ms).")
    latency_reduction: float | None = Field(
        None, description="Or trim by this share of the current latency, e.g. 0.15."
    )
    weights: Path | None = Field(None, description="Trained weights (model.safetensors from 'train').")
    target: str = Field("cpu", description="cpu, cuda, or http://HOST:PORT of 'mbsearch agent'.")
    target_token: str | None = Field(None, repr=False, description="Token of the agent of an http:// target.")
    threads: Annotated[int, Field(ge=1, le=256)] = Field(1, description="Threads for latency timing (local targets).")
    dataset: str | None = Field(None, description="Dataset (default: the one the arch was searched on).")
    data_dir: Path | None = Field(None, description="Dataset folder.")
    val_size: Annotated[int, Field(ge=100)] = Field(
        DEFAULT_VAL_SIZE, description="Validation images that score proposals."
    )
    train_size: Annotated[int, Field(ge=64)] = Field(
        8000, description="Images of the first training (without --weights)."
    )
    finetune_images: Annotated[int, Field(ge=64)] = Field(
        2000, description="Images of each proposal's short fine-tune."
    )
    final_epochs: Annotated[float, Field(ge=0.01, le=100)] = Field(1.0, description="Epochs of the final fine-tune.")
    max_iterations: Annotated[int, Field(ge=1, le=1000)] = Field(30, description="Stop after this many iterations.")
    first_reduction: Annotated[float, Field(ge=0.001, le=0.9)] = Field(
        0.04, description="Share of the start latency the first iteration removes."
    )
    decay: Annotated[float, Field(ge=0.1, le=1.0)] = Field(0.9, description="Each iteration asks this times the last.")
    timing_sessions: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="Sessions whose median is each latency; raise on a noisy device."
    )
    device: str = Field(
        "auto", description="Where to train: auto (a GPU when one is visible), cpu, cuda, cuda:N or mps."
    )
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(0, description="Seed.")
    out: Path | None = Field(None, description="Output folder (default: ARCH without .json + '-adapted').")

    @model_validator(mode="after")
    def _one_goal(self) -> AdaptConfig:
        target, reduction = self.latency_target, self.latency_reduction
        if (target is None) == (reduction is None):
            raise ValueError("give one of --latency-target MS or --latency-reduction SHARE")
        if target is not None and not target > 0:
            raise ValueError(f"--latency-target must be a positive number of ms, got {target}")
        if reduction is not None and not 0 < reduction < 1:
            raise ValueError(f"--latency-reduction must be between 0 and 1 (0.15 = 15% faster), got {reduction}")
        return self

    @property
    def out_dir(self) -> Path:
        return self.out or self.arch.with_name(self.arch.stem + "-adapted")

    def goal_for(self, latency: float) -> float:
        if self.latency_target is not None:
            return self.latency_target
        return latency * (1 - (self.latency_reduction or 0.0))
