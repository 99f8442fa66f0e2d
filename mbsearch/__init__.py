"""mbsearch: hardware-aware neural architecture search over MobileNet-style spaces.

The public names load lazily, so that `mbsearch.device.agent` (which runs on small devices with onnxruntime and
numpy only) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "open_study": "mbsearch.api",
    "Study": "mbsearch.api",
    "Arch": "mbsearch.architecture.arch",
    "Block": "mbsearch.architecture.arch",
    "load_arch": "mbsearch.architecture.arch",
    "BadInput": "mbsearch.errors",
    "MbsearchError": "mbsearch.errors",
    "RuntimeFailure": "mbsearch.errors",
    "build_model": "mbsearch.nn.model",
    "sample_arch": "mbsearch.architecture.sample",
    "SearchSpace": "mbsearch.architecture.space",
    "load_space": "mbsearch.architecture.space",
    "reference_arch": "mbsearch.architecture.zoo",
    "reference_names": "mbsearch.architecture.zoo",
}
__all__ = sorted([*_PUBLIC, "search"])  # resolved by __getattr__
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "search":  # the search package, callable as mbsearch.search(...) (see mbsearch/search/__init__.py)
        return importlib.import_module("mbsearch.search")
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mbsearch' has no attribute {name!r}")
