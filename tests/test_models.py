"""FSFM-3C networks: reference key layout, strict and safe loading, shapes, gradients, and a
dense re-derivation of the online forward."""
import argparse
import dataclasses
import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from fsfm_fast import ops
from fsfm_fast.formats import CheckpointError
from fsfm_fast.models import (
    OnlineNetwork,
    TargetNetwork,
    create_online,
    create_target,
    get_config,
    list_models,
    load_reference_weights,
)

TINY = "fsfm_vit_tiny_patch16"

# Sizes written out from SPEC §3, independently of fsfm_fast.models.configs:
# (patch, enc dim, enc depth, rep dim, rep depth, pixel-decoder dim, pixel-decoder depth)
REFERENCE_SIZES = {
    "fsfm_vit_small_patch16": (16, 384, 12, 384, 2, 512, 8),
    "fsfm_vit_base_patch16": (16, 768, 12, 768, 2, 512, 8),
}


def _block_shapes(prefix, depth, dim):
    shapes = {}
    for i in range(depth):
        b = f"{prefix}.{i}."
        shapes.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
            b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,),
        })
    return shapes


def _head_shapes(prefix, in_dim, hidden=4096, out=256):
    h = f"{prefix}.projection_head."
    return {
        h + "0.weight": (hidden, in_dim), h + "0.bias": (hidden,),
        h + "1.weight": (hidden,), h + "1.bias": (hidden,),
        h + "3.weight": (out, hidden), h + "3.bias": (out,),
    }


def reference_shapes(name, online):
    p, d, depth, r, r_depth, dec, dec_depth = REFERENCE_SIZES[name]
    tokens = (224 // p) ** 2 + 1
    shapes = {
        "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
        "cls_token": (1, 1, d), "pos_embed": (1, tokens, d),
        "norm.weight": (d,), "norm.bias": (d,),
        "mask_token": (1, 1, r),
        "rep_decoder_embed.weight": (r, d), "rep_decoder_embed.bias": (r,),
        "rep_decoder_pos_embed": (1, tokens, r),
        "rep_decoder_norm.weight": (r,), "rep_decoder_norm.bias": (r,),
        "rep_decoder_pred.weight": (d, r), "rep_decoder_pred.bias": (d,),
    }
    shapes.update(_block_shapes("blocks", depth, d))
    shapes.update(_block_shapes("rep_decoder_blocks", r_depth, r))
    shapes.update(_head_shapes("projector", r))
    if online:
        shapes.update(_head_shapes("predictor", 256))
        shapes.update({
            "decoder_embed.weight": (dec, r), "decoder_embed.bias": (dec,),
            "decoder_pos_embed": (1, tokens, dec),
            "decoder_norm.weight": (dec,), "decoder_norm.bias": (dec,),
            "decoder_pred.weight": (p * p * 3, dec), "decoder_pred.bias": (p * p * 3,),
        })
        shapes.update(_block_shapes("decoder_blocks", dec_depth, dec))
    return shapes


def random_state_dict(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def save_reference_checkpoint(path, state, model_name):
    torch.save({"model": state, "optimizer": {}, "epoch": 3, "scaler": {},
                "args": argparse.Namespace(model=model_name, lr=1e-4)}, path)


def random_masks(batch, num_patches, num_hidden, seed=0):
    """Exactly num_hidden hidden patches per row; fr_mask a non-empty subset of them."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(batch, num_patches, generator=g).argsort(dim=1)
    img_mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    img_mask.scatter_(1, order[:, :num_hidden], True)
    fr_mask = torch.zeros_like(img_mask)
    fr_mask.scatter_(1, order[:, : max(1, num_hidden // 4)], True)
    return img_mask, fr_mask


def make_inputs(img_size, batch, seed=0, mask_ratio=0.75):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, img_size, img_size, generator=g)
    num_patches = (img_size // 16) ** 2
    img_mask, fr_mask = random_masks(batch, num_patches, int(mask_ratio * num_patches), seed)
    target = F.normalize(torch.randn(batch, 256, generator=g), dim=-1)
    return images, img_mask, fr_mask, target


# ---------------------------------------------------------------- reference checkpoints


@pytest.mark.parametrize("name", list(REFERENCE_SIZES))
def test_reference_online_checkpoint_loads_strictly(tmp_path, name):
    model = create_online(name)
    shapes = reference_shapes(name, online=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    state = random_state_dict(shapes)
    path = tmp_path / "checkpoint-3.pth"
    save_reference_checkpoint(path, state, name)

    ckpt = load_reference_weights(model, path)

    assert ckpt["epoch"] == 3 and ckpt["args"].model == name
    loaded = model.state_dict()
    expected = state
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.11.mlp.fc2.weight", "mask_token",
                "projector.projection_head.1.weight", "predictor.projection_head.3.bias",
                "decoder_blocks.7.attn.qkv.bias", "decoder_pos_embed"):
        assert torch.equal(loaded[key], expected[key]), key
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_reference_target_checkpoint_loads_strictly(tmp_path):
    name = "fsfm_vit_small_patch16"
    target = create_target(name)
    shapes = reference_shapes(name, online=False)
    assert {k: tuple(v.shape) for k, v in target.state_dict().items()} == shapes
    state = random_state_dict(shapes, seed=1)
    path = tmp_path / "checkpoint-te-3.pth"
    torch.save({"model": state}, path)

    load_reference_weights(target, path)

    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())
    # The online layout carries keys the target does not have: refused, not silently dropped.
    online_path = tmp_path / "online.pth"
    torch.save({"model": random_state_dict(reference_shapes(name, online=True))}, online_path)
    with pytest.raises(ValueError, match="unexpected keys: .*predictor"):
        load_reference_weights(target, online_path)


def _tiny_checkpoint(tmp_path, edit):
    model = create_online(TINY, img_size=112)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save({"model": state}, path)
    return model, path


def test_missing_key_is_named(tmp_path):
    model, path = _tiny_checkpoint(tmp_path, lambda s: s.pop("blocks.3.attn.proj.bias"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"edited\.pth.*missing keys: blocks\.3\.attn\.proj\.bias"):
        load_reference_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unexpected_key_is_named(tmp_path):
    _, path = _tiny_checkpoint(tmp_path, lambda s: s.__setitem__("head.weight", torch.zeros(2, 192)))
    with pytest.raises(ValueError, match=r"edited\.pth.*unexpected keys: head\.weight"):
        load_reference_weights(create_online(TINY, img_size=112), path)


def test_wrong_shape_is_named(tmp_path):
    _, path = _tiny_checkpoint(tmp_path, lambda s: s.__setitem__("pos_embed", torch.zeros(1, 197, 192)))
    with pytest.raises(ValueError, match=r"wrong shapes: pos_embed \[1, 197, 192\] \(model \[1, 50, 192\]\)"):
        load_reference_weights(create_online(TINY, img_size=112), path)


def test_checkpoint_without_model_entry_is_refused(tmp_path):
    path = tmp_path / "no_model.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="no_model.pth has no 'model'"):
        load_reference_weights(create_target(TINY, img_size=112), path)


UNPICKLE_CALLS = []


def _record_unpickle(tag):
    UNPICKLE_CALLS.append(tag)
    return tag


class _Payload:
    """Unpickling this would call _record_unpickle: a stand-in for arbitrary code execution."""

    def __reduce__(self):
        return (_record_unpickle, ("payload ran",))


def test_checkpoint_with_arbitrary_class_is_refused(tmp_path):
    model = create_online(TINY, img_size=112)
    path = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_reference_weights(model, path)
    assert UNPICKLE_CALLS == []


# ---------------------------------------------------------------- construction


def test_model_names_and_errors():
    assert set(list_models()) == {
        "fsfm_vit_tiny_patch16", "fsfm_vit_small_patch16", "fsfm_vit_base_patch16",
        "fsfm_vit_large_patch16", "fsfm_vit_huge_patch14",
    }
    with pytest.raises(ValueError, match="fsfm_vit_base_patch16"):
        create_online("vit_giant")
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        create_target(TINY, img_size=100)
    with pytest.raises(ValueError, match="cl_loss"):
        create_online(TINY, img_size=112, cl_loss="infonce")


def test_size_attributes_and_layer_settings():
    model = create_online(TINY, img_size=112)
    assert (model.patch_size, model.img_size, model.grid, model.num_patches) == (16, 112, (7, 7), 49)
    assert model.pos_embed.shape == (1, 50, 192) and model.decoder_pos_embed.shape == (1, 50, 128)
    transformer_norms = [
        m for n, m in model.named_modules()
        if isinstance(m, torch.nn.LayerNorm) and not n.startswith(("projector", "predictor"))
    ]
    assert len(transformer_norms) == 2 * (6 + 1 + 2) + 3
    assert all(m.eps == 1e-6 for m in transformer_norms)
    # The heads use a default LayerNorm in the reference.
    assert model.projector.projection_head[1].eps == 1e-5 == model.predictor.projection_head[1].eps
    assert [b.attn.num_heads for b in model.blocks] == [3] * 6
    assert model.rep_decoder_blocks[0].attn.num_heads == 3 and model.decoder_blocks[0].attn.num_heads == 4


def sincos_table(dim, grid):
    """The reference's fixed 2-D sin-cos table, written out from SPEC section 3: a zero cls row,
    then per patch (row-major) the column's 1-D embedding, then the row's; each 1-D embedding is
    the sines of its dim/4 frequencies 10000^(-i/(dim/4)), then their cosines."""
    quarter = dim // 4
    freqs = 10000.0 ** (-np.arange(quarter) / quarter)
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    halves = [np.concatenate([np.sin(c[:, None] * freqs), np.cos(c[:, None] * freqs)], 1) for c in (cols, rows)]
    return torch.from_numpy(np.concatenate([np.zeros((1, dim)), np.concatenate(halves, 1)], 0))


@pytest.mark.parametrize("name", list_models())
def test_fresh_online_frozen_tensors_are_the_references(name):
    config = get_config(name)
    # The frozen tensors depend on the widths and the patch grid, not on the depth: one block per
    # stack keeps the large sizes fast to build.
    model = OnlineNetwork(dataclasses.replace(config, depth=1, rep_depth=1, decoder_depth=1), 224, name=name)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert set(frozen) == {"pos_embed", "rep_decoder_pos_embed", "decoder_pos_embed"}
    grid = 224 // config.patch_size
    torch.testing.assert_close(frozen["pos_embed"][0].double(), sincos_table(config.embed_dim, grid),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(frozen["decoder_pos_embed"][0].double(), sincos_table(config.decoder_dim, grid),
                               atol=1e-6, rtol=0)
    # built as zeros and never filled by the reference: every released model was trained so
    assert frozen["rep_decoder_pos_embed"].shape == (1, grid * grid + 1, config.rep_dim)
    assert torch.count_nonzero(frozen["rep_decoder_pos_embed"]) == 0
    assert torch.count_nonzero(TargetNetwork.from_online(model).rep_decoder_pos_embed) == 0


def test_rep_decoder_pos_embed_option():
    model = create_online(TINY, img_size=112, rep_decoder_pos_embed="sincos")
    torch.testing.assert_close(model.rep_decoder_pos_embed[0].double(), sincos_table(192, 7), atol=1e-6, rtol=0)
    assert torch.equal(TargetNetwork.from_online(model).rep_decoder_pos_embed, model.rep_decoder_pos_embed)
    assert torch.count_nonzero(create_target(TINY, img_size=112).rep_decoder_pos_embed) == 0
    with pytest.raises(ValueError, match="rep_decoder_pos_embed"):
        create_online(TINY, img_size=112, rep_decoder_pos_embed="learned")


def test_mae_initialisation():
    torch.manual_seed(0)
    model = create_online(TINY, img_size=112)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = math.sqrt(6.0 / (module.in_features + module.out_features))
            assert module.weight.abs().max() <= bound + 1e-7, name
            assert module.weight.abs().max() > 0.8 * bound, name
            assert torch.count_nonzero(module.bias) == 0, name
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    w = model.patch_embed.proj.weight
    assert w.abs().max() <= math.sqrt(6.0 / (w.shape[0] + w[0].numel())) + 1e-7
    for token in (model.cls_token, model.mask_token):
        assert 0.01 < token.std().item() < 0.03


# ---------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("img_size,batch", [(112, 2), (112, 1), (224, 2), (224, 1)])
def test_forward_shapes_and_losses(img_size, batch):
    torch.manual_seed(0)
    model = create_online(TINY, img_size=img_size)
    images, img_mask, fr_mask, target = make_inputs(img_size, batch)
    num_patches = (img_size // 16) ** 2

    out = model(images, img_mask, fr_mask, target_features=target)

    assert out.pred.shape == (batch, num_patches, 16 * 16 * 3)
    assert out.features.shape == (batch, 256)
    assert torch.allclose(out.features.norm(dim=-1), torch.ones(batch), atol=1e-5)
    for value in (out.loss, out.loss_rec_all, out.loss_rec_sfr, out.loss_cl):
        assert value.dim() == 0 and torch.isfinite(value)
    total = out.loss_rec_all + 0.007 * out.loss_rec_sfr + 0.1 * out.loss_cl
    assert torch.allclose(out.loss, total, atol=1e-6)

    plain = model(images, img_mask.float(), fr_mask.to(torch.uint8))
    assert plain.loss_cl is None
    assert torch.allclose(plain.loss, out.loss_rec_all + 0.007 * out.loss_rec_sfr, atol=1e-6)


def test_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = create_online(TINY, img_size=112)
    images, img_mask, fr_mask, target = make_inputs(112, 2)
    model(images, img_mask, fr_mask, target_features=target).loss.backward()

    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "rep_decoder_pos_embed", "decoder_pos_embed"}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
    for name in ("cls_token", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                 "blocks.0.attn.qkv.weight", "rep_decoder_pred.weight", "projector.projection_head.0.weight",
                 "predictor.projection_head.3.weight", "decoder_embed.weight", "decoder_pred.bias"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_mixed_precision_forward_matches_fp32():
    torch.manual_seed(0)
    online = create_online(TINY, img_size=112)
    target = TargetNetwork.from_online(online)
    images, img_mask, fr_mask, _ = make_inputs(112, 2)
    full = online(images, img_mask, fr_mask, target_features=target(images))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = online(images, img_mask, fr_mask, target_features=target(images))
    assert half.pred.dtype == torch.bfloat16 and half.loss.dtype == torch.float32
    assert torch.allclose(half.loss, full.loss, rtol=2e-2)
    half.loss.backward()
    assert online.cls_token.grad.dtype == torch.float32 and torch.isfinite(online.cls_token.grad).all()


def test_without_target_features_distillation_heads_get_no_gradient():
    torch.manual_seed(0)
    model = create_online(TINY, img_size=112)
    images, img_mask, fr_mask, _ = make_inputs(112, 2)
    model(images, img_mask, fr_mask).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(("projector.", "predictor.", "rep_decoder_")):
            assert param.grad is None or torch.count_nonzero(param.grad) == 0, name
    assert model.decoder_pred.weight.grad.abs().sum() > 0


def test_input_validation():
    model = create_online(TINY, img_size=112)
    images, img_mask, fr_mask, target = make_inputs(112, 2)
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 3, 224, 224), img_mask, fr_mask)
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 1, 112, 112), img_mask, fr_mask)
    with pytest.raises(ValueError, match="img_mask"):
        model(images, img_mask[:, :48], fr_mask)
    with pytest.raises(ValueError, match="fr_mask"):
        model(images, img_mask, fr_mask[:1])
    with pytest.raises(ValueError, match="target_features"):
        model(images, img_mask, fr_mask, target_features=target[:, :128])
    uneven = img_mask.clone()
    uneven[0, (~uneven[0]).nonzero()[0]] = True  # row 0 now hides one patch more than row 1
    with pytest.raises(ValueError):
        model(images, uneven, fr_mask)
    target_net = TargetNetwork.from_online(model)
    with pytest.raises(ValueError, match="images"):
        target_net(torch.randn(2, 3, 128, 128))


# ---------------------------------------------------------------- dense re-derivation


def dense_online(model, images, img_mask, fr_mask, target, cl_loss, generator):
    """The online forward written with a full conv patch embed, torch.gather / scatter, and the
    visible tokens of each row in a random order; same weights as ``model``."""
    batch, p = images.shape[0], model.patch_size
    gh, gw = model.grid
    num_patches = gh * gw
    hidden = img_mask.bool()
    tokens = F.conv2d(images, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=p)
    tokens = tokens.flatten(2).transpose(1, 2) + model.pos_embed[:, 1:]
    order = torch.stack([
        (~row).nonzero().squeeze(1)[torch.randperm(int((~row).sum()), generator=generator)] for row in hidden
    ])

    def expand(idx, dim):
        return idx[..., None].expand(-1, -1, dim)

    x = torch.gather(tokens, 1, expand(order, tokens.shape[-1]))
    x = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(batch, -1, -1), x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    latent = model.norm(x)

    def unshuffle(seq):
        full = model.mask_token.expand(batch, num_patches, seq.shape[-1]).clone()
        full = full.scatter(1, expand(order, seq.shape[-1]), seq[:, 1:])
        return torch.cat([seq[:, :1], full], dim=1)

    r = unshuffle(model.rep_decoder_embed(latent)) + model.rep_decoder_pos_embed
    for blk in model.rep_decoder_blocks:
        r = blk(r)
    r = model.rep_decoder_pred(model.rep_decoder_norm(r))
    features = F.normalize(model.predictor(model.projector(r.mean(dim=1))), dim=-1)

    d = model.decoder_embed(unshuffle(latent)) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        d = blk(d)
    pred = model.decoder_pred(model.decoder_norm(d))[:, 1:]

    pix = images.reshape(batch, 3, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(batch, num_patches, -1)
    pix = (pix - pix.mean(-1, keepdim=True)) / (pix.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - pix) ** 2).mean(-1)
    m, fr = img_mask.float(), fr_mask.float()
    rec_all = (per_patch * m).sum() / m.sum()
    rec_sfr = (per_patch * fr).sum() / fr.sum()
    if cl_loss == "simsiam":
        cl = -0.5 * F.cosine_similarity(features, target, dim=-1).mean()
    else:
        cl = (2 - 2 * (features * target).sum(-1)).mean()
    return rec_all + 0.007 * rec_sfr + 0.1 * cl, rec_all, rec_sfr, cl, features, pred


@pytest.mark.parametrize("cl_loss", ["simsiam", "byol"])
def test_online_matches_dense_derivation_for_any_visible_order(cl_loss):
    torch.manual_seed(0)
    model = create_online(TINY, img_size=112, cl_loss=cl_loss)
    with torch.no_grad():  # non-zero cls slots, so a dropped cls position term would show
        for pos in (model.pos_embed, model.rep_decoder_pos_embed, model.decoder_pos_embed):
            pos[0, 0].normal_()
    images, img_mask, fr_mask, target = make_inputs(112, 3, seed=5)
    out = model(images, img_mask, fr_mask, target_features=target)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        loss, rec_all, rec_sfr, cl, features, pred = dense_online(
            model, images, img_mask, fr_mask, target, cl_loss, g)
        assert torch.allclose(out.pred, pred, atol=1e-5)
        assert torch.allclose(out.features, features, atol=1e-5)
        for ours, theirs in [(out.loss, loss), (out.loss_rec_all, rec_all), (out.loss_rec_sfr, rec_sfr),
                             (out.loss_cl, cl)]:
            assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)


# ---------------------------------------------------------------- target network


def test_target_is_the_shared_path_with_every_patch_visible():
    torch.manual_seed(0)
    online = create_online(TINY, img_size=112)
    target = TargetNetwork.from_online(online)
    images = torch.randn(2, 3, 112, 112)

    ids_keep, ids_restore = ops.mask_to_indices(torch.zeros(2, 49, dtype=torch.bool))
    with torch.no_grad():
        shared = online.decode_rep(online.encode(images, ids_keep), ids_restore)
        expected = F.normalize(online.project(shared), dim=-1)
    got = target(images)

    assert got.shape == (2, 256) and not got.requires_grad
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)
    # A masked online view is a different input: the comparison above can fail.
    img_mask = make_inputs(112, 2)[1]
    with torch.no_grad():
        masked_ids = ops.mask_to_indices(img_mask)
        masked = F.normalize(online.project(online.decode_rep(online.encode(images, masked_ids[0]),
                                                              masked_ids[1])), dim=-1)
    assert not torch.allclose(got, masked, atol=1e-3)


def test_from_online_copies_and_freezes():
    torch.manual_seed(0)
    online = create_online(TINY, img_size=112)
    target = TargetNetwork.from_online(online)
    assert isinstance(target, TargetNetwork) and not isinstance(target, OnlineNetwork)
    assert not hasattr(target, "predictor") and not hasattr(target, "decoder_embed")
    online_state = online.state_dict()
    target_state = target.state_dict()
    assert set(target_state) < set(online_state)
    assert all(torch.equal(v, online_state[k]) for k, v in target_state.items())
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        online.cls_token.add_(1.0)
    assert not torch.equal(target.cls_token, online.cls_token)  # a copy, not shared storage


def test_ema_pairs_match_by_name():
    torch.manual_seed(0)
    online = create_online(TINY, img_size=112)
    target = TargetNetwork.from_online(online)
    target_params, online_params = target.ema_pairs(online)

    online_by_id = {id(p): n for n, p in online.named_parameters()}
    target_names = [n for n, _ in target.named_parameters()]
    assert len(target_params) == len(online_params) == len(target_names)
    assert [online_by_id[id(p)] for p in online_params] == target_names
    assert all(t is p for t, (_, p) in zip(target_params, target.named_parameters()))
    assert target.ema_pairs(online)[1] == online_params  # stable order

    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = [t.clone() for t in target_params]
    ops.ema_update(target_params, online_params, 0.75)
    for t, b, o in zip(target_params, before, online_params):
        assert torch.allclose(t, 0.75 * b + 0.25 * o, atol=1e-6)

    with pytest.raises(ValueError, match="ema_pairs"):
        target.ema_pairs(create_online(TINY, img_size=224))
