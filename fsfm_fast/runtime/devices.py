"""Which device a process runs on and in which precision: the ``--device`` and ``--precision`` flags."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .cli import UsageError
from .distributed import DistInfo

# --precision's names (runtime/flags.PRECISIONS lists them for the parsers, which must not import torch)
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}



def device_type(name: str) -> str:
    """"cuda" or "cpu": what ``--device name`` will run on, before any process group exists."""
    return "cuda" if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()) else "cpu"


def check_device(name: str) -> torch.device:
    """What ``--device name`` asks for, refused in one line when this machine cannot give it: the
    validator of the flag in every verb (``auto`` is the CPU here; ``resolve_device`` picks the GPU)."""
    try:
        device = torch.device("cpu" if name == "auto" else name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: fsfm_fast runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def resolve_device(name: str, info: DistInfo = DistInfo()) -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU; ``cuda`` means this rank's GPU."""
    device = check_device("cuda" if name == "auto" and torch.cuda.is_available() else name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` (``auto``: bf16 on CUDA, fp32 elsewhere); None for fp32."""
    if precision not in ("auto", *AUTOCAST_DTYPES):
        raise UsageError(f"--precision must be one of auto, {', '.join(AUTOCAST_DTYPES)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return AUTOCAST_DTYPES[precision]


def fused(optimizer, params, **kwargs) -> torch.optim.Optimizer:
    """``optimizer(params, **kwargs)`` with the fused kernel where this torch build has it for the device,
    else the multi-tensor (foreach) one."""
    try:
        return optimizer(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return optimizer(params, foreach=True, **kwargs)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A fresh autocast context for ``dtype`` (a no-op for fp32)."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()
