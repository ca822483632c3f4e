"""Restore the full token sequence: visible tokens back in place, mask_token elsewhere.

Backends: "triton" (triton_restore: one fused kernel each way) and "torch" (the reference);
"auto" takes Triton for CUDA tensors when it is installed.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._checks import (check_indices, check_same_device, check_tensor, resolve_backend,
                      squeeze_leading)
from ._triton_support import use_triton

_BACKENDS = ("torch", "triton")


def restore_masked(tokens: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor,
                   pos_embed: Optional[torch.Tensor] = None,
                   backend: str = "auto", *, validate: bool = True) -> torch.Tensor:
    """tokens [B, K+1, D] (cls first) -> [B, L+1, D] in patch order, plus pos_embed [L+1, D]
    (or [1, L+1, D]) when given. mask_token may have any shape holding D elements.
    ids_restore must be a permutation of 0..L-1 per row; ``validate=False`` skips checking that
    (a host sync on a GPU) for indices the caller made itself."""
    check_tensor(tokens, "tokens", ndim=3, floating=True)
    B, K1, D = tokens.shape
    if K1 < 1:
        raise ValueError(f"tokens must hold the cls token first, got shape {tuple(tokens.shape)}")
    check_tensor(ids_restore, "ids_restore", ndim=2)
    num_patches = ids_restore.shape[1]
    if num_patches < K1 - 1:
        raise ValueError(f"ids_restore covers {num_patches} patches but tokens hold {K1 - 1} "
                         f"visible ones")
    check_indices(ids_restore, "ids_restore", B, num_patches, validate)
    check_tensor(mask_token, "mask_token", floating=True)
    if mask_token.numel() != D:
        raise ValueError(f"mask_token must hold {D} elements, got shape {tuple(mask_token.shape)}")
    if pos_embed is not None:
        pos_embed = squeeze_leading(pos_embed, "pos_embed", num_patches + 1, D)
    check_same_device("restore_masked", tokens=tokens, ids_restore=ids_restore,
                      mask_token=mask_token, pos_embed=pos_embed)
    chosen = resolve_backend(backend, _BACKENDS, "restore_masked")
    if use_triton(chosen, "restore_masked", tokens.device, (tokens, mask_token, pos_embed)):
        from . import triton_restore  # first use: TRITON_INTERPRET is read when kernels are defined
        return triton_restore.restore_masked(tokens, ids_restore, mask_token, pos_embed)
    return reference.restore_masked(tokens, ids_restore, mask_token, pos_embed)
