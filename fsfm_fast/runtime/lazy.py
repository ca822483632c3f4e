"""Package namespaces whose names are imported on first use (PEP 562): a package can list what it
offers without importing torch for a caller that needs one torch-free submodule (a verb's parser)."""
from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_names(namespace: dict, homes: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], object], list[str]]:
    """``(__getattr__, __all__)`` for the package whose ``globals()`` is ``namespace``: its names live
    in the submodules that ``homes`` lists, each imported when one of its names is first asked for."""
    home_of = {name: module for module, names in homes.items() for name in names}
    package = namespace["__name__"]

    def __getattr__(name: str):
        if name not in home_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home_of[name]}"), name)
        namespace[name] = value  # the next look-up is a plain one
        return value

    return __getattr__, sorted(home_of)
