"""Pieces every fsfm_fast Triton kernel module shares: dtype mapping, the matmul step, launch checks.

Imported only by the kernel modules, which the public ops import on first Triton use.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def tl_dtype(dtype: torch.dtype):
    return _TL_DTYPES[dtype]


def is_interpreted(kernel) -> bool:
    return isinstance(kernel, InterpretedFunction)


def check_launchable(kernel, device: torch.device, op: str) -> None:
    """CPU tensors need kernels decorated under the interpreter: say so instead of segfaulting."""
    if device.type == "cpu" and not is_interpreted(kernel):
        raise RuntimeError(f"{op}: the Triton kernels were built for the GPU, so they cannot take CPU "
                           f"tensors; set TRITON_INTERPRET=1 before fsfm_fast's Triton kernels are "
                           f"first used to run them in the interpreter")


def on_device(t: torch.Tensor):
    """Make the tensor's GPU current for a launch, as the C++ ops' device guard does: Triton
    launches on the current device, which under ``--device cuda:N`` need not be the tensor's."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else nullcontext()


def dot_config(compute_dtype: torch.dtype, kernel) -> dict:
    """Constexprs of `dot_acc` for operands rounded to compute_dtype.

    fp32 follows torch's TF32 switch, so the kernel rounds like the matmul it replaces; 16-bit
    operands get Triton's default precision, which only concerns fp32. The interpreter multiplies
    bfloat16 bit patterns as integers (triton-lang/triton#11584): there the operands are rounded
    to bfloat16 and multiplied in fp32, which is the same arithmetic.
    """
    exact = compute_dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    return dict(DOT_DTYPE=tl_dtype(compute_dtype),
                DOT_UPCAST=is_interpreted(kernel) and compute_dtype == torch.bfloat16,
                DOT_PRECISION="ieee" if exact else "tf32")


@triton.jit
def dot_acc(a, b, acc, DOT_DTYPE: tl.constexpr, DOT_UPCAST: tl.constexpr,
            DOT_PRECISION: tl.constexpr):
    """acc + a @ b with a and b rounded to DOT_DTYPE, accumulated in fp32."""
    a = a.to(DOT_DTYPE)
    b = b.to(DOT_DTYPE)
    if DOT_UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


def autocast_dtype(device: torch.device):
    """The autocast dtype active for device, or None: what F.linear would compute in."""
    kind = device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1
