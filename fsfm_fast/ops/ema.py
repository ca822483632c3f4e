"""EMA update of the target network: target := m * target + (1 - m) * online."""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch

from . import reference


def _check_momentum(momentum, device) -> None:
    if isinstance(momentum, torch.Tensor):
        # a tensor momentum is for the training step, which must not read it back: shape only
        if momentum.dim() != 0 or not momentum.is_floating_point():
            raise ValueError(f"ema_update: a tensor momentum must be a 0-dim float tensor, got "
                             f"{momentum.dtype} of shape {tuple(momentum.shape)}")
        if device is not None and momentum.device != device:
            raise ValueError(f"ema_update: momentum is on {momentum.device}, the parameters on {device}")
        return
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
            or not math.isfinite(momentum) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum must be in [0, 1], got {momentum!r}")


def ema_update(target_params: Sequence[torch.Tensor], online_params: Sequence[torch.Tensor],
               momentum: Union[float, torch.Tensor]) -> None:
    """In place, one fused torch._foreach_lerp_ over all pairs (matched by position).

    momentum: a float in [0, 1], or a 0-dim tensor on the parameters' device (the training step
    passes 1 there when its step was skipped, without a host sync).
    """
    targets, onlines = list(target_params), list(online_params)
    if len(targets) != len(onlines):
        raise ValueError(f"ema_update: {len(targets)} target params but {len(onlines)} online")
    for i, (t, o) in enumerate(zip(targets, onlines)):
        if not isinstance(t, torch.Tensor) or not isinstance(o, torch.Tensor):
            raise TypeError(f"ema_update: pair {i} holds a non-tensor")
        if t.shape != o.shape or t.dtype != o.dtype or t.device != o.device:
            raise ValueError(f"ema_update: pair {i} differs: target {tuple(t.shape)} {t.dtype} "
                             f"{t.device} vs online {tuple(o.shape)} {o.dtype} {o.device}")
        if not t.is_floating_point():
            raise TypeError(f"ema_update: pair {i} is {t.dtype}, not floating point")
    _check_momentum(momentum, targets[0].device if targets else None)
    reference.ema_update(targets, onlines, momentum)
