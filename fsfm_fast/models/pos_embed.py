"""Fixed 2-D sine-cosine position embeddings with a leading all-zero cls row."""
from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[N] positions -> [N, dim]: sines of all frequencies, then cosines of the same frequencies."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even dim, got {dim}")
    half = dim // 2
    freqs = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / half))
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Embedding for a row-major (rows, cols) patch grid -> float32 [cls + rows*cols, dim].

    The first half of the channels encodes the column index and the second half the row index:
    that is the layout of the MAE/FSFM releases, so pretrained weights and our own
    initialisation agree value for value.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    rows, cols = grid
    row_idx = torch.arange(rows).repeat_interleave(cols)
    col_idx = torch.arange(cols).repeat(rows)
    emb = torch.cat([sincos_1d(dim // 2, col_idx), sincos_1d(dim // 2, row_idx)], dim=1)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, dim), emb], dim=0)
    return emb.float()
