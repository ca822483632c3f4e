"""Token ops: mask -> indices, patchify, visible-patch embedding and restore, against
per-sample PyTorch written the way the original model does it (conv, flatten, gather)."""
import pytest
import torch
import torch.nn.functional as F

from fsfm_fast import ops


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_mask(batch, num_patches, num_mask, seed=0):
    keys = torch.rand(batch, num_patches, generator=gen(seed))
    rank = keys.argsort(1).argsort(1)
    return rank < num_mask


# --------------------------------------------------------------------------- indices / layout

def test_mask_to_indices_order_and_inverse():
    mask = random_mask(5, 20, 13, seed=1)
    for as_type in (torch.bool, torch.uint8, torch.float32):
        ids_keep, ids_restore = ops.mask_to_indices(mask.to(as_type))
        assert ids_keep.dtype == torch.int64 and ids_keep.shape == (5, 7)
        for b in range(5):
            visible = [i for i in range(20) if not mask[b, i]]
            hidden = [i for i in range(20) if mask[b, i]]
            assert ids_keep[b].tolist() == visible
            order = visible + hidden
            assert [order[j] for j in ids_restore[b].tolist()] == list(range(20))


def test_mask_to_indices_rejects_bad_masks():
    mask = random_mask(3, 10, 6)
    mask[1, mask[1].nonzero()[0]] = False
    with pytest.raises(ValueError, match="same number"):
        ops.mask_to_indices(mask)
    with pytest.raises(ValueError, match="only 0 and 1"):
        ops.mask_to_indices(torch.full((2, 4), 0.5))
    with pytest.raises(ValueError):
        ops.mask_to_indices(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TypeError):
        ops.mask_to_indices(torch.zeros(2, 4, dtype=torch.int64))


def test_mask_to_indices_with_a_static_count():
    mask = random_mask(4, 20, 15, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(ops.mask_to_indices(mask, 5), ops.mask_to_indices(mask)))
    with pytest.raises(ValueError, match="leave 6 patches visible"):
        ops.mask_to_indices(mask, 6)
    # trusted (the training step's own masks): nothing is checked, nothing is read back
    ids_keep, _ = ops.mask_to_indices(mask, 6, validate=False)
    assert ids_keep.shape == (4, 6)
    with pytest.raises(ValueError, match="num_keep"):
        ops.mask_to_indices(mask, 21)


@pytest.mark.parametrize("height,width,patch", [(32, 48, 8), (28, 42, 14)])
def test_patchify_layout_and_roundtrip(height, width, patch):
    images = torch.randn(2, 3, height, width, generator=gen(2))
    x = ops.patchify(images, patch)
    w = width // patch
    assert x.shape == (2, (height // patch) * w, patch * patch * 3)
    for b, i, j, r, c, ch in [(0, 0, 0, 0, 0, 0), (1, 1, 2, 3, 5, 2), (0, 1, w - 1, patch - 1, 1, 1)]:
        assert x[b, i * w + j, (r * patch + c) * 3 + ch] == images[b, ch, i * patch + r, j * patch + c]
    assert torch.equal(ops.unpatchify(x, patch, height, width), images)
    with pytest.raises(ValueError):
        ops.patchify(images, 5)
    with pytest.raises(ValueError):
        ops.unpatchify(x[:, 1:], patch, height, width)


# --------------------------------------------------------------------------- gather_visible

def conv_then_gather(images, ids_keep, weight, bias, pos_embed):
    out = []
    for b in range(images.shape[0]):
        tokens = F.conv2d(images[b:b + 1], weight, bias, stride=weight.shape[-1])
        tokens = tokens.flatten(2).transpose(1, 2)[0] + pos_embed
        out.append(tokens[ids_keep[b]])
    return torch.stack(out)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("height,width,patch", [(64, 64, 16), (56, 56, 14), (48, 80, 16)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gather_visible_equals_conv_patch_embed(dtype, tol, height, width, patch, with_bias):
    g = gen(3)
    B, D = 3, 24
    L = (height // patch) * (width // patch)
    images = torch.randn(B, 3, height, width, generator=g).to(dtype)
    weight = (torch.randn(D, 3, patch, patch, generator=g) * 0.05).to(dtype)
    bias = torch.randn(D, generator=g).to(dtype) if with_bias else None
    pos = torch.randn(L, D, generator=g).to(dtype)
    ids_keep, _ = ops.mask_to_indices(random_mask(B, L, L - L // 4, seed=4))
    got = ops.gather_visible(images, ids_keep, weight, bias, pos)
    want = conv_then_gather(images.double(), ids_keep, weight.double(),
                            None if bias is None else bias.double(), pos.double())
    assert got.shape == (B, L // 4, D) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    # a model stores pos_embed as [1, L, D]
    torch.testing.assert_close(ops.gather_visible(images, ids_keep, weight, bias, pos[None]), got)


def test_gather_visible_gradcheck():
    g = gen(5)
    images = torch.randn(2, 3, 8, 12, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ids_keep = torch.tensor([[0, 3, 5], [1, 2, 4]])
    assert torch.autograd.gradcheck(
        lambda x, w, b, p: ops.gather_visible(x, ids_keep, w, b, p), (images, weight, bias, pos))


def test_gather_visible_hidden_pixels_get_no_gradient():
    images = torch.randn(1, 3, 8, 8, requires_grad=True)
    weight = torch.randn(4, 3, 4, 4)
    ops.gather_visible(images, torch.tensor([[1, 2]]), weight, None, torch.zeros(4, 4)).sum().backward()
    grad = images.grad[0].abs().sum(0)
    assert (grad[:4, :4] == 0).all() and (grad[4:, 4:] == 0).all()
    assert (grad[:4, 4:] > 0).all() and (grad[4:, :4] > 0).all()


@pytest.mark.parametrize("change,error", [
    (dict(ids_keep=torch.tensor([[0, 1]], dtype=torch.int32)), TypeError),
    (dict(ids_keep=torch.tensor([[0, 4]])), ValueError),
    (dict(ids_keep=torch.tensor([[0, 1], [1, 2]])), ValueError),
    (dict(ids_keep=torch.tensor([[1, 1]])), ValueError),  # a repeat: refused by every backend
    (dict(weight=torch.randn(4, 1, 4, 4)), ValueError),
    (dict(weight=torch.randn(4, 3, 4, 2)), ValueError),
    (dict(weight=torch.randn(4, 3, 3, 3)), ValueError),
    (dict(weight=torch.randn(4, 3, 4, 4, dtype=torch.float64)), TypeError),
    (dict(bias=torch.randn(5)), ValueError),
    (dict(pos_embed=torch.randn(5, 4)), ValueError),
    (dict(images=torch.randn(1, 3, 8, 8).to(torch.int64)), TypeError),
    (dict(backend="cuda"), ValueError),
])
def test_gather_visible_validation(change, error):
    args = dict(images=torch.randn(1, 3, 8, 8), ids_keep=torch.tensor([[0, 1]]),
                weight=torch.randn(4, 3, 4, 4), bias=torch.randn(4), pos_embed=torch.randn(4, 4))
    args.update(change)
    with pytest.raises(error):
        ops.gather_visible(**args)


# --------------------------------------------------------------------------- restore_masked

def restore_loop(tokens, mask, mask_token, pos_embed):
    B, _, D = tokens.shape
    out = []
    for b in range(B):
        visible = iter(tokens[b, 1:])
        rows = [tokens[b, 0]]
        for hidden in mask[b].tolist():
            rows.append(mask_token.reshape(D) if hidden else next(visible))
        seq = torch.stack(rows)
        out.append(seq if pos_embed is None else seq + pos_embed)
    return torch.stack(out)


@pytest.mark.parametrize("token_shape", [(1, 1, 6), (6,)])
@pytest.mark.parametrize("with_pos", [True, False])
def test_restore_masked_equals_loop(token_shape, with_pos):
    g = gen(6)
    B, L, D = 4, 16, 6
    mask = random_mask(B, L, 11, seed=7)
    _, ids_restore = ops.mask_to_indices(mask)
    tokens = torch.randn(B, L - 11 + 1, D, generator=g)
    mask_token = torch.randn(token_shape, generator=g)
    pos = torch.randn(L + 1, D, generator=g) if with_pos else None
    got = ops.restore_masked(tokens, ids_restore, mask_token, pos)
    torch.testing.assert_close(got, restore_loop(tokens, mask, mask_token, pos), rtol=0, atol=0)


def test_restore_masked_promotes_like_cat():
    tokens = torch.randn(2, 3, 4).bfloat16()
    _, ids_restore = ops.mask_to_indices(random_mask(2, 5, 3))
    out = ops.restore_masked(tokens, ids_restore, torch.randn(1, 1, 4), torch.randn(1, 6, 4))
    assert out.dtype == torch.float32 and out.shape == (2, 6, 4)


def test_restore_masked_gradcheck_and_mask_token_grad():
    g = gen(8)
    B, L, D = 3, 6, 4
    mask = random_mask(B, L, 4, seed=9)
    _, ids_restore = ops.mask_to_indices(mask)
    tokens = torch.randn(B, L - 4 + 1, D, generator=g, dtype=torch.float64, requires_grad=True)
    mask_token = torch.randn(1, 1, D, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(L + 1, D, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, m, p: ops.restore_masked(t, ids_restore, m, p), (tokens, mask_token, pos))
    upstream = torch.randn(B, L + 1, D, generator=g, dtype=torch.float64)
    ops.restore_masked(tokens, ids_restore, mask_token, pos).backward(upstream)
    hidden_places = torch.cat([torch.zeros(B, 1, dtype=torch.bool), mask], dim=1)
    torch.testing.assert_close(mask_token.grad.reshape(D), upstream[hidden_places].sum(0))
    torch.testing.assert_close(pos.grad, upstream.sum(0))


@pytest.mark.parametrize("change,error", [
    (dict(ids_restore=torch.tensor([[0, 1, 2, 9]])), ValueError),
    (dict(ids_restore=torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)), TypeError),
    (dict(ids_restore=torch.tensor([[0]])), ValueError),
    (dict(ids_restore=torch.tensor([[0, 1, 1, 3]])), ValueError),  # not a permutation
    (dict(mask_token=torch.randn(5)), ValueError),
    (dict(pos_embed=torch.randn(4, 4)), ValueError),
    (dict(tokens=torch.randn(3, 4)), ValueError),
    (dict(backend="cpu"), ValueError),
])
def test_restore_masked_validation(change, error):
    args = dict(tokens=torch.randn(1, 3, 4), ids_restore=torch.tensor([[0, 1, 2, 3]]),
                mask_token=torch.randn(1, 1, 4), pos_embed=torch.randn(5, 4))
    args.update(change)
    with pytest.raises(error):
        ops.restore_masked(**args)


def test_crfrp_gather_restore_round_trip():
    """Identity encoder: restored visible tokens equal the full conv embedding at their places."""
    g = gen(10)
    parsing = torch.randint(0, 11, (3, 64, 64), generator=g, dtype=torch.uint8)
    img_mask, _ = ops.crfrp_mask(parsing, 16, generator=g)
    ids_keep, ids_restore = ops.mask_to_indices(img_mask)
    images = torch.randn(3, 3, 64, 64, generator=g)
    weight, bias = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, generator=g)
    pos = torch.randn(17, 8, generator=g)
    visible = ops.gather_visible(images, ids_keep, weight, bias, pos[1:])
    cls = torch.zeros(3, 1, 8)
    mask_token = torch.full((8,), 7.0)
    restored = ops.restore_masked(torch.cat([cls, visible], 1), ids_restore, mask_token)
    full = F.conv2d(images, weight, bias, stride=16).flatten(2).transpose(1, 2) + pos[1:]
    torch.testing.assert_close(restored[:, 1:][~img_mask], full[~img_mask], rtol=1e-4, atol=1e-4)
    assert (restored[:, 1:][img_mask] == 7.0).all()
