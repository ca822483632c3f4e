"""CRFR-P masking (SPEC section 2): validated public entry points."""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import reference
from ._checks import check_mask_ratio, check_parsing, check_tensor, resolve_backend

_BACKENDS = ("torch",)


def _check_region_index(region_index, batch: int) -> None:
    if region_index is None:
        return
    limit = reference.NUM_REGIONS
    if isinstance(region_index, torch.Tensor):
        check_tensor(region_index, "region_index", ndim=1, dtypes=(torch.int64,))
        if region_index.shape[0] != batch:
            raise ValueError(f"region_index must have shape ({batch},), "
                             f"got {tuple(region_index.shape)}")
        bad = region_index.numel() and (int(region_index.min()) < 0
                                         or int(region_index.max()) >= limit)
    elif isinstance(region_index, int) and not isinstance(region_index, bool):
        bad = not 0 <= region_index < limit
    else:
        raise TypeError(f"region_index must be an int or an int64 tensor, "
                        f"got {type(region_index).__name__}")
    if bad:
        raise ValueError(f"region_index must be in 0..{limit - 1} "
                         f"({', '.join(reference.GROUP_NAMES[:limit])})")


def _check_generator(generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if torch.device(generator.device).type != device.type:
        raise ValueError(f"generator is on {generator.device} but parsing is on {device}")


def crfrp_mask(parsing: torch.Tensor, patch_size: int = 16, mask_ratio: float = 0.75, *,
               strategy: str = "crfr_p", region: str = "batch",
               region_index: Union[int, torch.Tensor, None] = None,
               generator: Optional[torch.Generator] = None, backend: str = "auto"):
    """Hide exactly int(mask_ratio * L) patches per image of a uint8 [B, H, W] parsing batch.

    Returns (img_mask, fr_mask), bool [B, L], True = hidden, fr_mask a subset of img_mask.
    strategy: "crfr_p" (default), "crfr_r", "fr" or "random"; region: "batch" draws one facial
    region for the whole batch (as the reference), "image" one per image; region_index (int or
    int64 [B], 0..5) forces it.
    """
    check_parsing(parsing, patch_size)
    check_mask_ratio(mask_ratio)
    if strategy not in reference.STRATEGIES:
        raise ValueError(f"strategy must be one of {reference.STRATEGIES}, got {strategy!r}")
    if region not in reference.REGION_MODES:
        raise ValueError(f"region must be one of {reference.REGION_MODES}, got {region!r}")
    _check_region_index(region_index, parsing.shape[0])
    _check_generator(generator, parsing.device)
    resolve_backend(backend, _BACKENDS, "crfrp_mask")
    return reference.crfrp_mask(parsing, patch_size, float(mask_ratio), strategy=strategy,
                                region=region, region_index=region_index, generator=generator)


def region_presence(parsing: torch.Tensor, patch_size: int, backend: str = "auto") -> torch.Tensor:
    """int16 [B, L]: bit k set iff label k occurs in the patch (PyTorch-only version)."""
    check_parsing(parsing, patch_size)
    resolve_backend(backend, _BACKENDS, "region_presence")
    return reference.region_presence(parsing, patch_size)


def group_touch(presence: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """bool [B, 8, L]: patches touching each group, in GROUP_NAMES order."""
    check_tensor(presence, "presence", ndim=2, dtypes=(torch.int16,))
    if presence.numel() and (int(presence.min()) < 0
                             or int(presence.max()) >= 1 << reference.NUM_LABELS):
        raise ValueError(f"presence holds bits above label {reference.NUM_LABELS - 1}")
    resolve_backend(backend, _BACKENDS, "group_touch")
    return reference.group_touch(presence)
