"""Per-patch label presence: which LaPa-11 labels occur in each patch.

The first step of CRFR-P masking. Backends: "cuda" and "cpu" run the
compiled op `torch.ops.fsfm_fast.region_presence` (kernels/, csrc/), "torch"
the reference. "auto" takes the compiled op for the tensor's device when the
extension has it, else the reference; FSFM_OPS_BACKEND overrides "auto".
"""
from __future__ import annotations

import torch

from .. import _ext
from . import reference
from ._checks import check_parsing, check_patch_size, check_tensor, fake_patch_grid, resolve_backend

_BACKENDS = ("cpu", "cuda", "torch")
_OP_NAME = "fsfm_fast::region_presence"


def region_presence(parsing: torch.Tensor, patch_size: int, backend: str = "auto") -> torch.Tensor:
    """int16 [B, (H/p)*(W/p)] masks of a uint8 [B, H, W] parsing batch: bit k is set iff label k
    occurs in the patch; patches in row-major order."""
    check_tensor(parsing, "parsing", ndim=3, dtypes=(torch.uint8,))
    check_patch_size(patch_size, parsing.shape[1], parsing.shape[2], "parsing")
    chosen = _ext.choose_backend("region_presence", resolve_backend(backend, _BACKENDS, "region_presence"),
                             parsing.device)
    if chosen == "torch":
        check_parsing(parsing, patch_size)
        return reference.region_presence(parsing, patch_size)
    # The compiled op checks the label range itself, in the same pass (CPU) or
    # with one reduction before its launch (CUDA).
    return torch.ops.fsfm_fast.region_presence(parsing, patch_size)


def _region_presence_fake(parsing: torch.Tensor, patch_size: int) -> torch.Tensor:
    return parsing.new_empty(fake_patch_grid(parsing, patch_size), dtype=torch.int16)


if _ext.has_extension():
    torch.library.register_fake(_OP_NAME)(_region_presence_fake)
