"""The Triton kernels of gather_visible, restore_masked and fsfm_loss against reference.py.

Without a GPU every kernel runs in the Triton interpreter (TRITON_INTERPRET=1, set by conftest
before any kernel is defined); with one, the same tests run on it, plus the `cuda` ones.

Tolerances are relative to the largest magnitude of the expected tensor:
fp32 1e-5; fp16 2e-3; bf16 2e-2 (the interpreter truncates fp32 -> bf16 where the GPU rounds
to nearest, so a bf16 result may sit one unit in the last place further off).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from fsfm_fast import ops  # noqa: E402  (after the interpreter switch above)
from fsfm_fast.models import create_online  # noqa: E402
from fsfm_fast.ops import reference  # noqa: E402
from fsfm_fast.ops.selfcheck import TOLERANCES as TOL  # noqa: E402  (the start-up check uses them too)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = list(TOL)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_near(got, want, tol, what=""):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1e-12)
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} x {scale:.3g}"


def visible_ids(batch, num_patches, keep, seed):
    """ids_keep [B, keep]: distinct, ascending, as mask_to_indices gives."""
    keys = torch.rand(batch, num_patches, generator=gen(seed))
    return keys.argsort(dim=1)[:, :keep].sort(dim=1).values


def hidden_mask(batch, num_patches, hidden, seed):
    keys = torch.rand(batch, num_patches, generator=gen(seed))
    return keys.argsort(dim=1).argsort(dim=1) < hidden


def leaves(*tensors, grad=True):
    return [None if t is None else t.to(DEVICE).requires_grad_(grad and t.is_floating_point())
            for t in tensors]


def grads(out, inputs, upstream):
    live = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, live, upstream)


# --------------------------------------------------------------------------- gather_visible

def gather_inputs(B, H, W, p, D, keep, dtype, seed, with_bias=True):
    g = gen(seed)
    L = (H // p) * (W // p)
    images = torch.randn(B, 3, H, W, generator=g).to(dtype)
    weight = (torch.randn(D, 3, p, p, generator=g) * 0.05).to(dtype)
    bias = torch.randn(D, generator=g).to(dtype) if with_bias else None
    pos = torch.randn(L, D, generator=g).to(dtype)
    return images, visible_ids(B, L, keep, seed), weight, bias, pos


GATHER_SHAPES = [  # B, H, W, p, D, K
    (3, 48, 64, 16, 40, 5),    # K not a power of two, D under one block
    (1, 56, 42, 14, 72, 7),    # patch 14, batch 1, D over one block and not a multiple of it
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GATHER_SHAPES)
def test_gather_visible_forward_and_gradients(dtype, shape):
    B, H, W, p, D, K = shape
    images, ids, weight, bias, pos = gather_inputs(B, H, W, p, D, K, dtype, seed=1)
    images, weight, bias, pos = leaves(images, weight, bias, pos)
    ids = ids.to(DEVICE)
    out = ops.gather_visible(images, ids, weight, bias, pos, backend="triton")
    assert out.dtype == dtype and out.shape == (B, K, D)

    exact = leaves(*(t.detach().double() for t in (images, weight, bias, pos)))
    want = reference.gather_visible(exact[0], ids, exact[1], exact[2], exact[3])
    assert_near(out, want, TOL[dtype], "out")
    upstream = torch.randn(out.shape, generator=gen(2)).to(dtype).to(DEVICE)
    for name, got, ref in zip(("images", "weight", "bias", "pos"),
                              grads(out, [images, weight, bias, pos], upstream),
                              grads(want, exact, upstream.double())):
        assert got.dtype == dtype
        assert_near(got, ref, TOL[dtype], name)


def test_gather_visible_frozen_inputs_and_no_bias():
    images, ids, weight, _, pos = gather_inputs(2, 32, 32, 16, 24, 3, torch.float32, seed=3,
                                                with_bias=False)
    images, pos = leaves(images, pos, grad=False)
    (weight,) = leaves(weight)
    ids = ids.to(DEVICE)
    out = ops.gather_visible(images, ids, weight, None, pos, backend="triton")
    out.sum().backward()
    want_w = torch.autograd.grad(reference.gather_visible(images, ids, weight, None, pos).sum(),
                                 weight)[0]
    assert_near(weight.grad, want_w, 1e-5, "weight")
    assert images.grad is None and pos.grad is None


def test_gather_visible_image_gradient_only_at_visible_patches():
    images, _, weight, bias, pos = gather_inputs(1, 32, 32, 16, 8, 2, torch.float32, seed=4)
    (images,) = leaves(images)
    ops.gather_visible(images, torch.tensor([[1, 2]], device=DEVICE), weight.to(DEVICE),
                       bias.to(DEVICE), pos.to(DEVICE), backend="triton").sum().backward()
    per_patch = images.grad[0].abs().sum(0).reshape(2, 16, 2, 16).sum((1, 3))
    assert per_patch[0, 0] == 0 and per_patch[1, 1] == 0
    assert per_patch[0, 1] > 0 and per_patch[1, 0] > 0


@pytest.mark.parametrize("keep", [0, 4])  # every patch hidden / every patch visible
def test_gather_visible_all_hidden_and_all_visible(keep):
    images, ids, weight, bias, pos = gather_inputs(2, 32, 32, 16, 20, keep, torch.float32, seed=5)
    images, weight, bias = leaves(images, weight, bias)
    ids = ids.to(DEVICE)
    out = ops.gather_visible(images, ids, weight, bias, pos.to(DEVICE), backend="triton")
    want = reference.gather_visible(images, ids, weight, bias, pos.to(DEVICE))
    assert_near(out, want, 1e-5, "out")
    (out.sum() + 0 * weight.sum()).backward()
    if keep == 0:
        assert out.shape == (2, 0, 20)
        assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(images.grad) == 0
    else:
        assert torch.count_nonzero(images.grad) == images.numel()


def test_gather_visible_under_autocast_matches_reference_dtype_and_values():
    images, ids, weight, bias, pos = gather_inputs(2, 32, 48, 16, 24, 3, torch.float32, seed=6)
    images, weight, bias = leaves(images, weight, bias)
    ids, pos = ids.to(DEVICE), pos.to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = ops.gather_visible(images, ids, weight, bias, pos, backend="triton")
        want = ops.gather_visible(images, ids, weight, bias, pos, backend="torch")
    assert out.dtype == want.dtype == torch.float32
    assert_near(out, want, 2e-2, "out")
    got_w, ref_w = (torch.autograd.grad(o.sum(), weight)[0] for o in (out, want))
    assert got_w.dtype == torch.float32
    assert_near(got_w, ref_w, 2e-2, "weight")


def test_gather_visible_rejects_repeated_index_and_float64():
    images, _, weight, bias, pos = gather_inputs(1, 32, 32, 16, 8, 2, torch.float32, seed=7)
    args = [t.to(DEVICE) for t in (images, torch.tensor([[1, 1]]), weight, bias, pos)]
    with pytest.raises(ValueError, match="repeats an index"):
        ops.gather_visible(*args, backend="triton")
    doubles = [t.double() if t.is_floating_point() else t for t in args]
    doubles[1] = torch.tensor([[1, 2]], device=DEVICE)
    with pytest.raises(TypeError, match="Triton kernels take"):
        ops.gather_visible(*doubles, backend="triton")
    assert ops.gather_visible(*doubles).dtype == torch.float64  # auto: the exact reference


# --------------------------------------------------------------------------- restore_masked

def restore_inputs(B, L, K, D, token_dtype, fill_dtype, pos_dtype, seed):
    g = gen(seed)
    tokens = torch.randn(B, K + 1, D, generator=g).to(token_dtype)
    fill = torch.randn(1, 1, D, generator=g).to(fill_dtype)
    pos = None if pos_dtype is None else torch.randn(L + 1, D, generator=g).to(pos_dtype)
    _, ids_restore = ops.mask_to_indices(hidden_mask(B, L, L - K, seed))
    return tokens, ids_restore, fill, pos


RESTORE_CASES = [  # B, L, K, D, tokens, mask_token, pos_embed dtypes
    (3, 16, 5, 40, torch.float32, torch.float32, torch.float32),
    (1, 49, 12, 72, torch.bfloat16, torch.float32, torch.float32),  # promotes like torch.cat
    (2, 16, 3, 24, torch.float16, torch.float16, None),
    (2, 12, 5, 24, torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (2, 9, 0, 16, torch.float32, torch.float32, torch.float32),     # every patch hidden
    (2, 9, 9, 16, torch.float16, torch.float16, torch.float16),     # every patch visible
]


@pytest.mark.parametrize("case", RESTORE_CASES)
def test_restore_masked_forward_and_gradients(case):
    B, L, K, D, t_dtype, m_dtype, p_dtype = case
    tokens, ids_restore, fill, pos = restore_inputs(B, L, K, D, t_dtype, m_dtype, p_dtype, seed=8)
    tokens, fill, pos = leaves(tokens, fill, pos)
    ids_restore = ids_restore.to(DEVICE)
    out = ops.restore_masked(tokens, ids_restore, fill, pos, backend="triton")
    want = reference.restore_masked(tokens, ids_restore, fill, pos)
    assert out.dtype == want.dtype
    # cat and gather are exact; an added pos_embed rounds once, as torch does
    tol = 0.0 if pos is None or out.dtype != torch.bfloat16 else TOL[torch.bfloat16]
    assert_near(out, want, tol, "out")
    upstream = torch.randn(out.shape, generator=gen(9)).to(out.dtype).to(DEVICE)
    inputs = [tokens, fill, pos]
    for name, got, ref in zip(("tokens", "mask_token", "pos"), grads(out, inputs, upstream),
                              grads(want, inputs, upstream)):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert_near(got, ref, TOL[got.dtype], name)


def test_restore_masked_frozen_pos_and_flat_mask_token():
    tokens, ids_restore, fill, pos = restore_inputs(2, 16, 4, 24, torch.float32, torch.float32,
                                                    torch.float32, seed=10)
    tokens, fill = leaves(tokens, fill.reshape(24))
    (pos,) = leaves(pos, grad=False)
    out = ops.restore_masked(tokens, ids_restore.to(DEVICE), fill, pos, backend="triton")
    out.backward(torch.ones_like(out))
    assert fill.grad.shape == (24,) and pos.grad is None
    assert torch.equal(fill.grad, torch.full_like(fill, 2.0 * 12))  # 12 hidden places per image


def test_restore_masked_rejects_index_that_is_not_a_permutation():
    tokens, ids_restore, fill, _ = restore_inputs(1, 8, 3, 16, torch.float32, torch.float32,
                                                  None, seed=11)
    ids_restore[0, 1] = ids_restore[0, 0]
    with pytest.raises(ValueError, match="repeats an index"):
        ops.restore_masked(tokens.to(DEVICE), ids_restore.to(DEVICE), fill.to(DEVICE),
                           backend="triton")


# --------------------------------------------------------------------------- fsfm_loss

def loss_inputs(B, H, W, p, dtype, seed, feat=16, mask_dtype=torch.bool):
    g = gen(seed)
    L = (H // p) * (W // p)
    images = torch.randn(B, 3, H, W, generator=g).to(dtype)
    # a [:, 1:] slice of a wider tensor, as the model's pixel decoder hands it over
    pred = torch.randn(B, L + 1, p * p * 3, generator=g).to(dtype)
    img_mask = torch.rand(B, L, generator=g) < 0.6
    img_mask[:, 0] = True
    fr_mask = img_mask & (torch.rand(B, L, generator=g) < 0.5)
    online = torch.randn(B, feat, generator=g).to(dtype)
    target = torch.randn(B, feat, generator=g).to(dtype)
    return pred, images, img_mask.to(mask_dtype), fr_mask.to(mask_dtype), online, target


def run_loss(backend, pred_full, images, img_mask, fr_mask, online, target, p, **kw):
    pred_full, online = leaves(pred_full, online)
    pred = pred_full[:, 1:]
    out = ops.fsfm_loss(pred, images.to(DEVICE), img_mask.to(DEVICE), fr_mask.to(DEVICE),
                        online, None if target is None else target.to(DEVICE), patch_size=p,
                        backend=backend, **kw)
    upstream = torch.tensor([1.0, 0.3, -0.7, 0.5], device=DEVICE)  # every output's gradient path
    weighted = (torch.stack(out) * upstream).sum()
    g_pred, g_online = torch.autograd.grad(weighted, [pred_full, online])
    return out, g_pred, g_online


LOSS_CASES = [  # B, H, W, p, feature dim, mask dtype
    (3, 16, 24, 8, 16, torch.bool),
    (1, 28, 42, 14, 20, torch.float32),   # patch 14, batch 1, 0/1 float masks
    (2, 32, 32, 16, 24, torch.uint8),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LOSS_CASES)
@pytest.mark.parametrize("norm_pix,cl", [(True, "simsiam"), (False, "byol")])
def test_fsfm_loss_forward_and_gradients(dtype, case, norm_pix, cl):
    B, H, W, p, feat, mask_dtype = case
    inputs = loss_inputs(B, H, W, p, dtype, seed=12, feat=feat, mask_dtype=mask_dtype)
    kw = dict(norm_pix_loss=norm_pix, cl_loss=cl, weight_sfr=0.3, weight_cl=0.5)
    got, g_pred, g_online = run_loss("triton", *inputs, p, **kw)
    want, w_pred, w_online = run_loss("torch", *inputs, p, **kw)
    for name, a, b in zip(("total", "rec_all", "rec_sfr", "cl"), got, want):
        assert a.dtype == torch.float32 and a.dim() == 0
        assert_near(a, b, 1e-5, name)  # fp32 accumulation of the same values, any input dtype
    assert g_pred.dtype == dtype and g_online.dtype == dtype
    assert_near(g_pred, w_pred, TOL[dtype], "pred")
    assert_near(g_online, w_online, TOL[dtype], "online")
    visible = ~(inputs[2].bool() | inputs[3].bool())
    assert torch.count_nonzero(g_pred[:, 1:][visible.to(DEVICE)]) == 0


def test_fsfm_loss_empty_region_and_no_features():
    pred, images, img_mask, _, online, target = loss_inputs(2, 16, 16, 8, torch.float32, seed=13)
    empty = torch.zeros_like(img_mask)
    got, g_pred, _ = run_loss("triton", pred, images, img_mask, empty, online, target, 8)
    want, w_pred, _ = run_loss("torch", pred, images, img_mask, empty, online, target, 8)
    assert float(got.rec_sfr.detach()) == 0.0 and torch.isfinite(g_pred).all()
    assert_near(torch.stack(got), torch.stack(want), 1e-5, "losses")
    assert_near(g_pred, w_pred, 1e-5, "pred")
    plain = ops.fsfm_loss(pred[:, 1:].to(DEVICE), images.to(DEVICE), img_mask.to(DEVICE),
                          empty.to(DEVICE), patch_size=8, backend="triton")
    assert float(plain.cl.detach()) == 0.0
    assert_near(plain.total, got.rec_all, 1e-6, "total without features")


def test_fsfm_loss_all_hidden_and_all_visible_rows():
    pred, images, _, _, online, target = loss_inputs(2, 16, 16, 8, torch.float32, seed=14)
    img_mask = torch.zeros(2, 4, dtype=torch.bool)
    img_mask[0] = True  # image 0 wholly hidden, image 1 wholly visible
    got, g_pred, _ = run_loss("triton", pred, images, img_mask, img_mask, online, target, 8)
    want, w_pred, _ = run_loss("torch", pred, images, img_mask, img_mask, online, target, 8)
    assert_near(torch.stack(got), torch.stack(want), 1e-5, "losses")
    assert_near(g_pred, w_pred, 1e-5, "pred")
    assert torch.count_nonzero(g_pred[1]) == 0


# --------------------------------------------------------------------------- dispatch

def test_auto_uses_the_reference_on_cpu_and_the_environment_forces_triton(monkeypatch):
    pred, images, img_mask, fr_mask, online, target = loss_inputs(1, 16, 16, 8, torch.float32, 15)
    args = tuple(t.to(DEVICE) for t in (pred[:, 1:], images, img_mask, fr_mask, online, target))
    calls = []
    plain = reference.fsfm_loss
    monkeypatch.setattr(reference, "fsfm_loss", lambda *a, **k: calls.append(1) or plain(*a, **k))
    auto = ops.fsfm_loss(*args, patch_size=8)
    assert calls == ([] if DEVICE == "cuda" else [1])
    monkeypatch.setenv("FSFM_OPS_BACKEND", "triton")
    forced = ops.fsfm_loss(*args, patch_size=8)
    assert len(calls) == (0 if DEVICE == "cuda" else 1)  # the environment forced the kernels
    assert_near(forced.total, auto.total, 1e-5, "total")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal only exists without a GPU")
def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    tokens, ids_restore, fill, _ = restore_inputs(1, 8, 3, 16, torch.float32, torch.float32,
                                                  None, seed=16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.restore_masked(tokens, ids_restore, fill, backend="triton")


# --------------------------------------------------------------------------- custom ops / compile

def test_custom_ops_pass_opcheck():
    images, ids, weight, bias, pos = gather_inputs(1, 32, 32, 16, 16, 2, torch.float32, seed=17)
    images, weight, bias = leaves(images, weight, bias)
    torch.library.opcheck(torch.ops.fsfm_fast.gather_visible.default,
                          (images, ids.to(DEVICE), weight, bias, pos.to(DEVICE), torch.float32,
                           torch.float32))
    tokens, ids_restore, fill, pos = restore_inputs(1, 8, 3, 16, torch.float32, torch.float32,
                                                    torch.float32, seed=18)
    tokens, fill = leaves(tokens, fill)
    torch.library.opcheck(torch.ops.fsfm_fast.restore_masked.default,
                          (tokens, ids_restore.to(DEVICE), fill, pos.to(DEVICE), torch.float32))
    pred, images, img_mask, fr_mask, online, target = loss_inputs(1, 16, 16, 8, torch.float32, 19)
    pred, online = leaves(pred[:, 1:].contiguous(), online)
    torch.library.opcheck(torch.ops.fsfm_fast.fsfm_loss.default,
                          (pred, images.to(DEVICE), img_mask.to(DEVICE).view(torch.uint8),
                           fr_mask.to(DEVICE).view(torch.uint8), online, target.to(DEVICE), 8,
                           True, 0.007, 0.1, "simsiam"))


class GraphRecorder:
    """torch.compile backend: AOTAutograd with eager execution, keeping the forward and backward
    graphs so the test can see the custom ops inside them (inductor compiles the same step too,
    but takes about 100 s for the tiny model on 2 CPU cores; aot_eager traces the same graphs)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def keep(graph, _inputs):
            self.graphs.append(str(graph.graph))
            return make_boxed_func(graph.forward)

        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(gm, example_inputs)


def tiny_pair(img_size=64):
    torch.manual_seed(0)
    fused = create_online("fsfm_vit_tiny_patch16", img_size=img_size, ops_backend="triton")
    ref = create_online("fsfm_vit_tiny_patch16", img_size=img_size, ops_backend="torch")
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():  # non-zero cls slots, so a dropped cls position term would show
        for model in (fused, ref):
            for pos in (model.pos_embed, model.rep_decoder_pos_embed, model.decoder_pos_embed):
                pos[0, 0].copy_(torch.linspace(-1, 1, pos.shape[-1]))
    return fused.to(DEVICE), ref.to(DEVICE)


def step_inputs(batch, img_size=64, seed=20):
    g = gen(seed)
    L = (img_size // 16) ** 2
    images = torch.randn(batch, 3, img_size, img_size, generator=g)
    img_mask = hidden_mask(batch, L, int(0.75 * L), seed)
    fr_mask = img_mask & (torch.rand(batch, L, generator=g) < 0.5)
    target = torch.nn.functional.normalize(torch.randn(batch, 256, generator=g), dim=-1)
    return [t.to(DEVICE) for t in (images, img_mask, fr_mask, target)]


def losses_and_grads(model, images, img_mask, fr_mask, target, forward=None):
    model.zero_grad(set_to_none=True)
    out = (forward or model)(images, img_mask, fr_mask, target)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [out.loss, out.loss_rec_all, out.loss_rec_sfr, out.loss_cl], grads


def test_model_with_triton_ops_matches_reference_path():
    fused, ref = tiny_pair()
    batch = step_inputs(2)
    got_losses, got_grads = losses_and_grads(fused, *batch)
    want_losses, want_grads = losses_and_grads(ref, *batch)
    for a, b in zip(got_losses, want_losses):
        assert_near(a, b, 1e-5, "loss")
    assert set(got_grads) == set(want_grads)
    for name, want in want_grads.items():
        assert_near(got_grads[name], want, 1e-4, name)
    assert got_grads["mask_token"].abs().sum() > 0


def relative_error(got, want):
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def test_model_under_bf16_autocast_is_as_accurate_as_the_reference_path():
    """Under bf16 both paths round matmul operands (at different places: the fused pixel decoder
    embeds before restoring), so they are compared by their distance to the fp32 result."""
    fused, ref = tiny_pair()
    batch = step_inputs(2)
    exact_losses, exact_grads = losses_and_grads(ref, *batch)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got_losses, got_grads = losses_and_grads(fused, *batch)
        want_losses, want_grads = losses_and_grads(ref, *batch)
    pairs = [(g.detach(), w.detach(), e.detach())
             for g, w, e in zip(got_losses, want_losses, exact_losses)]
    pairs += [(got_grads[n], want_grads[n], e) for n, e in exact_grads.items()]
    for got, want, exact in pairs:
        assert got.dtype == want.dtype
        assert relative_error(got, exact) <= 2.5 * relative_error(want, exact) + 2e-3


def test_compiled_training_step_fullgraph_matches_eager():
    fused, _ = tiny_pair()
    images, img_mask, fr_mask, target = step_inputs(2, seed=21)
    ids = ops.mask_to_indices(img_mask)  # host-side: its K sets the shapes of the graph

    def forward(images, img_mask, fr_mask, target):
        return fused(images, img_mask, fr_mask, target, ids=ids)

    recorder = GraphRecorder()
    compiled = torch.compile(forward, backend=recorder, fullgraph=True)
    got_losses, got_grads = losses_and_grads(fused, images, img_mask, fr_mask, target, compiled)
    want_losses, want_grads = losses_and_grads(fused, images, img_mask, fr_mask, target, forward)
    for a, b in zip(got_losses, want_losses):
        assert_near(a, b, 1e-6, "loss")
    for name, want in want_grads.items():
        assert_near(got_grads[name], want, 1e-5, name)
    graphs = "\n".join(recorder.graphs)
    for op in ("gather_visible", "restore_masked", "fsfm_loss"):
        assert f"fsfm_fast.{op}.default" in graphs
        assert f"fsfm_fast.{op}_backward.default" in graphs


# --------------------------------------------------------------------------- GPU only

@pytest.mark.cuda
def test_gpu_vit_b_shapes_bf16_and_bit_reproducible():
    images, ids, weight, bias, pos = gather_inputs(8, 224, 224, 16, 768, 49, torch.bfloat16, 22)
    images, weight, bias = leaves(images, weight, bias)
    ids, pos = ids.to(DEVICE), pos.to(DEVICE)
    runs = []
    for _ in range(2):
        out = ops.gather_visible(images, ids, weight, bias, pos, backend="triton")
        runs.append((out,) + tuple(torch.autograd.grad(out.float().square().sum(),
                                                       [images, weight, bias])))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    want = reference.gather_visible(images.float(), ids, weight.float(), bias.float(), pos.float())
    assert_near(runs[0][0], want, 2e-2, "out")

    tokens, ids_restore, fill, pos = restore_inputs(64, 196, 49, 768, torch.bfloat16,
                                                    torch.float32, torch.float32, seed=23)
    tokens, fill = leaves(tokens, fill)
    ids_restore, pos = ids_restore.to(DEVICE), pos.to(DEVICE)
    fills = [torch.autograd.grad(ops.restore_masked(tokens, ids_restore, fill, pos,
                                                    backend="triton").sum(), fill)[0]
             for _ in range(2)]
    assert torch.equal(*fills)
    want = torch.autograd.grad(reference.restore_masked(tokens, ids_restore, fill, pos).sum(),
                               fill)[0]
    assert_near(fills[0], want, 1e-4, "mask_token")

    inputs = loss_inputs(64, 224, 224, 16, torch.bfloat16, seed=24, feat=256)
    got = [run_loss("triton", *inputs, 16) for _ in range(2)]
    want = run_loss("torch", *inputs, 16)
    assert torch.equal(torch.stack(got[0][0]), torch.stack(got[1][0]))
    assert_near(torch.stack(got[0][0]), torch.stack(want[0]), 1e-4, "losses")
    assert_near(got[0][1], want[1], 2e-2, "pred")


@pytest.mark.cuda
def test_gpu_auto_backend_runs_the_kernels_in_the_model(monkeypatch):
    fused, ref = tiny_pair(112)
    fused.ops_backend = "auto"
    batch = step_inputs(4, 112, seed=25)
    want_losses, want_grads = losses_and_grads(ref, *batch)

    def refuse(*args, **kwargs):
        raise AssertionError("backend 'auto' fell back to the reference on CUDA tensors")

    for name in ("gather_visible", "restore_masked", "fsfm_loss"):
        monkeypatch.setattr(reference, name, refuse)
    got_losses, got_grads = losses_and_grads(fused, *batch)
    for a, b in zip(got_losses, want_losses):
        assert_near(a, b, 1e-5, "loss")
    for name, want in want_grads.items():
        assert_near(got_grads[name], want, 1e-4, name)
