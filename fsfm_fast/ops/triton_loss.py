"""Triton fsfm_loss: the 3C loss (norm-pix MAE over hidden patches, region term, distillation).

Forward, two kernels:
- one program per block of patches reads each hidden patch's pixels straight from the image in
  the prediction's (row, col, channel) order, normalises them by the patch mean and unbiased
  variance, and writes the patch's mean squared error plus its (mean, std). A patch that neither
  mask hides is skipped: its loads are masked off, so its bytes are never read.
- one program reduces those per-patch errors against both masks, in a fixed order (the loss is
  bit-reproducible), computes the distillation term from the two feature sets, and writes
  (total, rec_all, rec_sfr, cl, #img_mask, #fr_mask).
Everything accumulates in fp32 whatever the input dtypes.

Backward, two kernels: the pixel one rebuilds each hidden patch's target from the image and the
saved (mean, std) — one pass, no second variance reduction — and writes the prediction gradient,
zeros on skipped patches; the other writes the online features' gradient. The loss's four
upstream gradients are read on the device, so nothing syncs with the host.

Entry point: `fsfm_loss`, the custom op `fsfm_fast::fsfm_loss` (eager and under torch.compile
alike), whose backward is `fsfm_fast::fsfm_loss_backward`. The reduction walks a batch-sized range
with `while` loops: a runtime bound that every version of Triton's interpreter can run, in a
single-program kernel where the compiler has nothing to pipeline anyway.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._triton_common import check_launchable, is_interpreted, on_device

_OP = "fsfm_loss"
_NORM_EPS = 1.0e-6
# Norm floors of the reference's distillation forms: F.cosine_similarity and F.normalize.
_CL_EPS = {"simsiam": 1.0e-8, "byol": 1.0e-12}
# cl = OFFSET + SCALE * mean(cos): -0.5 * cos for SimSiam, 2 - 2 * cos for BYOL.
_CL_AFFINE = {"simsiam": (0.0, -0.5), "byol": (2.0, -2.0)}


# --------------------------------------------------------------------------- kernels

@triton.jit
def _patch_tile(pred_ptr, img_ptr, rows, active, PRED_SB, PRED_SL, L, GRID_W, IMG_W, PLANE,
                IMG_STRIDE, P: tl.constexpr, C: tl.constexpr, BLOCK_P: tl.constexpr):
    """(pred, pixels, load mask) of a block of patches, both in the prediction's element order."""
    q = tl.arange(0, BLOCK_P)
    width = P * P * C
    inside = q < width
    # element q of a patch is (row, col, channel) = (q // (P*C), (q // C) % P, q % C)
    pix = (q % C) * PLANE + (q // (P * C)) * IMG_W + (q // C) % P
    batch = (rows // L).to(tl.int64)
    patch = rows % L
    corner = batch * IMG_STRIDE + (patch // GRID_W) * (P * IMG_W) + (patch % GRID_W) * P
    ld = active[:, None] & inside[None, :]
    pixels = tl.load(img_ptr + corner[:, None] + pix[None, :], mask=ld, other=0.0).to(tl.float32)
    pred_row = batch * PRED_SB + patch.to(tl.int64) * PRED_SL
    pred = tl.load(pred_ptr + pred_row[:, None] + q[None, :], mask=ld, other=0.0).to(tl.float32)
    return pred, pixels, ld


@triton.jit
def _row_masks(img_mask_ptr, fr_mask_ptr, rows, NUM_ROWS):
    ok = rows < NUM_ROWS
    m_img = tl.load(img_mask_ptr + rows, mask=ok, other=0).to(tl.float32)
    m_fr = tl.load(fr_mask_ptr + rows, mask=ok, other=0).to(tl.float32)
    return m_img, m_fr, ok & ((m_img != 0.0) | (m_fr != 0.0))


@triton.jit
def _patch_loss_fwd_kernel(pred_ptr, img_ptr, img_mask_ptr, fr_mask_ptr, err_ptr, stats_ptr,
                           NUM_ROWS, PRED_SB, PRED_SL, L, GRID_W, IMG_W, PLANE, IMG_STRIDE,
                           P: tl.constexpr, C: tl.constexpr, NORM_PIX: tl.constexpr,
                           EPS: tl.constexpr, ROWS: tl.constexpr, BLOCK_P: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    _, _, active = _row_masks(img_mask_ptr, fr_mask_ptr, rows, NUM_ROWS)
    pred, target, ld = _patch_tile(pred_ptr, img_ptr, rows, active, PRED_SB, PRED_SL, L, GRID_W,
                                   IMG_W, PLANE, IMG_STRIDE, P, C, BLOCK_P)
    width = P * P * C
    mean = tl.zeros((ROWS,), dtype=tl.float32)
    std = tl.full((ROWS,), 1.0, dtype=tl.float32)
    if NORM_PIX:
        mean = tl.sum(target, axis=1) / width
        centred = tl.where(ld, target - mean[:, None], 0.0)
        std = tl.sqrt(tl.sum(centred * centred, axis=1) / (width - 1) + EPS)
        target = centred / std[:, None]
    diff = tl.where(ld, pred - target, 0.0)
    err = tl.sum(diff * diff, axis=1) / width
    ok = rows < NUM_ROWS
    tl.store(err_ptr + rows, err, mask=ok)
    tl.store(stats_ptr + rows, mean, mask=ok)
    tl.store(stats_ptr + NUM_ROWS + rows, std, mask=ok)


@triton.jit
def _cos_rows(on_ptr, tg_ptr, rows, B, F, EPS, BLOCK_F: tl.constexpr):
    """Per row: (cos, online, target, |online| floored, |target| floored, |online|) in fp32."""
    cols = tl.arange(0, BLOCK_F)
    ok = (rows < B)[:, None] & (cols < F)[None, :]
    offs = rows.to(tl.int64)[:, None] * F + cols[None, :]
    on = tl.load(on_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tg = tl.load(tg_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    on_norm = tl.sqrt(tl.sum(on * on, axis=1))
    n_on = tl.maximum(on_norm, EPS)
    n_tg = tl.maximum(tl.sqrt(tl.sum(tg * tg, axis=1)), EPS)
    cos = tl.sum(on * tg, axis=1) / (n_on * n_tg)
    return cos, on, tg, n_on, n_tg, on_norm, ok


@triton.jit
def _loss_reduce_kernel(err_ptr, img_mask_ptr, fr_mask_ptr, on_ptr, tg_ptr, out_ptr,
                        NUM_ROWS, B, F, W_SFR, W_CL, CL_OFFSET, CL_SCALE, CL_EPS,
                        HAS_CL: tl.constexpr, BLOCK: tl.constexpr, ROWS_F: tl.constexpr,
                        BLOCK_F: tl.constexpr):
    s_all = tl.zeros((BLOCK,), dtype=tl.float32)
    n_all = tl.zeros((BLOCK,), dtype=tl.float32)
    s_fr = tl.zeros((BLOCK,), dtype=tl.float32)
    n_fr = tl.zeros((BLOCK,), dtype=tl.float32)
    r0 = 0
    while r0 < NUM_ROWS:
        rows = r0 + tl.arange(0, BLOCK)
        m_img, m_fr, _ = _row_masks(img_mask_ptr, fr_mask_ptr, rows, NUM_ROWS)
        err = tl.load(err_ptr + rows, mask=rows < NUM_ROWS, other=0.0)
        s_all += err * m_img
        n_all += m_img
        s_fr += err * m_fr
        n_fr += m_fr
        r0 += BLOCK
    count_all = tl.sum(n_all, axis=0)
    count_fr = tl.sum(n_fr, axis=0)
    # An empty mask gives 0, as the reference's sum / where(count > 0, count, 1).
    rec_all = tl.sum(s_all, axis=0) / tl.where(count_all > 0, count_all, 1.0)
    rec_sfr = tl.sum(s_fr, axis=0) / tl.where(count_fr > 0, count_fr, 1.0)
    cl = 0.0
    if HAS_CL:
        cos_acc = tl.zeros((ROWS_F,), dtype=tl.float32)
        b0 = 0
        while b0 < B:
            feat_rows = b0 + tl.arange(0, ROWS_F)
            cos, _, _, _, _, _, _ = _cos_rows(on_ptr, tg_ptr, feat_rows, B, F, CL_EPS, BLOCK_F)
            cos_acc += tl.where(feat_rows < B, cos, 0.0)
            b0 += ROWS_F
        cl = CL_OFFSET + CL_SCALE * tl.sum(cos_acc, axis=0) / B
    tl.store(out_ptr + 0, rec_all + W_SFR * rec_sfr + W_CL * cl)
    tl.store(out_ptr + 1, rec_all)
    tl.store(out_ptr + 2, rec_sfr)
    tl.store(out_ptr + 3, cl)
    tl.store(out_ptr + 4, count_all)
    tl.store(out_ptr + 5, count_fr)


@triton.jit
def _patch_loss_bwd_kernel(pred_ptr, img_ptr, img_mask_ptr, fr_mask_ptr, stats_ptr, out_ptr,
                           g_ptr, grad_ptr, NUM_ROWS, PRED_SB, PRED_SL, L, GRID_W, IMG_W, PLANE,
                           IMG_STRIDE, W_SFR, P: tl.constexpr, C: tl.constexpr,
                           NORM_PIX: tl.constexpr, ROWS: tl.constexpr, BLOCK_P: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_img, m_fr, active = _row_masks(img_mask_ptr, fr_mask_ptr, rows, NUM_ROWS)
    pred, target, ld = _patch_tile(pred_ptr, img_ptr, rows, active, PRED_SB, PRED_SL, L, GRID_W,
                                   IMG_W, PLANE, IMG_STRIDE, P, C, BLOCK_P)
    if NORM_PIX:
        mean = tl.load(stats_ptr + rows, mask=active, other=0.0)
        std = tl.load(stats_ptr + NUM_ROWS + rows, mask=active, other=1.0)
        target = (target - mean[:, None]) / std[:, None]
    # d total / d err_patch; each upstream gradient is read where autograd left it.
    g_total = tl.load(g_ptr + 0)
    count_all = tl.load(out_ptr + 4)
    count_fr = tl.load(out_ptr + 5)
    c_all = (g_total + tl.load(g_ptr + 1)) / tl.where(count_all > 0, count_all, 1.0)
    c_fr = (W_SFR * g_total + tl.load(g_ptr + 2)) / tl.where(count_fr > 0, count_fr, 1.0)
    width = P * P * C
    scale = (c_all * m_img + c_fr * m_fr) * (2.0 / width)
    grad = tl.where(ld, (pred - target) * scale[:, None], 0.0)
    q = tl.arange(0, BLOCK_P)
    tl.store(grad_ptr + rows.to(tl.int64)[:, None] * width + q[None, :],
             grad.to(grad_ptr.dtype.element_ty),
             mask=(rows < NUM_ROWS)[:, None] & (q < width)[None, :])


@triton.jit
def _cl_bwd_kernel(on_ptr, tg_ptr, g_ptr, grad_ptr, B, F, W_CL, CL_SCALE, CL_EPS,
                   ROWS_F: tl.constexpr, BLOCK_F: tl.constexpr):
    """d cl / d online for cl = offset + scale * mean_b cos(online_b, target_b)."""
    rows = tl.program_id(0) * ROWS_F + tl.arange(0, ROWS_F)
    cos, on, tg, n_on, n_tg, on_norm, ok = _cos_rows(on_ptr, tg_ptr, rows, B, F, CL_EPS, BLOCK_F)
    g_cl = W_CL * tl.load(g_ptr + 0) + tl.load(g_ptr + 3)
    # A floored norm is a constant, so its direction term drops out.
    radial = tl.where(on_norm > CL_EPS, cos / (n_on * n_on), 0.0)
    d_cos = tg / (n_on * n_tg)[:, None] - on * radial[:, None]
    grad = d_cos * (g_cl * CL_SCALE / B)
    tl.store(grad_ptr + rows.to(tl.int64)[:, None] * F + tl.arange(0, BLOCK_F)[None, :],
             grad.to(grad_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------- launchers

def _patch_blocks(kernel, width: int) -> dict:
    block_p = triton.next_power_of_2(width)
    if is_interpreted(kernel):
        return dict(ROWS=64, BLOCK_P=block_p, num_warps=4)
    # ~4K elements per program: a few patches, every thread with several pixels in flight.
    return dict(ROWS=max(1, 4096 // block_p), BLOCK_P=block_p, num_warps=8)


def _geometry(pred, images, patch: int):
    _, C, H, W = images.shape
    return dict(NUM_ROWS=pred.shape[0] * pred.shape[1], PRED_SB=pred.stride(0),
                PRED_SL=pred.stride(1), L=pred.shape[1], GRID_W=W // patch, IMG_W=W,
                PLANE=H * W, IMG_STRIDE=C * H * W, P=patch, C=C)


def _mask_view(mask: torch.Tensor) -> torch.Tensor:
    # bool loads are bytes either way; viewing them as uint8 keeps one pointer type per kernel.
    mask = mask.contiguous()
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def _feature_blocks(kernel, feat_dim: int) -> dict:
    block_f = triton.next_power_of_2(max(feat_dim, 16))
    rows = 64 if is_interpreted(kernel) else max(1, 2048 // block_f)
    return dict(ROWS_F=rows, BLOCK_F=block_f)


def loss_forward(pred, images, img_mask, fr_mask, online, target, patch: int, norm_pix: bool,
                 weight_sfr: float, weight_cl: float, cl_loss: str):
    """(out fp32 [6] = total, rec_all, rec_sfr, cl, #img_mask, #fr_mask; stats fp32 [2, B*L])."""
    check_launchable(_patch_loss_fwd_kernel, pred.device, _OP)
    geo = _geometry(pred, images, patch)
    rows = geo["NUM_ROWS"]
    f32 = dict(device=pred.device, dtype=torch.float32)
    err = torch.empty(rows, **f32)
    stats = torch.empty((2, rows), **f32)
    out = torch.empty(6, **f32)
    cfg = _patch_blocks(_patch_loss_fwd_kernel, pred.shape[2])
    if rows:
        _patch_loss_fwd_kernel[(triton.cdiv(rows, cfg["ROWS"]),)](
            pred, images, img_mask, fr_mask, err, stats, NORM_PIX=norm_pix, EPS=_NORM_EPS,
            **geo, **cfg)
    has_cl = online is not None
    feat_dim = online.shape[1] if has_cl else 1
    offset, scale = _CL_AFFINE[cl_loss]
    _loss_reduce_kernel[(1,)](err, img_mask, fr_mask, online if has_cl else err,
                              target if has_cl else err, out, rows, pred.shape[0], feat_dim,
                              float(weight_sfr), float(weight_cl), offset, scale,
                              _CL_EPS[cl_loss], HAS_CL=has_cl, BLOCK=1024,
                              **_feature_blocks(_loss_reduce_kernel, feat_dim))
    return out, stats


def loss_backward(g_out, out, stats, pred, images, img_mask, fr_mask, online, target,
                  patch: int, norm_pix: bool, weight_sfr: float, weight_cl: float, cl_loss: str,
                  needs: tuple[bool, bool]):
    """(grad pred [B, L, p*p*C] in pred's dtype, grad online in its dtype); None where not needed."""
    g_out = g_out.to(torch.float32).contiguous()
    g_pred = g_online = None
    if needs[0]:
        geo = _geometry(pred, images, patch)
        g_pred = torch.empty(pred.shape, device=pred.device, dtype=pred.dtype)
        cfg = _patch_blocks(_patch_loss_bwd_kernel, pred.shape[2])
        if geo["NUM_ROWS"]:
            _patch_loss_bwd_kernel[(triton.cdiv(geo["NUM_ROWS"], cfg["ROWS"]),)](
                pred, images, img_mask, fr_mask, stats, out, g_out, g_pred,
                W_SFR=float(weight_sfr), NORM_PIX=norm_pix, **geo, **cfg)
    if needs[1] and online is not None:
        g_online = torch.empty_like(online)
        cfg = _feature_blocks(_cl_bwd_kernel, online.shape[1])
        _cl_bwd_kernel[(triton.cdiv(online.shape[0], cfg["ROWS_F"]),)](
            online, target, g_out, g_online, online.shape[0], online.shape[1], float(weight_cl),
            _CL_AFFINE[cl_loss][1], _CL_EPS[cl_loss], **cfg)
    return g_pred, g_online


# --------------------------------------------------------------------------- autograd

def _prepare(pred, images, img_mask, fr_mask, online, target):
    # pred keeps its strides (the model passes a [:, 1:] slice of the decoder output); only its
    # patch elements must be contiguous.
    if pred.stride(2) != 1:
        pred = pred.contiguous()
    return (pred, images.contiguous(), _mask_view(img_mask), _mask_view(fr_mask),
            None if online is None else online.contiguous(),
            None if target is None else target.detach().contiguous())


@torch.library.custom_op("fsfm_fast::fsfm_loss", mutates_args=())
def _fsfm_loss_op(pred: torch.Tensor, images: torch.Tensor, img_mask: torch.Tensor,
                  fr_mask: torch.Tensor, online: Optional[torch.Tensor],
                  target: Optional[torch.Tensor], patch_size: int, norm_pix: bool,
                  weight_sfr: float, weight_cl: float,
                  cl_loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = _prepare(pred, images, img_mask, fr_mask, online, target)
    with on_device(pred):
        return loss_forward(*inputs, patch_size, norm_pix, weight_sfr, weight_cl, cl_loss)


@_fsfm_loss_op.register_fake
def _(pred, images, img_mask, fr_mask, online, target, patch_size, norm_pix, weight_sfr,
      weight_cl, cl_loss):
    rows = pred.shape[0] * pred.shape[1]
    return (pred.new_empty(6, dtype=torch.float32),
            pred.new_empty((2, rows), dtype=torch.float32))


@torch.library.custom_op("fsfm_fast::fsfm_loss_backward", mutates_args=())
def _fsfm_loss_backward_op(g_out: torch.Tensor, out: torch.Tensor, stats: torch.Tensor,
                           pred: torch.Tensor, images: torch.Tensor, img_mask: torch.Tensor,
                           fr_mask: torch.Tensor, online: Optional[torch.Tensor],
                           target: Optional[torch.Tensor], patch_size: int, norm_pix: bool,
                           weight_sfr: float, weight_cl: float, cl_loss: str,
                           needs: list[bool]) -> list[torch.Tensor]:
    inputs = _prepare(pred, images, img_mask, fr_mask, online, target)
    with on_device(pred):
        grads = loss_backward(g_out, out, stats, *inputs, patch_size, norm_pix, weight_sfr,
                              weight_cl, cl_loss, tuple(needs))
    return [g if g is not None else g_out.new_empty(0) for g in grads]


@_fsfm_loss_backward_op.register_fake
def _(g_out, out, stats, pred, images, img_mask, fr_mask, online, target, patch_size, norm_pix,
      weight_sfr, weight_cl, cl_loss, needs):
    g_pred = pred.new_empty(pred.shape) if needs[0] else g_out.new_empty(0)
    g_online = online.new_empty(online.shape) if needs[1] else g_out.new_empty(0)
    return [g_pred, g_online]


def _setup_context(ctx, inputs, output):
    pred, images, img_mask, fr_mask, online, target, *config = inputs
    ctx.save_for_backward(pred, images, img_mask, fr_mask, online, target, *output)
    ctx.config = tuple(config)
    ctx.mark_non_differentiable(output[1])


def _op_backward(ctx, g_out, _g_stats):
    pred, images, img_mask, fr_mask, online, target, out, stats = ctx.saved_tensors
    need = ctx.needs_input_grad
    needs = [need[0], online is not None and need[4]]
    g_pred, g_online = torch.ops.fsfm_fast.fsfm_loss_backward(
        g_out, out, stats, pred, images, img_mask, fr_mask, online, target, *ctx.config, needs)
    return ((g_pred if needs[0] else None), None, None, None,
            (g_online if needs[1] else None), None, None, None, None, None, None)


_fsfm_loss_op.register_autograd(_op_backward, setup_context=_setup_context)


def fsfm_loss(pred, images, img_mask, fr_mask, online, target, patch_size: int, norm_pix: bool,
              weight_sfr: float, weight_cl: float, cl_loss: str) -> torch.Tensor:
    """Validated inputs (see ops.fsfm_loss) -> fp32 [6] (total, rec_all, rec_sfr, cl, counts)."""
    if target is not None:
        target = target.detach()
    out, _ = torch.ops.fsfm_fast.fsfm_loss(pred, images, img_mask, fr_mask, online, target,
                                           patch_size, bool(norm_pix), float(weight_sfr),
                                           float(weight_cl), cl_loss)
    return out
