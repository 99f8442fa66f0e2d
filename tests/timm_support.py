"""Import timm without torchvision: timm imports torchvision at import time, and torchvision's wheels do
not load beside the CPU torch used here. A stand-in `torchvision` (any module, any attribute is a dummy
class) is enough for `timm.models` to import and build MobileNetV3. Test-only; never used by mbsearch."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _DummyMeta(type):
    def __getattr__(cls, name: str):  # InterpolationMode.NEAREST and the like
        if name.startswith("__"):
            raise AttributeError(name)
        return _DummyMeta(name, (_Dummy,), {})


class _Dummy(metaclass=_DummyMeta):
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return _Dummy()


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _DummyMeta(name, (_Dummy,), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0"
        return module

    def exec_module(self, module) -> None:
        pass


def import_timm():
    """timm, imported with the torchvision stand-in in place."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    import timm.models

    return timm
