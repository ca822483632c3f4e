"""Triton restore_masked: visible tokens back in patch order, mask_token elsewhere, plus pos_embed.

One program per (image, channel block) walks the L+1 output rows: each row is either a token
row (cls or a visible patch, located through ids_restore) or the shared mask_token, and the
position embedding is added before the single store, so nothing is concatenated, gathered or
added in separate passes. Values are exact in fp32 and rounded once, as torch's cat + add are.

The backward is the same walk in reverse: token rows get their gradient rows scattered back,
and each program sums the gradient rows of its image's hidden places into its own slot of a
[B, D] buffer, summed afterwards: the mask_token gradient is reduced without atomics, so it is
bit-reproducible.

Entry point: `restore_masked`, the custom op `fsfm_fast::restore_masked` (eager and under
torch.compile alike), whose backward is `fsfm_fast::restore_masked_backward`. The row loop's bound,
L+1, is a compile-time constant (fixed per image size).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._triton_common import check_launchable, is_interpreted, on_device

_OP = "restore_masked"


# --------------------------------------------------------------------------- kernels

@triton.jit
def _row_sources(ids_ptr, batch, rows, ROWS, KEEP, L):
    """Token row read by each output row (0 = cls) and whether it reads a token at all.

    An index outside [0, K) is a hidden place: that is where the reference's gather lands for
    indices in [K, L), and indices outside [0, L) (unchecked under torch.compile) are not read.
    """
    row_ok = rows < ROWS
    is_patch = row_ok & (rows > 0)
    j = tl.load(ids_ptr + batch * L + rows - 1, mask=is_patch, other=0)
    from_token = row_ok & ((rows == 0) | ((j >= 0) & (j < KEEP)))
    return tl.where(rows == 0, 0, j + 1), from_token, row_ok


@triton.jit
def _restore_fwd_kernel(tok_ptr, ids_ptr, mask_ptr, pos_ptr, out_ptr, KEEP, L, D,
                        ROWS: tl.constexpr, HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    fill = tl.load(mask_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tok_base = tok_ptr + batch * (KEEP + 1) * D
    out_base = out_ptr + batch * ROWS * D
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        src, from_token, row_ok = _row_sources(ids_ptr, batch, rows, ROWS, KEEP, L)
        x = tl.load(tok_base + src[:, None] * D + cols[None, :],
                    mask=from_token[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        x = tl.where(from_token[:, None], x, fill[None, :])
        ok = row_ok[:, None] & col_ok[None, :]
        if HAS_POS:
            x += tl.load(pos_ptr + rows[:, None] * D + cols[None, :], mask=ok,
                         other=0.0).to(tl.float32)
        tl.store(out_base + rows[:, None] * D + cols[None, :],
                 x.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _restore_bwd_kernel(grad_ptr, ids_ptr, gtok_ptr, gfill_ptr, KEEP, L, D,
                        ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    batch = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    grad_base = grad_ptr + batch * ROWS * D
    gtok_base = gtok_ptr + batch * (KEEP + 1) * D
    fill_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        src, from_token, row_ok = _row_sources(ids_ptr, batch, rows, ROWS, KEEP, L)
        g = tl.load(grad_base + rows[:, None] * D + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        tl.store(gtok_base + src[:, None] * D + cols[None, :], g.to(gtok_ptr.dtype.element_ty),
                 mask=from_token[:, None] & col_ok[None, :])
        fill_acc += tl.sum(tl.where(from_token[:, None], 0.0, g), axis=0)
    tl.store(gfill_ptr + batch * D + cols, fill_acc, mask=col_ok)


# --------------------------------------------------------------------------- launchers

def _blocks(kernel, D: int) -> dict:
    # The interpreter pays per program and per loop step: one wide tile per image there.
    if is_interpreted(kernel):
        return dict(BLOCK_R=64, BLOCK_D=triton.next_power_of_2(max(D, 16)), num_warps=4)
    return dict(BLOCK_R=32, BLOCK_D=128, num_warps=4)


def restore_forward(tokens, ids_restore, mask_token, pos, out_dtype):
    """[B, L+1, D] from tokens [B, K+1, D] (contiguous), ids_restore [B, L], mask_token [D]."""
    check_launchable(_restore_fwd_kernel, tokens.device, _OP)
    B, K1, D = tokens.shape
    L = ids_restore.shape[1]
    out = torch.empty((B, L + 1, D), device=tokens.device, dtype=out_dtype)
    if out.numel() == 0:
        return out
    cfg = _blocks(_restore_fwd_kernel, D)
    grid = (B, triton.cdiv(D, cfg["BLOCK_D"]))
    _restore_fwd_kernel[grid](tokens, ids_restore, mask_token, pos if pos is not None else tokens,
                              out, K1 - 1, L, D, ROWS=L + 1, HAS_POS=pos is not None, **cfg)
    return out


def restore_backward(grad, ids_restore, keep: int, token_dtype, needs: tuple[bool, bool, bool]):
    """(grad tokens [B, K+1, D], grad mask_token fp32 [D], grad pos fp32 [L+1, D]); None where
    needs says the input takes no gradient."""
    need_tokens, need_fill, need_pos = needs
    grad = grad.contiguous()
    B, rows, D = grad.shape
    g_pos = grad.sum(0, dtype=torch.float32) if need_pos else None
    if not (need_tokens or need_fill):
        return None, None, g_pos
    g_tokens = torch.zeros((B, keep + 1, D), device=grad.device, dtype=token_dtype)
    g_fill = torch.zeros((B, D), device=grad.device, dtype=torch.float32)
    if grad.numel():
        cfg = _blocks(_restore_bwd_kernel, D)
        grid = (B, triton.cdiv(D, cfg["BLOCK_D"]))
        _restore_bwd_kernel[grid](grad, ids_restore, g_tokens, g_fill, keep, rows - 1, D,
                                  ROWS=rows, **cfg)
    return (g_tokens if need_tokens else None), (g_fill.sum(0) if need_fill else None), g_pos


# --------------------------------------------------------------------------- autograd

def _out_dtype(tokens, mask_token, pos):
    dtype = torch.promote_types(tokens.dtype, mask_token.dtype)
    return dtype if pos is None else torch.promote_types(dtype, pos.dtype)


def _prepare(tokens, ids_restore, mask_token, pos):
    return (tokens.contiguous(), ids_restore.contiguous(), mask_token.reshape(-1).contiguous(),
            None if pos is None else pos.contiguous())


def _finish(grads, needs, meta):
    """Gradients in the dtypes and shapes of the inputs they belong to."""
    _, _, fill_shape, fill_dtype, pos_dtype = meta
    g_tokens, g_fill, g_pos = (g if n else None for g, n in zip(grads, needs))
    if g_fill is not None:
        g_fill = g_fill.to(fill_dtype).reshape(fill_shape)
    if g_pos is not None:
        g_pos = g_pos.to(pos_dtype)
    return g_tokens, g_fill, g_pos


def _meta(tokens, mask_token, pos):
    """What the backward needs to know of the inputs besides ids_restore."""
    return (tokens.shape[1] - 1, tokens.dtype, mask_token.shape, mask_token.dtype,
            None if pos is None else pos.dtype)


@torch.library.custom_op("fsfm_fast::restore_masked", mutates_args=())
def _restore_masked_op(tokens: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor,
                       pos: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    with on_device(tokens):
        return restore_forward(*_prepare(tokens, ids_restore, mask_token, pos), out_dtype)


@_restore_masked_op.register_fake
def _(tokens, ids_restore, mask_token, pos, out_dtype):
    return tokens.new_empty((tokens.shape[0], ids_restore.shape[1] + 1, tokens.shape[2]),
                            dtype=out_dtype)


@torch.library.custom_op("fsfm_fast::restore_masked_backward", mutates_args=())
def _restore_masked_backward_op(grad: torch.Tensor, ids_restore: torch.Tensor, keep: int,
                                token_dtype: torch.dtype,
                                needs: list[bool]) -> list[torch.Tensor]:
    with on_device(grad):
        grads = restore_backward(grad, ids_restore.contiguous(), keep, token_dtype, tuple(needs))
    return [g if g is not None else grad.new_empty(0) for g in grads]


@_restore_masked_backward_op.register_fake
def _(grad, ids_restore, keep, token_dtype, needs):
    B, rows, D = grad.shape
    shapes = ((B, keep + 1, D), (D,), (rows, D))
    dtypes = (token_dtype, torch.float32, torch.float32)
    return [grad.new_empty(s if n else (0,), dtype=d if n else grad.dtype)
            for s, d, n in zip(shapes, dtypes, needs)]


def _setup_context(ctx, inputs, output):
    tokens, ids_restore, mask_token, pos, _ = inputs
    ctx.save_for_backward(ids_restore)
    ctx.meta = _meta(tokens, mask_token, pos)


def _op_backward(ctx, grad):
    (ids_restore,) = ctx.saved_tensors
    keep, token_dtype = ctx.meta[:2]
    need = ctx.needs_input_grad
    needs = [need[0], need[2], need[3]]
    grads = torch.ops.fsfm_fast.restore_masked_backward(grad, ids_restore, keep, token_dtype, needs)
    g_tokens, g_fill, g_pos = _finish(grads, needs, ctx.meta)
    return g_tokens, None, g_fill, g_pos, None


_restore_masked_op.register_autograd(_op_backward, setup_context=_setup_context)


def restore_masked(tokens: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor,
                   pos: Optional[torch.Tensor]) -> torch.Tensor:
    """Validated inputs (see ops.restore_masked) -> [B, L+1, D] through the Triton kernels."""
    return torch.ops.fsfm_fast.restore_masked(tokens, ids_restore, mask_token, pos,
                                              _out_dtype(tokens, mask_token, pos))
