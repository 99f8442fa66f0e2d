"""How much a candidate is trained, and the default proxy: written once, read by the settings and the loop.
No torch, so the command line can describe its options without loading it."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_VAL_SIZE = 10_000  # validation images held out of the training set


@dataclass(frozen=True)
class Budget:
    """How much a candidate is trained."""

    # The default proxy, chosen by benchmarks/fidelity.py; RunConfig's defaults are read from here.
    epochs: float = 1.0
    train_size: int = 8000
    batch_size: int = 64
    lr: float = 0.003
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    augment: bool = False


DEFAULT_PROXY = Budget()
