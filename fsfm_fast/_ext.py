"""Loader of the compiled extension `fsfm_fast._C`.

The package must work without the extension (a fresh checkout, a failed
build): importing it here, once, turns a missing or broken build into one
warning, and the ops fall back to their PyTorch reference implementations.
"""
from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch, which _C links against)

IMPORT_ERROR: Exception | None = None
_WARNED_CPU_ONLY = False
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


def _warn_cpu_only_build() -> None:
    """Once per process: CUDA tensors, but this build of fsfm_fast._C has no CUDA kernels."""
    global _WARNED_CPU_ONLY
    if _WARNED_CPU_ONLY:
        return
    _WARNED_CPU_ONLY = True
    warnings.warn(
        "fsfm_fast._C was built without CUDA kernels (no nvcc at build time, or FSFM_FORCE_CPU=1): on this "
        "GPU the CRFR-P masks fall back to the PyTorch reference, several times slower. Rebuild with "
        "`pip install --no-build-isolation -e .` where nvcc is found (CUDA_HOME).", RuntimeWarning, stacklevel=3)


def choose_backend(op: str, backend: str, device) -> str:
    """Which implementation of a compiled op runs: "torch" (reference), "cpu" or "cuda".

    ``backend`` is already resolved against the op's allowed names; "auto" takes the compiled
    op for the tensor's device when this build has it, the reference otherwise. An explicit
    backend that cannot run here is an error that says why.
    """
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if not has_extension():
            return "torch"
        if device.type == "cuda":
            if cuda_built():
                return "cuda"
            _warn_cpu_only_build()
            return "torch"
        return "cpu" if device.type in ("cpu", "meta") else "torch"
    if not has_extension():
        raise RuntimeError(f"{op}: backend {backend!r} needs the compiled extension, but {unavailable_reason()}")
    if backend == "cuda" and not cuda_built():
        raise RuntimeError(f"{op}: backend 'cuda' is unavailable: fsfm_fast._C was "
                           "built without CUDA (no nvcc at build time, or FSFM_FORCE_CPU=1)")
    if device.type != backend:
        raise RuntimeError(f"{op}: backend {backend!r} needs parsing on a "
                           f"{backend.upper()} device, got parsing on {device}")
    return backend
