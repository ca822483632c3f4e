"""Plain-PyTorch definition of every fsfm_fast op.

This file is the semantics: the CPU fallback, and what every other backend is tested against.
Functions here trust their inputs; the public wrappers in the sibling modules validate first.
Everything is batched; the only Python loops run over the fixed label set or the 8 region groups.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..data.labels import NUM_LABELS

GROUP_NAMES = ("brows", "eyes", "nose", "mouth", "boundary", "hair", "skin", "background")
NUM_REGIONS = 6  # the region R is drawn from the first six groups
STRATEGIES = ("crfr_p", "crfr_r", "fr", "random")
REGION_MODES = ("batch", "image")
CL_LOSSES = ("simsiam", "byol")

_SKIN, _HAIR, _BACKGROUND = 1, 10, 0
_GROUP_LABELS = {
    "brows": (2, 3),
    "eyes": (4, 5),
    "nose": (6,),
    "mouth": (7, 8, 9),
    "hair": (_HAIR,),
    "skin": (_SKIN,),
    "background": (_BACKGROUND,),
}


class FSFMLoss(NamedTuple):
    total: torch.Tensor
    rec_all: torch.Tensor
    rec_sfr: torch.Tensor
    cl: torch.Tensor


# --------------------------------------------------------------------------- region maps

def region_presence(parsing: torch.Tensor, patch_size: int) -> torch.Tensor:
    """int16 [B, L]: bit k set iff label k occurs in the patch (patches row-major)."""
    B, H, W = parsing.shape
    p = patch_size
    h, w = H // p, W // p
    patches = parsing.reshape(B, h, p, w, p).permute(0, 1, 3, 2, 4).reshape(B, h * w, p * p)
    bits = torch.zeros(B, h * w, dtype=torch.int16, device=parsing.device)
    for label in range(NUM_LABELS):
        present = (patches == label).any(dim=-1).to(torch.int16)
        bits |= present << label
    return bits


def _has_any(presence: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    return (presence & sum(1 << label for label in labels)) != 0


def group_touch(presence: torch.Tensor) -> torch.Tensor:
    """bool [B, 8, L]: which patches touch each group, in GROUP_NAMES order."""
    skin = _has_any(presence, (_SKIN,))
    touches = []
    for name in GROUP_NAMES:
        if name == "boundary":
            touches.append(skin & _has_any(presence, (_HAIR, _BACKGROUND)))
        else:
            touches.append(_has_any(presence, _GROUP_LABELS[name]))
    return torch.stack(touches, dim=1)


# --------------------------------------------------------------------------- masking

def _choose_random(candidates: torch.Tensor, k: torch.Tensor,
                   generator: Optional[torch.Generator]) -> torch.Tensor:
    """Per row, a uniformly random subset of k[b] of the True entries (all of them if fewer).

    Independent uniform keys give every ordering of the candidates the same probability, so the
    k smallest keys are a uniform k-subset; non-candidates get +inf keys and rank last.
    """
    keys = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    keys = keys.masked_fill(~candidates, float("inf"))
    rank = keys.argsort(dim=1).argsort(dim=1)
    return candidates & (rank < k.unsqueeze(1))


def _draw_region(batch: int, region: str, region_index, generator, device) -> torch.Tensor:
    if region_index is not None:
        return torch.as_tensor(region_index, dtype=torch.long, device=device).expand(batch)
    draws = 1 if region == "batch" else batch
    drawn = torch.randint(0, NUM_REGIONS, (draws,), generator=generator, device=device)
    return drawn.expand(batch)


def _region_patches(touch: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(touch.shape[0], device=touch.device)
    return touch[rows, region]


def _proportional_walk(touch: torch.Tensor, fr: torch.Tensor, num_mask: int,
                       generator: Optional[torch.Generator]) -> torch.Tensor:
    """CRFR-P step 2 before the count fix-up: hide fr, then round(ratio * #candidates) per group.

    Walking all eight groups equals walking the seven that are not R: R's patches are claimed
    from the start, so R has no candidates. Rows with |fr| >= M get meaningless output here.
    Float64 keeps ratio and round() bit-identical to Python's arithmetic.
    """
    num_patches = fr.shape[1]
    n_fr = fr.sum(dim=1)
    ratio = (num_mask - n_fr).clamp(min=0).double() / (num_patches - n_fr).clamp(min=1).double()
    img_mask = fr.clone()
    claimed = fr.clone()
    for g in range(len(GROUP_NAMES)):
        candidates = touch[:, g] & ~claimed
        k = torch.round(ratio * candidates.sum(dim=1).double()).long()
        img_mask |= _choose_random(candidates, k, generator)
        claimed |= candidates
    return img_mask


def _fix_count(img_mask: torch.Tensor, fr: torch.Tensor, num_mask: int,
               generator: Optional[torch.Generator]) -> torch.Tensor:
    """Hide or unhide random patches until exactly num_mask are hidden; fr stays hidden."""
    count = img_mask.sum(dim=1)
    add = _choose_random(~img_mask, (num_mask - count).clamp(min=0), generator)
    drop = _choose_random(img_mask & ~fr, (count - num_mask).clamp(min=0), generator)
    return (img_mask | add) & ~drop


def _fill_random(img_mask: torch.Tensor, num_mask: int,
                 generator: Optional[torch.Generator]) -> torch.Tensor:
    """Hide uniformly random not-yet-hidden patches until num_mask are hidden."""
    need = (num_mask - img_mask.sum(dim=1)).clamp(min=0)
    return img_mask | _choose_random(~img_mask, need, generator)


def _whole_groups(touch: torch.Tensor, fr: torch.Tensor, num_mask: int,
                  generator: Optional[torch.Generator]) -> torch.Tensor:
    """'fr' strategy: after R, hide whole regions in a random order per image until M is reached."""
    batch = fr.shape[0]
    order = torch.rand(batch, NUM_REGIONS, generator=generator, device=fr.device).argsort(dim=1)
    img_mask = fr.clone()
    for j in range(NUM_REGIONS):
        candidates = _region_patches(touch, order[:, j]) & ~img_mask
        need = (num_mask - img_mask.sum(dim=1)).clamp(min=0)
        img_mask |= _choose_random(candidates, need, generator)
    return _fill_random(img_mask, num_mask, generator)


def _shrink_region(fr: torch.Tensor, num_mask: int,
                   generator: Optional[torch.Generator]) -> torch.Tensor:
    """CRFR-P step 3: unhide |fr| - M random patches of fr."""
    excess = (fr.sum(dim=1) - num_mask).clamp(min=0)
    return fr & ~_choose_random(fr, excess, generator)


def num_masked(mask_ratio: float, num_patches: int) -> int:
    """M = int(mask_ratio * L) with Python float64 arithmetic (0.29 * 100 gives 28)."""
    return int(float(mask_ratio) * num_patches)


def crfrp_mask(parsing: torch.Tensor, patch_size: int = 16, mask_ratio: float = 0.75, *,
               strategy: str = "crfr_p", region: str = "batch",
               region_index: Union[int, torch.Tensor, None] = None,
               generator: Optional[torch.Generator] = None):
    """(img_mask, fr_mask), both bool [B, L], True = hidden; exactly M hidden per row."""
    if strategy not in STRATEGIES:
        raise ValueError(f"crfrp_mask: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if region not in REGION_MODES:
        raise ValueError(f"crfrp_mask: region must be one of {REGION_MODES}, got {region!r}")
    touch = group_touch(region_presence(parsing, patch_size))
    batch, num_patches = touch.shape[0], touch.shape[2]
    num_mask = num_masked(mask_ratio, num_patches)

    if strategy == "random":
        everything = torch.ones(batch, num_patches, dtype=torch.bool, device=parsing.device)
        img_mask = _fill_random(~everything, num_mask, generator)
        return img_mask, torch.zeros_like(img_mask)

    fr = _region_patches(touch, _draw_region(batch, region, region_index, generator,
                                             parsing.device))
    if strategy == "crfr_p":
        fitted = _fix_count(_proportional_walk(touch, fr, num_mask, generator), fr, num_mask,
                            generator)
    elif strategy == "crfr_r":
        fitted = _fill_random(fr, num_mask, generator)
    else:
        fitted = _whole_groups(touch, fr, num_mask, generator)
    shrunk = _shrink_region(fr, num_mask, generator)

    fits = (fr.sum(dim=1) < num_mask).unsqueeze(1)
    img_mask = torch.where(fits, fitted, shrunk)
    fr_mask = torch.where(fits, fr, shrunk)
    return img_mask, fr_mask


def mask_to_indices(img_mask: torch.Tensor, num_keep: Optional[int] = None):
    """(ids_keep [B, K], ids_restore [B, L]): visible patches first, then hidden, each ascending.

    K is num_keep when given (static shapes, nothing read back), else read from the first row.
    """
    hidden = (img_mask != 0).to(torch.int8)
    ids_shuffle = hidden.argsort(dim=1, stable=True)
    if num_keep is None:
        num_keep = img_mask.shape[1] - int(hidden[0].sum()) if img_mask.shape[0] else 0
    ids_restore = ids_shuffle.argsort(dim=1)
    return ids_shuffle[:, :num_keep], ids_restore


# --------------------------------------------------------------------------- tokens

def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, L, p*p*C], each patch flattened in (row, col, channel) order."""
    B, C, H, W = images.shape
    p = patch_size
    h, w = H // p, W // p
    x = images.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of patchify."""
    B = x.shape[0]
    p = patch_size
    h, w = height // p, width // p
    C = x.shape[2] // (p * p)
    x = x.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, height, width)


def gather_visible(images: torch.Tensor, ids_keep: torch.Tensor, weight: torch.Tensor,
                   bias: Optional[torch.Tensor], pos_embed: torch.Tensor) -> torch.Tensor:
    """Patch embedding of the visible patches only, plus their position embedding: [B, K, D].

    Patches are flattened in the conv weight's (c, kh, kw) order, so a matmul with the
    flattened kernel equals the strided conv at those patches.
    """
    B, C, H, W = images.shape
    D, p = weight.shape[0], weight.shape[2]
    h, w = H // p, W // p
    patches = images.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, -1)
    visible = patches.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return F.linear(visible, weight.reshape(D, -1), bias) + pos_embed[ids_keep]


def restore_masked(tokens: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor,
                   pos_embed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Put the K visible tokens (after the cls token) back in patch order, mask_token elsewhere.

    The dtype is that of torch.cat over tokens and mask_token, as in the MAE-style models.
    """
    B, K1, D = tokens.shape
    L = ids_restore.shape[1]
    dtype = torch.promote_types(tokens.dtype, mask_token.dtype)
    fill = mask_token.reshape(1, 1, D).to(dtype).expand(B, L - (K1 - 1), D)
    x = torch.cat([tokens[:, 1:].to(dtype), fill], dim=1)
    x = x.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
    x = torch.cat([tokens[:, :1].to(dtype), x], dim=1)
    return x if pos_embed is None else x + pos_embed


# --------------------------------------------------------------------------- losses

def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(values * mask) / sum(mask), defined as 0 (with zero gradient) for an empty mask."""
    total = mask.sum()
    return (values * mask).sum() / torch.where(total > 0, total, torch.ones_like(total))


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for fp32 and narrower inputs; float64 stays float64 (exact gradchecks)."""
    return torch.promote_types(t.dtype, torch.float32)


def pixel_targets(images: torch.Tensor, patch_size: int, norm_pix_loss: bool,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, L, p*p*C] reconstruction targets in dtype, optionally normalised per patch."""
    target = patchify(images.to(dtype), patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the reference recipe
        target = (target - mean) / (var + 1.0e-6).sqrt()
    return target


def distillation_loss(online: torch.Tensor, target: torch.Tensor, cl_loss: str,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    online, target = online.to(dtype), target.detach().to(dtype)
    if cl_loss == "simsiam":
        return -0.5 * F.cosine_similarity(online, target, dim=-1).mean()
    if cl_loss == "byol":
        agreement = (F.normalize(online, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)
        return (2.0 - 2.0 * agreement).mean()
    raise ValueError(f"fsfm_loss: cl_loss must be one of {CL_LOSSES}, got {cl_loss!r}")


def fsfm_loss(pred: torch.Tensor, images: torch.Tensor, img_mask: torch.Tensor,
              fr_mask: torch.Tensor, online_features: Optional[torch.Tensor] = None,
              target_features: Optional[torch.Tensor] = None, *, patch_size: int,
              norm_pix_loss: bool = True, weight_sfr: float = 0.007, weight_cl: float = 0.1,
              cl_loss: str = "simsiam") -> FSFMLoss:
    """The 3C pretraining loss, accumulated in fp32 (float64 for float64 pred)."""
    acc = accumulation_dtype(pred)
    target = pixel_targets(images, patch_size, norm_pix_loss, acc)
    per_patch = (pred.to(acc) - target).pow(2).mean(dim=-1)
    rec_all = _masked_mean(per_patch, img_mask.to(acc))
    rec_sfr = _masked_mean(per_patch, fr_mask.to(acc))
    if online_features is None:
        cl = torch.zeros((), dtype=acc, device=pred.device)
    else:
        cl = distillation_loss(online_features, target_features, cl_loss, acc)
    total = rec_all + weight_sfr * rec_sfr + weight_cl * cl
    return FSFMLoss(total, rec_all, rec_sfr, cl)


@torch.no_grad()
def ema_update(target_params: Sequence[torch.Tensor], online_params: Sequence[torch.Tensor],
               momentum: float, skip: Optional[torch.Tensor] = None) -> None:
    """target := momentum * target + (1 - momentum) * online, in place.

    skip: a 0-dim bool tensor on the parameters' device; where True the update leaves the target
    exactly as it was (a weight of 0), decided on the device with nothing read back to the host.
    """
    targets, onlines = list(target_params), list(online_params)
    if not targets:
        return
    weight = 1.0 - float(momentum)
    if skip is None:
        torch._foreach_lerp_(targets, onlines, weight)
    else:
        weights = torch.where(skip, 0.0, weight).to(targets[0].dtype)
        torch._foreach_lerp_(targets, onlines, [weights] * len(targets))
