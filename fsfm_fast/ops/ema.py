"""EMA update of the target network: target := m * target + (1 - m) * online."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from . import reference


def ema_update(target_params: Sequence[torch.Tensor], online_params: Sequence[torch.Tensor],
               momentum: float, skip: Optional[torch.Tensor] = None) -> None:
    """In place, one fused torch._foreach_lerp_ over all pairs (matched by position).

    skip: a 0-dim bool tensor on the parameters' device, True when the training step was skipped:
    the target then stays exactly as it was, without the host reading the flag (no GPU sync).
    """
    targets, onlines = list(target_params), list(online_params)
    if len(targets) != len(onlines):
        raise ValueError(f"ema_update: {len(targets)} target params but {len(onlines)} online")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
            or not math.isfinite(momentum) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum must be in [0, 1], got {momentum!r}")
    for i, (t, o) in enumerate(zip(targets, onlines)):
        if not isinstance(t, torch.Tensor) or not isinstance(o, torch.Tensor):
            raise TypeError(f"ema_update: pair {i} holds a non-tensor")
        if t.shape != o.shape or t.dtype != o.dtype or t.device != o.device:
            raise ValueError(f"ema_update: pair {i} differs: target {tuple(t.shape)} {t.dtype} "
                             f"{t.device} vs online {tuple(o.shape)} {o.dtype} {o.device}")
        if not t.is_floating_point():
            raise TypeError(f"ema_update: pair {i} is {t.dtype}, not floating point")
    if skip is not None:
        if not isinstance(skip, torch.Tensor) or skip.dim() != 0 or skip.dtype != torch.bool:
            raise ValueError(f"ema_update: skip must be a 0-dim bool tensor, got {skip!r}")
        if targets and skip.device != targets[0].device:
            raise ValueError(f"ema_update: skip is on {skip.device}, the parameters on {targets[0].device}")
    reference.ema_update(targets, onlines, float(momentum), skip)
