"""Input validation and backend choice shared by the public ops.

Every public op checks its inputs here before any work starts, so a bad call fails with a
message that names the tensor, instead of a shape error deep inside a kernel. Checks of shapes,
dtypes and devices are free; checks of tensor *values* read the tensor back to the host, which on
a GPU stalls kernel launch. The public ops run both by default; a caller that produced its inputs
itself (the training step) passes ``validate=False`` and skips the value checks.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import torch

BACKEND_ENV = "FSFM_OPS_BACKEND"
KNOWN_BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")
MASK_DTYPES = (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32,
               torch.float64)


# Ops whose compiled or Triton implementation failed the start-up self-check (ops.selfcheck), with
# the reason: "auto" resolves to the reference for them for the rest of the process.
FALLBACKS: dict[str, str] = {}


def env_backend() -> Optional[str]:
    """The backend forced by FSFM_OPS_BACKEND, or None when it is unset or empty."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not value:
        return None
    if value not in KNOWN_BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r} is not a backend; use one of {KNOWN_BACKENDS}")
    return value


def resolve_backend(backend: str, supported: Sequence[str], op: str) -> str:
    """The backend to run: an explicit argument wins; with "auto", FSFM_OPS_BACKEND decides
    when it names a backend this op has (so forcing "cuda" for compiled ops leaves pure-PyTorch
    ops alone); otherwise "auto"."""
    allowed = ("auto",) + tuple(supported)
    if not isinstance(backend, str) or backend not in allowed:
        raise ValueError(f"{op}: backend must be one of {allowed}, got {backend!r}")
    if backend == "auto" and op in FALLBACKS:
        return "torch"
    if backend == "auto":
        forced = env_backend()
        if forced in supported:
            return forced
    return backend


def values_checkable() -> bool:
    """Checks of tensor contents read them back to the host: skipped while torch.compile traces,
    where they would break the graph (the eager run of the same code checked them)."""
    return not torch.compiler.is_compiling()


def check_tensor(t, name: str, ndim: Optional[int] = None,
                 dtypes: Optional[Iterable[torch.dtype]] = None, floating: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if dtypes is not None and t.dtype not in tuple(dtypes):
        raise TypeError(f"{name} must have dtype in {tuple(dtypes)}, got {t.dtype}")


def check_same_device(op: str, **tensors) -> None:
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {name: t.device for name, t in present.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")


def check_patch_size(patch_size, height: int, width: int, name: str) -> None:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide the height and width of {name}, "
                         f"got {height}x{width}")


def check_parsing(parsing, patch_size, num_labels: int = 11) -> None:
    """A uint8 [B, H, W] parsing map with labels 0..num_labels-1 tiled by patch_size."""
    check_tensor(parsing, "parsing", ndim=3, dtypes=(torch.uint8,))
    check_patch_size(patch_size, parsing.shape[1], parsing.shape[2], "parsing")
    if parsing.numel():
        top = int(parsing.max())
        if top >= num_labels:
            raise ValueError(f"parsing: labels must be in 0..{num_labels - 1}, "
                             f"found max label {top}")


def fake_patch_grid(parsing, patch_size: int) -> tuple[int, int]:
    """(batch, patches per image) of a compiled op's parsing input, as torch._check rules that a
    FakeTensor / torch.compile trace can follow (the compiled ops enforce the same at run time)."""
    torch._check(parsing.dim() == 3, lambda: "parsing must be a 3-D [B, H, W] tensor")
    torch._check(parsing.dtype == torch.uint8, lambda: "parsing must have dtype uint8")
    torch._check(patch_size > 0, lambda: "patch_size must be positive")
    batch, height, width = parsing.shape
    torch._check(height % patch_size == 0, lambda: "parsing height must be divisible by patch_size")
    torch._check(width % patch_size == 0, lambda: "parsing width must be divisible by patch_size")
    return batch, (height // patch_size) * (width // patch_size)


def check_mask_ratio(mask_ratio) -> None:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) \
            or not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must be a number in (0, 1), got {mask_ratio!r}")


def check_mask(mask, name: str, shape: Sequence[int], validate: bool = True) -> None:
    """A [B, L] mask of bool, uint8 or float holding only 0 and 1 (1 = hidden)."""
    check_tensor(mask, name, ndim=2, dtypes=MASK_DTYPES)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    if validate and mask.dtype != torch.bool and values_checkable() \
            and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"{name} must hold only 0 and 1 (1 = hidden)")


def check_indices(ids, name: str, batch: int, upper: int, validate: bool = True) -> None:
    """An int64 [batch, N] index tensor with values in [0, upper), no value twice in a row.

    Every backend refuses repeats: the reference would silently copy a token twice, and the
    Triton backwards scatter one gradient row per index, so a repeated one would lose one.
    """
    check_tensor(ids, name, ndim=2, dtypes=(torch.int64,))
    if ids.shape[0] != batch:
        raise ValueError(f"{name} must have batch size {batch}, got shape {tuple(ids.shape)}")
    if not (validate and ids.numel() and values_checkable()):
        return
    if int(ids.min()) < 0 or int(ids.max()) >= upper:
        raise ValueError(f"{name} values must be in [0, {upper}), "
                         f"got range [{int(ids.min())}, {int(ids.max())}]")
    ordered = ids.sort(dim=1).values
    if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise ValueError(f"{name} repeats an index within a row; each row must list distinct "
                         f"patches (as mask_to_indices gives)")


def squeeze_leading(t: torch.Tensor, name: str, rows: int, dim: int) -> torch.Tensor:
    """Accept [rows, dim] or [1, rows, dim] (how models store position embeddings)."""
    check_tensor(t, name, floating=True)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != (rows, dim):
        raise ValueError(f"{name} must have shape ({rows}, {dim}) or (1, {rows}, {dim}), "
                         f"got {tuple(t.shape)}")
    return t
