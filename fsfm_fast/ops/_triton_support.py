"""When the Triton kernels of gather_visible, restore_masked and fsfm_loss may run.

Kept apart from the kernel modules so that deciding costs no `import triton`: the kernels are
imported on first use only, which also lets tests set TRITON_INTERPRET=1 before the kernels are
decorated (Triton reads it at decoration time, not at launch).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Iterable, Optional

import torch

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Looked up once: dynamo then sees a constant instead of an import-system call.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """TRITON_INTERPRET as Triton reads it: kernels then run on the CPU with numpy."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _floats(tensors: Iterable[Optional[torch.Tensor]]):
    return [t for t in tensors if t is not None and t.is_floating_point()]


def use_triton(backend: str, op: str, device: torch.device,
               tensors: Iterable[Optional[torch.Tensor]]) -> bool:
    """True when `op` must run its Triton kernels.

    backend is the resolved one ("auto", "torch" or "triton"). "auto" takes Triton for CUDA tensors
    of a kernel dtype when Triton is installed and the reference otherwise (float64 stays exact
    there); "triton" insists and says why it cannot.
    """
    if backend == "torch":
        return False
    floats = _floats(tensors)
    dtypes_ok = all(t.dtype in TRITON_DTYPES for t in floats)
    if backend == "auto":
        return _TRITON_FOUND and device.type == "cuda" and dtypes_ok
    if not _TRITON_FOUND:
        raise RuntimeError(f"{op}: backend 'triton' needs the triton package, which is not installed")
    if not dtypes_ok:
        found = sorted({str(t.dtype) for t in floats if t.dtype not in TRITON_DTYPES})
        raise TypeError(f"{op}: the Triton kernels take {[str(d) for d in TRITON_DTYPES]}, got "
                        f"{', '.join(found)}; use backend='torch' for these dtypes")
    if device.type == "cuda":
        return True
    if device.type == "cpu" and interpreter_requested():
        return True
    raise RuntimeError(f"{op}: backend 'triton' needs CUDA tensors (got {device}); on the CPU it runs "
                       f"only under the Triton interpreter, TRITON_INTERPRET=1 set before fsfm_fast's "
                       f"Triton kernels are first used")
