"""The 3C loss and the EMA update against straightforward per-sample float64 arithmetic."""
import math

import pytest
import torch

from fsfm_fast import ops


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def loss_loop(pred, images, img_mask, fr_mask, online, target, patch, norm_pix, w_sfr, w_cl, cl):
    """One image, one patch at a time, in float64, from SPEC section 4."""
    B, C, H, W = images.shape
    sums = {"all": [0.0, 0.0], "sfr": [0.0, 0.0]}
    for b in range(B):
        for i in range(H // patch):
            for j in range(W // patch):
                block = images[b, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].double()
                t = block.permute(1, 2, 0).reshape(-1)
                if norm_pix:
                    t = (t - t.mean()) / math.sqrt(float(t.var(unbiased=True)) + 1e-6)
                n = i * (W // patch) + j
                err = float(((pred[b, n].double() - t) ** 2).mean())
                for key, mask in (("all", img_mask), ("sfr", fr_mask)):
                    m = float(mask[b, n])
                    sums[key][0] += err * m
                    sums[key][1] += m
    rec_all = sums["all"][0] / sums["all"][1]
    rec_sfr = sums["sfr"][0] / sums["sfr"][1] if sums["sfr"][1] else 0.0
    dist = 0.0
    if online is not None:
        for b in range(B):
            a, z = online[b].double(), target[b].double()
            cos = float(a @ z) / (float(a.norm()) * float(z.norm()))
            dist += (-0.5 * cos if cl == "simsiam" else 2.0 - 2.0 * cos) / B
    return rec_all + w_sfr * rec_sfr + w_cl * dist, rec_all, rec_sfr, dist


def make_inputs(dtype, B=3, H=16, W=24, patch=8, C=16, seed=0):
    g = gen(seed)
    L = (H // patch) * (W // patch)
    images = torch.randn(B, 3, H, W, generator=g).to(dtype)
    pred = torch.randn(B, L, patch * patch * 3, generator=g).to(dtype)
    img_mask = torch.rand(B, L, generator=g) < 0.6
    img_mask[:, 0] = True
    fr_mask = img_mask & (torch.rand(B, L, generator=g) < 0.5)
    fr_mask[0, 0] = True
    online = torch.randn(B, C, generator=g).to(dtype)
    target = torch.randn(B, C, generator=g).to(dtype)
    return pred, images, img_mask, fr_mask, online, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("cl", ["simsiam", "byol"])
def test_fsfm_loss_matches_per_sample_loop(dtype, norm_pix, cl):
    pred, images, img_mask, fr_mask, online, target = make_inputs(dtype)
    got = ops.fsfm_loss(pred, images, img_mask, fr_mask, online, target, patch_size=8,
                        norm_pix_loss=norm_pix, weight_sfr=0.3, weight_cl=0.5, cl_loss=cl)
    want = loss_loop(pred, images, img_mask, fr_mask, online, target, 8, norm_pix, 0.3, 0.5, cl)
    assert isinstance(got, ops.FSFMLoss)
    for value, expected in zip(got, want):
        assert value.dtype == torch.float32 and value.dim() == 0
        # fp32 accumulation of the given (possibly low-precision) values: tight agreement
        assert abs(float(value) - expected) <= 1e-5 * max(1.0, abs(expected))


def test_mask_dtypes_and_default_weights():
    pred, images, img_mask, fr_mask, online, target = make_inputs(torch.float32, seed=1)
    base = ops.fsfm_loss(pred, images, img_mask, fr_mask, online, target, patch_size=8)
    for as_type in (torch.uint8, torch.float32, torch.bfloat16):
        other = ops.fsfm_loss(pred, images, img_mask.to(as_type), fr_mask.to(as_type), online,
                              target, patch_size=8)
        assert torch.equal(torch.stack(other), torch.stack(base))
    expected = base.rec_all + 0.007 * base.rec_sfr + 0.1 * base.cl
    torch.testing.assert_close(base.total, expected)
    no_cl = ops.fsfm_loss(pred, images, img_mask, fr_mask, patch_size=8)
    assert float(no_cl.cl) == 0.0
    torch.testing.assert_close(no_cl.total, base.rec_all + 0.007 * base.rec_sfr)


def test_empty_region_gives_zero_sfr_and_finite_gradients():
    pred, images, img_mask, _, online, target = make_inputs(torch.float32, seed=2)
    pred.requires_grad_(True)
    out = ops.fsfm_loss(pred, images, img_mask, torch.zeros_like(img_mask), online, target,
                        patch_size=8)
    assert out.rec_sfr.item() == 0.0 and math.isfinite(out.total.item())
    out.total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # hidden nowhere else than img_mask: visible patches get no gradient
    assert (pred.grad[~img_mask] == 0).all()


def test_all_hidden_rows():
    pred, images, _, _, online, target = make_inputs(torch.float32, seed=3)
    every = torch.ones(pred.shape[:2], dtype=torch.bool)
    got = ops.fsfm_loss(pred, images, every, every, online, target, patch_size=8)
    want = loss_loop(pred, images, every, every, online, target, 8, True, 0.007, 0.1, "simsiam")
    torch.testing.assert_close(got.total.double(), torch.tensor(want[0], dtype=torch.float64))
    torch.testing.assert_close(got.rec_all, got.rec_sfr)


@pytest.mark.parametrize("cl", ["simsiam", "byol"])
def test_gradcheck_and_no_gradient_into_target(cl):
    pred, images, img_mask, fr_mask, online, target = make_inputs(torch.float64, B=2, H=8, W=8,
                                                                  patch=4, C=5, seed=4)
    pred.requires_grad_(True)
    online.requires_grad_(True)
    target.requires_grad_(True)

    def total(p, o):
        return ops.fsfm_loss(p, images, img_mask, fr_mask, o, target, patch_size=4,
                             cl_loss=cl, weight_cl=1.0, weight_sfr=0.5).total

    assert total(pred, online).dtype == torch.float64  # float64 in, float64 accumulation
    assert torch.autograd.gradcheck(total, (pred, online))
    total(pred, online).backward()
    assert target.grad is None
    assert online.grad.abs().sum() > 0


def test_distillation_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    pred, images, img_mask, fr_mask, _, _ = make_inputs(torch.float32, B=2)
    sims = ops.fsfm_loss(pred, images, img_mask, fr_mask, a, b, patch_size=8).cl
    byol = ops.fsfm_loss(pred, images, img_mask, fr_mask, a, b, patch_size=8, cl_loss="byol").cl
    assert float(sims) == pytest.approx(-0.5 * (1.0 + 0.0) / 2)
    assert float(byol) == pytest.approx((0.0 + 2.0) / 2)


@pytest.mark.parametrize("change,error", [
    (dict(pred=torch.randn(3, 6, 100)), ValueError),
    (dict(pred=torch.randn(3, 5, 192)), ValueError),
    (dict(img_mask=torch.full((3, 6), 0.5)), ValueError),
    (dict(fr_mask=torch.zeros(3, 5, dtype=torch.bool)), ValueError),
    (dict(fr_mask=torch.zeros(3, 6, dtype=torch.int64)), TypeError),
    (dict(target_features=None), ValueError),
    (dict(online_features=torch.randn(3, 7)), ValueError),
    (dict(cl_loss="barlow"), ValueError),
    (dict(patch_size=5), ValueError),
    (dict(backend="cuda"), ValueError),
])
def test_fsfm_loss_validation(change, error):
    pred, images, img_mask, fr_mask, online, target = make_inputs(torch.float32)
    args = dict(pred=pred, images=images, img_mask=img_mask, fr_mask=fr_mask,
                online_features=online, target_features=target, patch_size=8)
    args.update(change)
    with pytest.raises(error):
        ops.fsfm_loss(**args)


def test_region_outside_the_hidden_patches_is_refused():
    pred, images, img_mask, fr_mask, online, target = make_inputs(torch.float32)
    fr_mask = fr_mask.clone()
    fr_mask[2, (~img_mask[2]).nonzero()[0]] = True  # a "fully hidden" patch that is visible
    with pytest.raises(ValueError, match=r"fr_mask must be a subset of img_mask.*\[2\]"):
        ops.fsfm_loss(pred, images, img_mask, fr_mask, online, target, patch_size=8)
    # the training step's own masks are trusted: validate=False checks nothing
    ops.fsfm_loss(pred, images, img_mask, fr_mask, online, target, patch_size=8, validate=False)


def test_empty_batch_is_a_clear_error():
    pred, images, img_mask, fr_mask, online, target = make_inputs(torch.float32)
    with pytest.raises(ValueError, match="batch is empty"):
        ops.fsfm_loss(pred[:0], images[:0], img_mask[:0], fr_mask[:0], online[:0], target[:0], patch_size=8)


# --------------------------------------------------------------------------- EMA

def test_ema_update_formula():
    g = gen(5)
    online = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g).double()]
    target = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g).double()]
    before = [t.clone() for t in target]
    ops.ema_update(target, online, 0.996)
    for t, t0, o in zip(target, before, online):
        torch.testing.assert_close(t, 0.996 * t0 + (1 - 0.996) * o)
    ops.ema_update(target, online, 1.0)
    for t, t0, o in zip(target, before, online):
        torch.testing.assert_close(t, 0.996 * t0 + (1 - 0.996) * o)
    ops.ema_update(target, online, 0.0)
    for t, o in zip(target, online):
        assert torch.equal(t, o)


def test_ema_update_skipped_on_the_device():
    online, target = [torch.randn(4, 3), torch.randn(7)], [torch.randn(4, 3), torch.randn(7)]
    before = [t.clone() for t in target]
    ops.ema_update(target, online, 0.5, skip=torch.tensor(True))
    assert all(torch.equal(t, t0) for t, t0 in zip(target, before))
    ops.ema_update(target, online, 0.5, skip=torch.tensor(False))
    plain = [t.clone() for t in before]
    ops.ema_update(plain, online, 0.5)
    assert all(torch.equal(t, p) for t, p in zip(target, plain))  # the same arithmetic as a float weight
    with pytest.raises(ValueError, match="skip"):
        ops.ema_update(target, online, 0.5, skip=torch.tensor([True]))


def test_ema_update_on_parameters_without_autograd_history():
    online = torch.nn.Linear(3, 2)
    target = torch.nn.Linear(3, 2)
    ops.ema_update(list(target.parameters()), list(online.parameters()), 0.5)
    assert target.weight.grad_fn is None and target.weight.requires_grad


@pytest.mark.parametrize("targets,onlines,momentum", [
    ([torch.zeros(2)], [], 0.9),
    ([torch.zeros(2)], [torch.zeros(3)], 0.9),
    ([torch.zeros(2)], [torch.zeros(2).double()], 0.9),
    ([torch.zeros(2)], [torch.zeros(2)], 1.5),
    ([torch.zeros(2)], [torch.zeros(2)], float("nan")),
    ([torch.zeros(2, dtype=torch.int64)], [torch.zeros(2, dtype=torch.int64)], 0.5),
])
def test_ema_update_validation(targets, onlines, momentum):
    with pytest.raises((ValueError, TypeError)):
        ops.ema_update(targets, onlines, momentum)
