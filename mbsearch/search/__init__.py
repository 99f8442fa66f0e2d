"""The search: objective, loop, rungs, workers and progress.

`mbsearch.search` is also the public call `mbsearch.search(space="v3", ...)` (mbsearch.api.search): a package
that a function of the same name would be replaced by (importing a submodule sets the package's attribute), so
the package itself is callable. The call is looked up by name when made: the search wing's modules never
import the API above them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, **settings: Any) -> Any:
        """Run (or resume) a search from Python: see mbsearch.api.search."""
        return importlib.import_module("mbsearch.api").search(**settings)


sys.modules[__name__].__class__ = _CallablePackage
