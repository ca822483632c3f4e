"""Triton gather_visible: patch embedding of the visible patches only, read straight from the image.

One kernel does gather + matmul + bias + position embedding: each program owns a tile of
(visible token, embedding channel) outputs and streams the pixels of its tokens' patches from the
image into `tl.dot`, so the [B, K, 3*p*p] patch matrix never exists in memory, and the 3/4 of
the image that is hidden is never read. The backward has two kernels, each owning its output
tile (no atomics, so bit-reproducible): the weight (and bias) gradient reduces over tokens in
fixed splits that are summed afterwards, and the image gradient writes each visible patch once.

Entry point: `gather_visible`, the custom op `fsfm_fast::gather_visible` (eager and under
torch.compile alike), whose backward is the custom op `fsfm_fast::gather_visible_backward`.

Loop bounds are compile-time constants (the embedding width, 3*p*p, the tokens per weight-gradient
split): the compiler can unroll and pipeline them, and Triton's interpreter, which cannot take a
runtime loop bound in every version, runs the same code.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._triton_common import (autocast_dtype, check_launchable, dot_acc, dot_config, is_interpreted,
                             num_sms, on_device)

_OP = "gather_visible"


# --------------------------------------------------------------------------- kernels

@triton.jit
def _patch_offsets(ids_ptr, rows, M, KEEP, L, GRID_W, IMG_W, IMG_STRIDE, P: tl.constexpr):
    """Image offset of each token's patch corner, and whether the token is a real visible patch.

    Out-of-range indices are masked rather than read: value checks are skipped under
    torch.compile, and a bad index must not become a wild read.
    """
    row_ok = rows < M
    patch = tl.load(ids_ptr + rows, mask=row_ok, other=0)
    ok = row_ok & (patch >= 0) & (patch < L)
    patch = tl.where(ok, patch, 0)
    batch = (rows // KEEP).to(tl.int64)
    base = batch * IMG_STRIDE + (patch // GRID_W) * (P * IMG_W) + (patch % GRID_W) * P
    return base, ok, patch


@triton.jit
def _pixel_offsets(ks, KD, IMG_W, PLANE, P: tl.constexpr):
    """Offset inside a patch of flattened index k, in the conv weight's (channel, row, col) order."""
    channel = ks // (P * P)
    within = ks % (P * P)
    return channel * PLANE + (within // P) * IMG_W + within % P, ks < KD


@triton.jit
def _embed_fwd_kernel(img_ptr, ids_ptr, w_ptr, bias_ptr, pos_ptr, out_ptr,
                      M, KEEP, L, GRID_W, IMG_W, PLANE, IMG_STRIDE,
                      N: tl.constexpr, KD: tl.constexpr, P: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT_DTYPE: tl.constexpr, DOT_UPCAST: tl.constexpr,
                      DOT_PRECISION: tl.constexpr):
    # Column tiles of one row tile run next to each other, so its pixels are read from L2 once.
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    rows = (pid // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    base, row_ok, patch = _patch_offsets(ids_ptr, rows, M, KEEP, L, GRID_W, IMG_W, IMG_STRIDE, P)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        offs, k_ok = _pixel_offsets(ks, KD, IMG_W, PLANE, P)
        a = tl.load(img_ptr + base[:, None] + offs[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :] * KD + ks[:, None],
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = dot_acc(a, w, acc, DOT_DTYPE, DOT_UPCAST, DOT_PRECISION)

    if HAS_BIAS:
        # Rounded like the operands: under autocast F.linear adds a bias cast to that dtype.
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(DOT_DTYPE).to(tl.float32)
        acc += bias[None, :]
    out_mask = row_ok[:, None] & col_ok[None, :]
    pos = tl.load(pos_ptr + patch[:, None] * N + cols[None, :], mask=out_mask, other=0.0)
    acc += pos.to(tl.float32)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=(rows < M)[:, None] & col_ok[None, :])


@triton.jit
def _embed_bwd_weight_kernel(img_ptr, ids_ptr, grad_ptr, gw_ptr, gb_ptr,
                             M, KEEP, L, GRID_W, IMG_W, PLANE, IMG_STRIDE,
                             N: tl.constexpr, KD: tl.constexpr, ROWS_PER_SPLIT: tl.constexpr,
                             P: tl.constexpr, HAS_BIAS: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             DOT_DTYPE: tl.constexpr, DOT_UPCAST: tl.constexpr,
                             DOT_PRECISION: tl.constexpr):
    """fp32 partial of grad_weight[n, k] = sum_m grad[m, n] * pixels[m, k] over one token split."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_k = tl.cdiv(KD, BLOCK_K)
    pid_n = pid // num_k
    pid_k = pid % num_k
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs, k_ok = _pixel_offsets(ks, KD, IMG_W, PLANE, P)

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    m_start = split * ROWS_PER_SPLIT
    for m0 in range(0, ROWS_PER_SPLIT, BLOCK_M):
        rows = m_start + m0 + tl.arange(0, BLOCK_M)
        base, row_ok, _ = _patch_offsets(ids_ptr, rows, M, KEEP, L, GRID_W, IMG_W, IMG_STRIDE, P)
        g = tl.load(grad_ptr + rows.to(tl.int64)[None, :] * N + cols[:, None],
                    mask=col_ok[:, None] & (rows < M)[None, :], other=0.0)
        a = tl.load(img_ptr + base[:, None] + offs[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        acc = dot_acc(g, a, acc, DOT_DTYPE, DOT_UPCAST, DOT_PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(g.to(tl.float32), axis=1)

    part = split.to(tl.int64) * N * KD
    tl.store(gw_ptr + part + cols[:, None] * KD + ks[None, :], acc,
             mask=col_ok[:, None] & k_ok[None, :])
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(gb_ptr + split * N + cols, bias_acc, mask=col_ok)


@triton.jit
def _embed_bwd_images_kernel(grad_ptr, w_ptr, ids_ptr, gimg_ptr,
                             M, KEEP, L, GRID_W, IMG_W, PLANE, IMG_STRIDE,
                             N: tl.constexpr, KD: tl.constexpr, P: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             DOT_DTYPE: tl.constexpr, DOT_UPCAST: tl.constexpr,
                             DOT_PRECISION: tl.constexpr):
    """grad_pixels = grad @ weight, written back into the visible patches of the image gradient."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs, k_ok = _pixel_offsets(ks, KD, IMG_W, PLANE, P)
    base, row_ok, _ = _patch_offsets(ids_ptr, rows, M, KEEP, L, GRID_W, IMG_W, IMG_STRIDE, P)

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        g = tl.load(grad_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :],
                    mask=(rows < M)[:, None] & col_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * KD + ks[None, :],
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = dot_acc(g, w, acc, DOT_DTYPE, DOT_UPCAST, DOT_PRECISION)
    tl.store(gimg_ptr + base[:, None] + offs[None, :], acc.to(gimg_ptr.dtype.element_ty),
             mask=row_ok[:, None] & k_ok[None, :])


# --------------------------------------------------------------------------- launchers

def _geometry(images: torch.Tensor, ids_keep: torch.Tensor, weight2d: torch.Tensor, patch: int):
    B, C, H, W = images.shape
    return dict(M=B * ids_keep.shape[1], KEEP=max(ids_keep.shape[1], 1), N=weight2d.shape[0],
                KD=weight2d.shape[1], L=(H // patch) * (W // patch), GRID_W=W // patch,
                IMG_W=W, PLANE=H * W, IMG_STRIDE=C * H * W, P=patch)


# GPU tiles per kernel as (BLOCK_M tokens, BLOCK_N channels, BLOCK_K pixels, warps). The dim each
# kernel reduces over gets 64 so that three pipeline stages of fp32 operands fit in shared memory.
_GPU_TILES = {"forward": (128, 128, 64, 8), "weight": (64, 128, 64, 8), "images": (128, 64, 64, 4)}


def _blocks(kernel, role: str, compute_dtype: torch.dtype) -> dict:
    # The interpreter pays per program, so it gets few large tiles.
    if is_interpreted(kernel):
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=1)
    m, n, k, warps = _GPU_TILES[role]
    stages = 2 if compute_dtype == torch.float32 else 3
    return dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, num_warps=warps, num_stages=stages)


def embed_forward(images, ids_keep, weight2d, bias, pos, patch: int, compute_dtype, out_dtype):
    """[B, K, D] = pixels(ids_keep) @ weight2d.T + bias + pos[ids_keep]."""
    check_launchable(_embed_fwd_kernel, images.device, _OP)
    geo = _geometry(images, ids_keep, weight2d, patch)
    out = torch.empty((images.shape[0], ids_keep.shape[1], geo["N"]), device=images.device,
                      dtype=out_dtype)
    if out.numel() == 0:
        return out
    cfg = _blocks(_embed_fwd_kernel, "forward", compute_dtype)
    grid = (triton.cdiv(geo["M"], cfg["BLOCK_M"]) * triton.cdiv(geo["N"], cfg["BLOCK_N"]),)
    _embed_fwd_kernel[grid](images, ids_keep, weight2d, bias if bias is not None else weight2d,
                            pos, out, HAS_BIAS=bias is not None, **geo, **cfg,
                            **dot_config(compute_dtype, _embed_fwd_kernel))
    return out


def _split_rows(device: torch.device, tiles: int, rows: int, block_m: int, interpreted: bool):
    """(tokens per split, splits) for the weight gradient: about two programs per SM. More would
    fill the machine better but each split writes a [D, 3*p*p] fp32 partial that is read back.

    The tokens per split are the kernel's loop bound, a compile-time constant: on the GPU it is
    rounded up to a power of two, so batches of nearby sizes share one compiled kernel.
    """
    want = max(1, triton.cdiv(2 * num_sms(device), max(tiles, 1)))
    per_split = triton.cdiv(triton.cdiv(max(rows, 1), want), block_m) * block_m
    if not interpreted:
        per_split = triton.next_power_of_2(per_split)
    return per_split, triton.cdiv(max(rows, 1), per_split)


def embed_weight_grad(grad2d, images, ids_keep, weight2d, patch: int, compute_dtype,
                      with_bias: bool):
    """(grad_weight2d fp32 [D, KD], grad_bias fp32 [D] or None), reduced in a fixed order."""
    geo = _geometry(images, ids_keep, weight2d, patch)
    cfg = _blocks(_embed_bwd_weight_kernel, "weight", compute_dtype)
    tiles = triton.cdiv(geo["N"], cfg["BLOCK_N"]) * triton.cdiv(geo["KD"], cfg["BLOCK_K"])
    rows_per_split, splits = _split_rows(images.device, tiles, geo["M"], cfg["BLOCK_M"],
                                         is_interpreted(_embed_bwd_weight_kernel))
    f32 = dict(device=images.device, dtype=torch.float32)
    # every element is stored by exactly one program, even with no tokens at all
    gw = torch.empty((splits, geo["N"], geo["KD"]), **f32)
    gb = torch.empty((splits, geo["N"]), **f32) if with_bias else gw
    _embed_bwd_weight_kernel[(tiles, splits)](images, ids_keep, grad2d, gw, gb,
                                              ROWS_PER_SPLIT=rows_per_split, HAS_BIAS=with_bias,
                                              **geo, **cfg,
                                              **dot_config(compute_dtype, _embed_bwd_weight_kernel))
    return gw.sum(0), (gb.sum(0) if with_bias else None)


def embed_images_grad(grad2d, images, ids_keep, weight2d, patch: int, compute_dtype):
    """Image gradient: grad @ weight at the visible patches, zero at the hidden ones."""
    geo = _geometry(images, ids_keep, weight2d, patch)
    cfg = _blocks(_embed_bwd_images_kernel, "images", compute_dtype)
    out = torch.zeros_like(images)
    if geo["M"] == 0:
        return out
    grid = (triton.cdiv(geo["M"], cfg["BLOCK_M"]), triton.cdiv(geo["KD"], cfg["BLOCK_K"]))
    _embed_bwd_images_kernel[grid](grad2d, weight2d, ids_keep, out, **geo, **cfg,
                                   **dot_config(compute_dtype, _embed_bwd_images_kernel))
    return out


def embed_backward(grad, images, ids_keep, weight, pos_rows: int, compute_dtype,
                   needs: tuple[bool, bool, bool, bool]):
    """Gradients (images, weight, bias, pos) for the flags in needs; None where not needed."""
    need_images, need_weight, need_bias, need_pos = needs
    D, patch = weight.shape[0], weight.shape[2]
    weight2d = weight.reshape(D, -1).contiguous()
    grad2d = grad.reshape(-1, D).contiguous()
    g_images = g_weight = g_bias = g_pos = None
    if need_images:
        g_images = embed_images_grad(grad2d, images, ids_keep, weight2d, patch, compute_dtype)
    if need_weight or need_bias:
        gw, gb = embed_weight_grad(grad2d, images, ids_keep, weight2d, patch, compute_dtype,
                                   need_bias)
        g_weight = gw.to(weight.dtype).reshape(weight.shape) if need_weight else None
        g_bias = gb.to(weight.dtype) if need_bias else None
    if need_pos:
        # Frozen in the models; when trained, index_add_ follows torch's determinism switch.
        g_pos = torch.zeros((pos_rows, D), device=grad.device, dtype=torch.float32)
        g_pos.index_add_(0, ids_keep.reshape(-1), grad2d.float())
    return g_images, g_weight, g_bias, g_pos


# --------------------------------------------------------------------------- autograd

def _dtypes(images, pos):
    """(matmul operand dtype, output dtype) the reference would give under the current autocast."""
    cast = autocast_dtype(images.device)
    compute = cast if cast is not None else images.dtype
    return compute, torch.promote_types(compute, pos.dtype)


def _prepare(images, ids_keep, weight, bias, pos):
    D = weight.shape[0]
    return (images.contiguous(), ids_keep.contiguous(), weight.reshape(D, -1).contiguous(),
            None if bias is None else bias.contiguous(), pos.contiguous())


@torch.library.custom_op("fsfm_fast::gather_visible", mutates_args=())
def _gather_visible_op(images: torch.Tensor, ids_keep: torch.Tensor, weight: torch.Tensor,
                       bias: Optional[torch.Tensor], pos: torch.Tensor,
                       compute_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor:
    images, ids_keep, weight2d, bias, pos = _prepare(images, ids_keep, weight, bias, pos)
    with on_device(images):
        return embed_forward(images, ids_keep, weight2d, bias, pos, weight.shape[2], compute_dtype,
                             out_dtype)


@_gather_visible_op.register_fake
def _(images, ids_keep, weight, bias, pos, compute_dtype, out_dtype):
    return images.new_empty((images.shape[0], ids_keep.shape[1], weight.shape[0]),
                            dtype=out_dtype)


@torch.library.custom_op("fsfm_fast::gather_visible_backward", mutates_args=())
def _gather_visible_backward_op(grad: torch.Tensor, images: torch.Tensor, ids_keep: torch.Tensor,
                                weight: torch.Tensor, pos_rows: int, compute_dtype: torch.dtype,
                                needs: list[bool]) -> list[torch.Tensor]:
    with on_device(grad):
        grads = embed_backward(grad, images.contiguous(), ids_keep.contiguous(), weight, pos_rows,
                               compute_dtype, tuple(needs))
    # A custom op returns tensors only: an unneeded gradient comes back empty.
    return [g if g is not None else grad.new_empty(0) for g in grads]


@_gather_visible_backward_op.register_fake
def _(grad, images, ids_keep, weight, pos_rows, compute_dtype, needs):
    shapes = (images.shape, weight.shape, weight.shape[:1], (pos_rows, weight.shape[0]))
    dtypes = (images.dtype, weight.dtype, weight.dtype, torch.float32)
    return [grad.new_empty(s if n else (0,), dtype=d if n else grad.dtype)
            for s, d, n in zip(shapes, dtypes, needs)]


def _setup_context(ctx, inputs, output):
    images, ids_keep, weight, bias, pos, compute_dtype, _ = inputs
    ctx.save_for_backward(images, ids_keep, weight)
    ctx.meta = (compute_dtype, pos.shape[0], bias is not None, pos.dtype)


def _op_backward(ctx, grad):
    images, ids_keep, weight = ctx.saved_tensors
    compute_dtype, pos_rows, has_bias, pos_dtype = ctx.meta
    need = ctx.needs_input_grad
    needs = [need[0], need[2], has_bias and need[3], need[4]]
    grads = torch.ops.fsfm_fast.gather_visible_backward(grad, images, ids_keep, weight, pos_rows,
                                                        compute_dtype, needs)
    g_images, g_weight, g_bias, g_pos = (g if n else None for g, n in zip(grads, needs))
    if g_pos is not None:
        g_pos = g_pos.to(pos_dtype)
    return g_images, None, g_weight, g_bias, g_pos, None, None


_gather_visible_op.register_autograd(_op_backward, setup_context=_setup_context)


def gather_visible(images: torch.Tensor, ids_keep: torch.Tensor, weight: torch.Tensor,
                   bias: Optional[torch.Tensor], pos: torch.Tensor) -> torch.Tensor:
    """Validated inputs (see ops.gather_visible) -> [B, K, D] through the Triton kernels."""
    compute_dtype, out_dtype = _dtypes(images, pos)
    return torch.ops.fsfm_fast.gather_visible(images, ids_keep, weight, bias, pos, compute_dtype,
                                              out_dtype)
