"""Visible-patch embedding: mask -> indices, and patch embed + pos embed of the kept patches.

gather_visible backends: "triton" (triton_gather: one fused gather + matmul kernel) and "torch"
(the reference); "auto" takes Triton for CUDA tensors when it is installed. ``validate=False``
skips the checks of index values (a host sync on a GPU) for indices the caller made itself.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._checks import (check_indices, check_mask, check_patch_size, check_same_device,
                      check_tensor, resolve_backend, squeeze_leading, values_checkable)
from ._triton_support import use_triton

_BACKENDS = ("torch", "triton")


def mask_to_indices(img_mask: torch.Tensor, num_keep: Optional[int] = None, *,
                    validate: bool = True):
    """(ids_keep int64 [B, K], ids_restore int64 [B, L]) from a [B, L] mask (1 = hidden).

    ids_keep lists the visible patches in ascending order; ids_restore inverts the order
    "visible ascending, then hidden ascending". K must be the same for every row. With num_keep
    (K, known without looking at the mask: L - int(mask_ratio * L) for CRFR-P masks) the shapes
    are static and nothing is read back to the host; otherwise K is read from the mask.
    """
    check_tensor(img_mask, "img_mask", ndim=2)
    check_mask(img_mask, "img_mask", img_mask.shape, validate)
    L = img_mask.shape[1]
    if num_keep is not None and (isinstance(num_keep, bool) or not isinstance(num_keep, int)
                                 or not 0 <= num_keep <= L):
        raise ValueError(f"num_keep must be an int in [0, {L}], got {num_keep!r}")
    if validate and img_mask.shape[0] and values_checkable():
        kept = (img_mask == 0).sum(dim=1)
        expected = kept[0] if num_keep is None else num_keep
        if bool((kept != expected).any()):
            want = "the same number of" if num_keep is None else f"{num_keep}"
            raise ValueError(f"img_mask must leave {want} patches visible in every row, "
                             f"got visible counts from {int(kept.min())} to {int(kept.max())}")
    return reference.mask_to_indices(img_mask, num_keep)


def gather_visible(images: torch.Tensor, ids_keep: torch.Tensor, weight: torch.Tensor,
                   bias: Optional[torch.Tensor], pos_embed: torch.Tensor,
                   backend: str = "auto", *, validate: bool = True) -> torch.Tensor:
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
    check_indices(ids_keep, "ids_keep", images.shape[0], num_patches, validate)
    chosen = resolve_backend(backend, _BACKENDS, "gather_visible")
    if use_triton(chosen, "gather_visible", images.device, (images, weight, bias, pos_embed)):
        from . import triton_gather  # first use: TRITON_INTERPRET is read when kernels are defined
        return triton_gather.gather_visible(images, ids_keep, weight, bias, pos_embed)
    return reference.gather_visible(images, ids_keep, weight, bias, pos_embed)
