"""CRFR-P masking (SPEC section 2): validated public entry points.

Backends of crfrp_mask: "cuda" runs the compiled kernel (kernels/crfrp_mask.cu, one launch per
batch), "cpu" its C++ twin (csrc/crfrp_mask_cpu.cpp), "torch" the reference. The two compiled
backends draw from one counter-based stream keyed by (seed, offset, image index), so they give the
same masks bit for bit for the same (seed, offset); the reference draws from torch's generator
instead (same distribution, other masks). "auto" takes the compiled op for the tensor's device
when the extension has it, else the reference; FSFM_OPS_BACKEND overrides "auto".
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch

from .. import _ext
from . import reference
from ._checks import (check_mask_ratio, check_parsing, check_patch_size, check_tensor,
                      fake_patch_grid, resolve_backend)

_BACKENDS = ("cpu", "cuda", "torch")
_OP_NAME = "fsfm_fast::crfrp_mask"
_U64 = 1 << 64
# The CUDA generator's offset must stay a multiple of 4 (torch reserves offsets in such steps).
_CUDA_OFFSET_STEP = 4


def _check_region_index(region_index, batch: int, check_values: bool = True) -> None:
    """Type and shape always; tensor values only when check_values (the compiled ops check them
    themselves, with the label range, in one pass before their launch)."""
    if region_index is None:
        return
    limit = reference.NUM_REGIONS
    if isinstance(region_index, torch.Tensor):
        check_tensor(region_index, "region_index", ndim=1, dtypes=(torch.int64,))
        if region_index.shape[0] != batch:
            raise ValueError(f"region_index must have shape ({batch},), "
                             f"got {tuple(region_index.shape)}")
        bad = check_values and region_index.numel() and (int(region_index.min()) < 0
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


def _check_seed(seed, offset, generator) -> None:
    if seed is None:
        if offset != 0:
            raise ValueError("offset is only meaningful together with seed")
        return
    if generator is not None:
        raise ValueError("pass either generator or seed, not both")
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def _as_int64(value: int) -> int:
    """Any Python int as the signed 64-bit value with the same low 64 bits (the op's `int`)."""
    value %= _U64
    return value - _U64 if value >= _U64 >> 1 else value


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return torch.default_generator


def _draw_stream(generator: Optional[torch.Generator],
                 device: torch.device) -> Tuple[int, int, Callable[[], None]]:
    """(seed, offset, undo) for the compiled ops, taken from generator (default: the device's).

    A CUDA generator gives its seed and current Philox offset, then advances that offset the way
    torch's own random kernels do: no kernel launch and no host sync. Other generators are drawn
    from (two int64 values). Either way a freshly seeded generator reproduces the masks and
    successive calls get different ones. undo() puts the generator back, so a call rejected by
    the op's own input checks consumes no randomness.
    """
    g = generator if generator is not None else _default_generator(device)
    if torch.device(g.device).type == "cuda":
        offset = g.get_offset()
        g.set_offset(offset + _CUDA_OFFSET_STEP)
        return _as_int64(g.initial_seed()), _as_int64(offset), lambda: g.set_offset(offset)
    state = g.get_state()
    draws = torch.randint(-(1 << 63), (1 << 63) - 1, (2,), dtype=torch.int64, generator=g,
                          device=g.device)
    seed, offset = draws.tolist()
    return seed, offset, lambda: g.set_state(state)


def _reference_generator(seed: int, offset: int, device: torch.device) -> torch.Generator:
    # The reference has no (seed, offset) stream: seed torch's generator from both instead.
    g = torch.Generator(device=device)
    g.manual_seed((seed * 0x9E3779B97F4A7C15 + offset) % (1 << 63))
    return g


def _region_tensor(region_index, batch: int, device: torch.device) -> Optional[torch.Tensor]:
    if region_index is None:
        return None
    if isinstance(region_index, torch.Tensor):
        return region_index.to(device, non_blocking=True)
    return torch.full((batch,), region_index, dtype=torch.int64, device=device)


def crfrp_mask(parsing: torch.Tensor, patch_size: int = 16, mask_ratio: float = 0.75, *,
               strategy: str = "crfr_p", region: str = "batch",
               region_index: Union[int, torch.Tensor, None] = None,
               generator: Optional[torch.Generator] = None, backend: str = "auto",
               seed: Optional[int] = None, offset: int = 0, validate: bool = True):
    """Hide exactly int(mask_ratio * L) patches per image of a uint8 [B, H, W] parsing batch.

    Returns (img_mask, fr_mask), bool [B, L], True = hidden, fr_mask a subset of img_mask.
    strategy: "crfr_p" (default), "crfr_r", "fr" or "random"; region: "batch" draws one facial
    region for the whole batch (as the reference), "image" one per image; region_index (int or
    int64 [B], 0..5) forces it.

    Randomness: generator (default: the device's default generator) is consumed once per call,
    or seed/offset (ints) name the stream directly; then the "cpu" and "cuda" backends return the
    same masks for the same (seed, offset), on any device and in any data worker, and the mask of
    image b depends only on (seed, offset, b) and that image's parsing map.

    validate: check that every label is in 0..10. On a GPU that is a reduction read back to the
    host; the training loop validates the maps where it loads them and passes False. An unchecked
    label above 10 touches no group: the masks still hold exactly M ones and fr ⊆ img.
    """
    check_tensor(parsing, "parsing", ndim=3, dtypes=(torch.uint8,))
    check_patch_size(patch_size, parsing.shape[1], parsing.shape[2], "parsing")
    check_mask_ratio(mask_ratio)
    if strategy not in reference.STRATEGIES:
        raise ValueError(f"strategy must be one of {reference.STRATEGIES}, got {strategy!r}")
    if region not in reference.REGION_MODES:
        raise ValueError(f"region must be one of {reference.REGION_MODES}, got {region!r}")
    _check_generator(generator, parsing.device)
    _check_seed(seed, offset, generator)
    chosen = _ext.choose_backend("crfrp_mask", resolve_backend(backend, _BACKENDS, "crfrp_mask"),
                                 parsing.device)
    _check_region_index(region_index, parsing.shape[0], check_values=chosen == "torch")
    if chosen == "torch":
        if validate:
            check_parsing(parsing, patch_size)
        if seed is not None:
            generator = _reference_generator(seed, offset, parsing.device)
        return reference.crfrp_mask(parsing, patch_size, float(mask_ratio), strategy=strategy,
                                    region=region, region_index=region_index, generator=generator)
    undo = None
    if seed is None:
        seed, offset, undo = _draw_stream(generator, parsing.device)
    try:
        return torch.ops.fsfm_fast.crfrp_mask(
            parsing, patch_size, float(mask_ratio), strategy, region,
            _region_tensor(region_index, parsing.shape[0], parsing.device),
            _as_int64(seed), _as_int64(offset), bool(validate))
    except (ValueError, TypeError):
        if undo is not None:
            undo()
        raise


def _crfrp_mask_fake(parsing, patch_size, mask_ratio, strategy, region, region_index, seed,
                     offset, check_labels=True):
    shape = fake_patch_grid(parsing, patch_size)
    return (parsing.new_empty(shape, dtype=torch.bool),
            parsing.new_empty(shape, dtype=torch.bool))


if _ext.has_extension():
    torch.library.register_fake(_OP_NAME)(_crfrp_mask_fake)


def group_touch(presence: torch.Tensor) -> torch.Tensor:
    """bool [B, 8, L]: patches touching each group, in GROUP_NAMES order."""
    check_tensor(presence, "presence", ndim=2, dtypes=(torch.int16,))
    if presence.numel() and (int(presence.min()) < 0
                             or int(presence.max()) >= 1 << reference.NUM_LABELS):
        raise ValueError(f"presence holds bits above label {reference.NUM_LABELS - 1}")
    return reference.group_touch(presence)
