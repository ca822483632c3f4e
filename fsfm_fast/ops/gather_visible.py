"""Visible-patch embedding: mask -> indices, and patch embed + pos embed of the kept patches.

gather_visible backends: "triton" (triton_gather: one fused gather + matmul kernel) and "torch"
(the reference); "auto" takes Triton for CUDA tensors when it is installed.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._checks import (check_indices, check_mask, check_patch_size, check_same_device,
                      check_tensor, resolve_backend, squeeze_leading)
from ._triton_support import check_unique_rows, use_triton

_INDEX_BACKENDS = ("torch",)
_BACKENDS = ("torch", "triton")


def mask_to_indices(img_mask: torch.Tensor, backend: str = "auto"):
    """(ids_keep int64 [B, K], ids_restore int64 [B, L]) from a [B, L] mask (1 = hidden).

    ids_keep lists the visible patches in ascending order; ids_restore inverts the order
    "visible ascending, then hidden ascending". K must be the same for every row.
    """
    check_tensor(img_mask, "img_mask", ndim=2)
    check_mask(img_mask, "img_mask", img_mask.shape)
    if img_mask.shape[0]:
        kept = (img_mask == 0).sum(dim=1)
        if bool((kept != kept[0]).any()):
            raise ValueError(f"img_mask must hide the same number of patches in every row, "
                             f"got visible counts from {int(kept.min())} to {int(kept.max())}")
    resolve_backend(backend, _INDEX_BACKENDS, "mask_to_indices")
    return reference.mask_to_indices(img_mask)


def gather_visible(images: torch.Tensor, ids_keep: torch.Tensor, weight: torch.Tensor,
                   bias: Optional[torch.Tensor], pos_embed: torch.Tensor,
                   backend: str = "auto") -> torch.Tensor:
    """Conv patch embedding of the visible patches only, plus their position embedding.

    images [B, C, H, W]; ids_keep int64 [B, K]; weight [D, C, p, p]; bias [D] or None;
    pos_embed [L, D] or [1, L, D] without the cls row. Returns [B, K, D].
    """
    check_tensor(images, "images", ndim=4, floating=True)
    check_tensor(weight, "weight", ndim=4, floating=True)
    D, C, p, q = weight.shape
    if p != q or C != images.shape[1]:
        raise ValueError(f"weight must have shape (D, {images.shape[1]}, p, p), "
                         f"got {tuple(weight.shape)}")
    check_patch_size(p, images.shape[2], images.shape[3], "images")
    num_patches = (images.shape[2] // p) * (images.shape[3] // p)
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, floating=True)
        if bias.shape[0] != D:
            raise ValueError(f"bias must have shape ({D},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != images.dtype:
            raise TypeError(f"{name} dtype {t.dtype} differs from images dtype {images.dtype}")
    pos_embed = squeeze_leading(pos_embed, "pos_embed", num_patches, D)
    check_same_device("gather_visible", images=images, ids_keep=ids_keep, weight=weight,
                      bias=bias, pos_embed=pos_embed)
    check_indices(ids_keep, "ids_keep", images.shape[0], num_patches)
    chosen = resolve_backend(backend, _BACKENDS, "gather_visible")
    if use_triton(chosen, "gather_visible", images.device, (images, weight, bias, pos_embed)):
        check_unique_rows(ids_keep, "ids_keep", "gather_visible")
        from . import triton_gather  # first use: TRITON_INTERPRET is read when kernels are defined
        return triton_gather.gather_visible(images, ids_keep, weight, bias, pos_embed)
    return reference.gather_visible(images, ids_keep, weight, bias, pos_embed)
