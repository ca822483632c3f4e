"""How a pretrained encoder's tensors are fitted to a ViT: the keys a pretrained encoder does not provide,
the position embedding resampled to another patch grid, and a one-line refusal of anything that does
not fit. ``load_pretrained_encoder`` (``models.detector``) and timm's pretrained filter
(``models.timm_models``) both load encoders by these rules."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fsfm_fast.formats import CheckpointError, preview


def head_keys(model: nn.Module) -> list[str]:
    """The keys a pretrained encoder does not provide: the head, and ``fc_norm`` under avg pooling."""
    return [k for k in model.state_dict() if k.startswith(("head.", "fc_norm."))]


def _resampled_pos_embed(src: torch.Tensor, model: VisionTransformer) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """``src`` [1, 1+L, D] resampled to the model's patch grid (bicubic, cls slot kept), or None if it
    cannot be (another width, or not a square grid)."""
    dst = model.pos_embed
    side = math.isqrt(src.shape[1] - 1)
    if src.dim() != 3 or src.shape[-1] != dst.shape[-1] or side * side != src.shape[1] - 1:
        return None
    out = resample_abs_pos_embed(src.float(), new_size=list(model.patch_embed.grid_size),
                                 old_size=[side, side], num_prefix_tokens=1)
    return out.to(dst.dtype), (side, side)


def fit_weights(model: VisionTransformer, state: Mapping[str, Any], keys: list[str]
                ) -> tuple[dict[str, torch.Tensor], list[str], list[str], tuple[int, int] | None]:
    """The tensors of ``state`` for the ``keys`` of ``model``, the position embedding resampled to the
    model's patch grid: (selected, keys absent from ``state``, keys of another type or shape, described,
    the grid the position embedding was resampled from or None)."""
    target = model.state_dict()
    selected, absent, wrong, resampled = {}, [], [], None
    for key in keys:
        if key not in state:
            absent.append(key)
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            wrong.append(f"{key} ({type(value).__name__})")
            continue
        if key == "pos_embed" and value.shape != target[key].shape:
            found = _resampled_pos_embed(value, model)
            if found is not None:
                value, resampled = found
        if value.shape != target[key].shape:
            wrong.append(f"{key} {list(value.shape)} (model {list(target[key].shape)})")
            continue
        selected[key] = value
    return selected, absent, wrong, resampled


def refuse_misfit(what: str, absent: list[str], wrong: list[str]) -> None:
    """A CheckpointError ``what``, listing the absent and misshapen keys, when there are any."""
    if absent or wrong:
        raise CheckpointError("; ".join([what] + ([f"missing encoder keys: {preview(absent)}"] if absent else [])
                                        + ([f"wrong shapes: {preview(wrong)}"] if wrong else [])))
