"""Per-iteration schedules of the reference recipe (SPEC section 5)."""
from __future__ import annotations

import math


def cosine_lr(it: int, *, base_lr: float, min_lr: float, warmup_iters: int, total_iters: int) -> float:
    """Linear warmup to ``base_lr``, then a half-cycle cosine down to ``min_lr`` at ``total_iters``."""
    if warmup_iters > 0 and it < warmup_iters:
        return base_lr * it / warmup_iters
    span = max(total_iters - warmup_iters, 1)
    progress = min(max(it - warmup_iters, 0) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_momentum(it: int, *, base_momentum: float, total_iters: int) -> float:
    """Cosine from ``base_momentum`` at 0 to 1.0 at ``total_iters``: m_i = 1 - (1-m0)(cos(pi i/N)+1)/2."""
    progress = min(max(it, 0) / max(total_iters, 1), 1.0)
    return 1.0 - (1.0 - base_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0
