"""Make the FSFM model names known to timm in every process that imports fsfm_fast, at no import cost.

Importing torch and timm takes seconds, and much of fsfm_fast needs neither (``prepare`` and its worker
processes, the synthetic data generators, ``--help``). So ``import fsfm_fast`` registers the models at
once only when timm is already imported; otherwise it leaves a finder on ``sys.meta_path`` that lets
timm's own import run and registers the models right after it (``models/timm_models.py``, ~0.1 s
then). Either way ``timm.create_model("fsfm_vit_base_patch16")`` works after ``import fsfm_fast``,
whichever of the two was imported first.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_REGISTRY = "fsfm_fast.models.timm_models"


def _register() -> None:
    try:
        importlib.import_module(_REGISTRY)
    except Exception as exc:  # noqa: BLE001  (a failure here must not break the user's `import timm`)
        warnings.warn(f"fsfm_fast could not register its models with timm: {type(exc).__name__}: {exc}", stacklevel=2)


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first import of ``timm`` it asks the other finders for timm's spec and
    wraps its loader so that the FSFM models are registered as soon as timm's package has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # once only, and so that find_spec below asks the other finders
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module  # this spec's own loader object: wrapping it changes nothing else

        def exec_module(module):
            exec_timm(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def register_models_with_timm() -> None:
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimmImport())
