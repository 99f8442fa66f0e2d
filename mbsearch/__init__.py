"""mbsearch: hardware-aware neural architecture search over MobileNet-style spaces."""

from mbsearch.arch import Arch, Block, load_arch
from mbsearch.errors import BadInput, MbsearchError, RuntimeFailure
from mbsearch.model import build_model
from mbsearch.sample import sample_arch
from mbsearch.space import SearchSpace, load_space
from mbsearch.zoo import reference_arch, reference_names

__all__ = [
    "Arch",
    "BadInput",
    "Block",
    "MbsearchError",
    "RuntimeFailure",
    "SearchSpace",
    "build_model",
    "load_arch",
    "load_space",
    "reference_arch",
    "reference_names",
    "sample_arch",
]
__version__ = "0.1.0"
