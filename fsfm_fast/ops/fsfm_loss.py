"""The 3C pretraining loss (SPEC section 4) and the patch layout its targets use.

fsfm_loss backends: "triton" (triton_loss: fused forward and backward over the hidden patches)
and "torch" (the reference); "auto" takes Triton for CUDA tensors when it is installed.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._checks import (check_mask, check_patch_size, check_same_device, check_tensor,
                      resolve_backend, values_checkable)
from ._triton_support import use_triton
from .reference import FSFMLoss

_BACKENDS = ("torch", "triton")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, L, p*p*C], patches row-major, each in (row, col, channel) order."""
    check_tensor(images, "images", ndim=4)
    check_patch_size(patch_size, images.shape[2], images.shape[3], "images")
    return reference.patchify(images, patch_size)


def unpatchify(x: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of patchify: [B, L, p*p*C] -> [B, C, height, width]."""
    check_tensor(x, "x", ndim=3)
    check_patch_size(patch_size, height, width, "the output")
    expected = (height // patch_size) * (width // patch_size)
    if x.shape[1] != expected or x.shape[2] % (patch_size * patch_size):
        raise ValueError(f"x must have shape (B, {expected}, p*p*C) for a {height}x{width} image "
                         f"and patch {patch_size}, got {tuple(x.shape)}")
    return reference.unpatchify(x, patch_size, height, width)


def _check_features(online, target, batch: int) -> None:
    if (online is None) != (target is None):
        raise ValueError("online_features and target_features must be given together")
    if online is None:
        return
    for name, t in (("online_features", online), ("target_features", target)):
        check_tensor(t, name, ndim=2, floating=True)
        if t.shape[0] != batch:
            raise ValueError(f"{name} must have batch size {batch}, got {tuple(t.shape)}")
    if online.shape != target.shape:
        raise ValueError(f"online_features {tuple(online.shape)} and target_features "
                         f"{tuple(target.shape)} must have the same shape")


def _check_region_inside(img_mask: torch.Tensor, fr_mask: torch.Tensor) -> None:
    """fr_mask must be a subset of img_mask: the fully hidden region is hidden. Checked on the
    device where a host read would stall the GPU (a failure is a device-side assert)."""
    outside = (fr_mask != 0) & (img_mask == 0)
    if outside.device.type == "cuda":
        torch._assert_async(~outside.any(), "fsfm_loss: fr_mask marks patches that img_mask does not hide")
    elif bool(outside.any()):
        rows = sorted({int(b) for b in outside.nonzero()[:, 0][:5]})
        raise ValueError(f"fsfm_loss: fr_mask must be a subset of img_mask (the covered region is hidden), "
                         f"but it marks visible patches in image(s) {rows}")


def fsfm_loss(pred: torch.Tensor, images: torch.Tensor, img_mask: torch.Tensor,
              fr_mask: torch.Tensor, online_features: Optional[torch.Tensor] = None,
              target_features: Optional[torch.Tensor] = None, *, patch_size: int,
              norm_pix_loss: bool = True, weight_sfr: float = 0.007, weight_cl: float = 0.1,
              cl_loss: str = "simsiam", backend: str = "auto", validate: bool = True) -> FSFMLoss:
    """FSFMLoss(total, rec_all, rec_sfr, cl) as fp32 scalars.

    rec_all / rec_sfr: mean per-patch squared error over the hidden patches / the fully hidden
    region (0 when fr_mask is empty); cl: distillation loss, 0 without features. target_features
    never receive gradient. An empty batch is an error: there is no loss to define. ``validate``
    checks the mask values (0/1, fr_mask inside img_mask); the training step, which made the
    masks itself, passes False.
    """
    check_tensor(images, "images", ndim=4, floating=True)
    check_patch_size(patch_size, images.shape[2], images.shape[3], "images")
    B, C, H, W = images.shape
    if B == 0:
        raise ValueError("fsfm_loss: the batch is empty (0 images); a loss needs at least one image")
    num_patches = (H // patch_size) * (W // patch_size)
    check_tensor(pred, "pred", ndim=3, floating=True)
    expected = (B, num_patches, patch_size * patch_size * C)
    if tuple(pred.shape) != expected:
        raise ValueError(f"pred must have shape {expected}, got {tuple(pred.shape)}")
    check_mask(img_mask, "img_mask", (B, num_patches), validate)
    check_mask(fr_mask, "fr_mask", (B, num_patches), validate)
    _check_features(online_features, target_features, B)
    if cl_loss not in reference.CL_LOSSES:
        raise ValueError(f"cl_loss must be one of {reference.CL_LOSSES}, got {cl_loss!r}")
    check_same_device("fsfm_loss", pred=pred, images=images, img_mask=img_mask, fr_mask=fr_mask,
                      online_features=online_features, target_features=target_features)
    if validate and values_checkable():
        _check_region_inside(img_mask, fr_mask)
    chosen = resolve_backend(backend, _BACKENDS, "fsfm_loss")
    # Masks are only compared with 0 in the kernels, so their dtype never rules Triton out.
    if use_triton(chosen, "fsfm_loss", pred.device,
                  (pred, images, online_features, target_features)):
        from . import triton_loss  # first use: TRITON_INTERPRET is read when kernels are defined
        out = triton_loss.fsfm_loss(pred, images, img_mask, fr_mask, online_features,
                                    target_features, patch_size, norm_pix_loss, weight_sfr,
                                    weight_cl, cl_loss)
        return FSFMLoss(out[0], out[1], out[2], out[3])
    return reference.fsfm_loss(pred, images, img_mask, fr_mask, online_features,
                               target_features, patch_size=patch_size,
                               norm_pix_loss=norm_pix_loss, weight_sfr=weight_sfr,
                               weight_cl=weight_cl, cl_loss=cl_loss)
