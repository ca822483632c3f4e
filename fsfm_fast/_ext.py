"""Loader of the compiled extension `fsfm_fast._C`.

The package must work without the extension (a fresh checkout, a failed
build): importing it here, once, turns a missing or broken build into one
warning, and the ops fall back to their PyTorch reference implementations.
"""
from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch, which _C links against)

IMPORT_ERROR: Exception | None = None
try:
    from fsfm_fast import _C as C
except (ImportError, OSError) as error:  # OSError: a .so that cannot be loaded
    C = None
    IMPORT_ERROR = error
    warnings.warn(
        f"fsfm_fast._C could not be imported ({type(error).__name__}: {error}); the PyTorch "
        "reference ops are used instead. Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_extension() -> bool:
    """True when fsfm_fast._C is loaded and its ops are registered under torch.ops.fsfm_fast."""
    return C is not None


def cuda_built() -> bool:
    """True when the loaded extension holds the CUDA kernels (a GPU may still be absent)."""
    return C is not None and bool(C.cuda_built())


def unavailable_reason() -> str:
    """Why the extension is missing, for error messages; empty when it is loaded."""
    if C is not None:
        return ""
    return f"fsfm_fast._C failed to import ({type(IMPORT_ERROR).__name__}: {IMPORT_ERROR})"
