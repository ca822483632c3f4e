"""The compiled CRFR-P op: CPU twin (csrc/crfrp_mask_cpu.cpp), the CUDA kernel's block program
replayed on the CPU (fsfm_fast_testing::crfrp_mask_replay, a test-only op), and the CUDA kernel itself (marker `cuda`).

Every mask is checked against SPEC section 2 with an oracle built from the reference's group
touches; the twin's statistics are compared with the reference's; the replay and the GPU must
equal the twin bit for bit for the same (seed, offset).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _maps import face_batch, face_map, hair_map
from fsfm_fast import _ext, ops
from fsfm_fast.data.synthetic import render_face
from fsfm_fast.ops import reference

ROOT = Path(__file__).resolve().parents[1]
requires_ext = pytest.mark.skipif(not _ext.has_extension(),
                                  reason=f"extension not built ({_ext.unavailable_reason()})")
pytestmark = requires_ext

STRATEGIES = reference.STRATEGIES  # crfr_p, crfr_r, fr, random


def op(parsing, patch=16, ratio=0.75, strategy="crfr_p", region="batch", region_index=None,
       seed=0, offset=0):
    return torch.ops.fsfm_fast.crfrp_mask(parsing, patch, ratio, strategy, region, region_index,
                                          seed, offset)


def replay(parsing, patch=16, ratio=0.75, strategy="crfr_p", region="batch", region_index=None,
           seed=0, offset=0, threads=0):
    return torch.ops.fsfm_fast_testing.crfrp_mask_replay(parsing, patch, ratio, strategy, region,
                                                 region_index, seed, offset, threads)


def synthetic_faces(batch, size=224, seed=0):
    return torch.from_numpy(np.stack([render_face(np.random.default_rng([seed, i]), size)[1]
                                      for i in range(batch)]))


def random_labels(batch, height, width, seed=0):
    return torch.randint(0, 11, (batch, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def single_labels(height=64, width=48):
    return torch.arange(11, dtype=torch.uint8).view(11, 1, 1).expand(11, height, width).contiguous()


def touch_of(parsing, patch):
    return reference.group_touch(reference.region_presence(parsing, patch))


# --------------------------------------------------------------------------- the SPEC oracle

def walk_deviations(touch_row, region, hidden_row, num_mask):
    """Per walked group: hidden - round(ratio * #candidates); and the planned shortfall."""
    L = touch_row.shape[1]
    n_fr = int(touch_row[region].sum())
    ratio = (num_mask - n_fr) / (L - n_fr)
    claimed = touch_row[region].clone()
    devs, planned = [], 0
    for g in range(8):
        if g == region:
            continue
        cand = touch_row[g] & ~claimed
        claimed |= cand
        want = round(ratio * int(cand.sum()))  # Python's round: half to even, like torch.round
        devs.append(int((hidden_row & cand).sum()) - want)
        planned += want
    return devs, num_mask - n_fr - planned


def regions_matching(touch_row, fr_row, num_mask, allowed):
    """Regions R for which fr is SPEC's fr: all of R if |R| < M, else an M-subset of R."""
    out = []
    for r in allowed:
        t = touch_row[r]
        if int(t.sum()) < num_mask:
            ok = torch.equal(fr_row, t)
        else:
            ok = int(fr_row.sum()) == num_mask and not bool((fr_row & ~t).any())
        if ok:
            out.append(r)
    return out


def check_masks(parsing, patch, ratio, img, fr, strategy="crfr_p", region_index=None):
    """Every property of SPEC section 2 that one call's output must hold."""
    touch = touch_of(parsing, patch)
    B, L = touch.shape[0], touch.shape[2]
    M = int(ratio * L)
    assert img.dtype == torch.bool and fr.dtype == torch.bool
    assert img.shape == fr.shape == (B, L)
    assert (img.sum(1) == M).all(), "exactly M hidden per image"
    assert not (fr & ~img).any(), "fr within img_mask"
    if strategy == "random":
        assert not fr.any()
        return
    forced = None
    if region_index is not None:
        forced = torch.as_tensor(region_index).expand(B).tolist()
    for b in range(B):
        allowed = range(6) if forced is None else [forced[b]]
        matches = regions_matching(touch[b], fr[b], M, allowed)
        assert matches, f"image {b}: fr is not a (cut) facial region"
        r = matches[0]
        if strategy == "crfr_p" and int(touch[b, r].sum()) < M:
            devs, shortfall = walk_deviations(touch[b], r, img[b], M)
            assert sum(devs) == shortfall, f"image {b}: walk counts {devs}"
            assert all(d * shortfall >= 0 for d in devs), f"image {b}: fix-up both ways {devs}"
            assert abs(shortfall) <= 4  # seven roundings of at most 0.5 each


# --------------------------------------------------------------------------- registration

def test_schema_and_replay_registered():
    assert str(torch.ops.fsfm_fast.crfrp_mask.default._schema) == (
        "fsfm_fast::crfrp_mask(Tensor parsing, int patch_size, float mask_ratio, str strategy, "
        "str region, Tensor? region_index, int seed, int offset, bool check_labels=True) -> "
        "(Tensor img_mask, Tensor fr_mask)")
    # the replay is a test hook: registered, but outside the public op library
    assert hasattr(torch.ops.fsfm_fast_testing, "crfrp_mask_replay")
    with pytest.raises(AttributeError):
        torch.ops.fsfm_fast.crfrp_mask_replay


def test_auto_uses_the_twin_on_cpu(monkeypatch):
    x = face_batch(3, 112)
    got = ops.crfrp_mask(x, 16, seed=5, offset=2)
    assert torch.equal(got[0], op(x, seed=5, offset=2)[0])
    assert torch.equal(ops.crfrp_mask(x, 16, seed=5, offset=2, backend="cpu")[1],
                       op(x, seed=5, offset=2)[1])
    monkeypatch.setenv("FSFM_OPS_BACKEND", "torch")
    ref = ops.crfrp_mask(x, 16, seed=5, offset=2)
    check_masks(x, 16, 0.75, *ref)
    assert not torch.equal(ref[0], got[0])  # the reference's own stream


# --------------------------------------------------------------------------- invariants

CASES = {
    "synthetic faces 224/16": (lambda: synthetic_faces(6), 16),
    "procedural faces 224/14": (lambda: face_batch(4, 224, seed=3), 14),
    "non-square 112x224/16": (lambda: face_batch(3, 112, 224, seed=4), 16),
    "non-square 224x112/14": (lambda: face_batch(3, 224, 112, seed=5), 14),
    "labels per pixel": (lambda: random_labels(4, 224, 224, seed=6), 16),
    "single-label maps": (lambda: single_labels(), 16),
    "hair larger than M": (lambda: torch.from_numpy(np.stack([hair_map(224)] * 3)), 16),
    "batch of one": (lambda: face_batch(1, 224, seed=7), 16),
    "1x1 patch grid": (lambda: face_batch(2, 32, seed=8), 32),
    "patch 8 on 96x64": (lambda: face_batch(2, 96, 64, seed=9), 8),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_twin_holds_spec_invariants(case, strategy):
    make, patch = CASES[case]
    parsing = make()
    for n, (region, ratio) in enumerate([("batch", 0.75), ("image", 0.5), ("image", 0.29),
                                         ("batch", 0.9)]):
        img, fr = ops.crfrp_mask(parsing, patch, ratio, strategy=strategy, region=region,
                                 backend="cpu", seed=1000 + n, offset=n)
        check_masks(parsing, patch, ratio, img, fr, strategy)
    for r in range(6):
        img, fr = ops.crfrp_mask(parsing, patch, strategy=strategy, region_index=r,
                                 backend="cpu", seed=r)
        check_masks(parsing, patch, 0.75, img, fr, strategy, region_index=r)


def test_region_index_tensor_per_image():
    parsing = synthetic_faces(6, seed=1)
    index = torch.tensor([5, 4, 3, 2, 1, 0])
    img, fr = ops.crfrp_mask(parsing, region_index=index, backend="cpu", seed=3)
    check_masks(parsing, 16, 0.75, img, fr, region_index=index)
    touch = touch_of(parsing, 16)
    assert all(torch.equal(fr[b], touch[b, int(index[b])]) for b in range(6))


def test_region_bigger_than_m_is_cut_to_m():
    parsing = torch.from_numpy(np.stack([hair_map(224)] * 8))
    touch = touch_of(parsing, 16)
    M = int(0.75 * 196)
    assert int(touch[0, 5].sum()) > M
    img, fr = ops.crfrp_mask(parsing, region_index=5, backend="cpu", seed=4)
    assert torch.equal(img, fr) and (img.sum(1) == M).all() and not (img & ~touch[:, 5]).any()
    assert len({tuple(row.tolist()) for row in img}) == 8  # every image cut differently


def test_ratio_follows_python_float_arithmetic():
    parsing = face_batch(2, 160)  # L = 100: 0.29 * 100 == 28.999999999999996
    assert (ops.crfrp_mask(parsing, 16, 0.29, backend="cpu", seed=1)[0].sum(1) == 28).all()


def test_empty_batch_and_non_contiguous_input():
    img, fr = ops.crfrp_mask(face_batch(2, 64)[:0], 16, backend="cpu", seed=0)
    assert img.shape == fr.shape == (0, 16) and img.dtype == torch.bool
    x = face_batch(2, 64, 96, seed=2)
    t = x.transpose(1, 2)
    assert not t.is_contiguous()
    assert torch.equal(op(t, seed=3)[0], op(t.contiguous(), seed=3)[0])


# --------------------------------------------------------------------------- statistics

def per_patch_rates(img):
    return img.double().mean(0)


def assert_same_rates(ours, theirs, runs):
    # both are means of `runs` Bernoulli draws: 5 sigma of the difference, plus float slack
    p = 0.5 * (ours + theirs)
    tol = 5.0 * torch.sqrt(2.0 * p * (1.0 - p) / runs) + 1e-9
    assert bool(((ours - theirs).abs() <= tol).all()), float((ours - theirs).abs().max())


@pytest.mark.parametrize("strategy,region", [("crfr_p", 1), ("crfr_p", 4), ("crfr_p", 5),
                                             ("crfr_r", 0), ("fr", 2)])
def test_twin_matches_reference_statistically(strategy, region):
    runs = 1200
    single = synthetic_faces(1, seed=11)
    batch = single.expand(runs, -1, -1).contiguous()
    ours, _ = ops.crfrp_mask(batch, strategy=strategy, region_index=region, backend="cpu",
                             seed=21)
    theirs, _ = ops.crfrp_mask(batch, strategy=strategy, region_index=region, backend="torch",
                               generator=torch.Generator().manual_seed(21))
    assert_same_rates(per_patch_rates(ours), per_patch_rates(theirs), runs)
    touch = touch_of(single, 16)[0]
    claimed = touch[region].clone()
    for g in range(8):  # hidden patches per walked group: same mean
        cand = touch[g] & ~claimed
        claimed |= cand
        if cand.any():
            a = ours[:, cand].sum(1).double().mean()
            b = theirs[:, cand].sum(1).double().mean()
            assert abs(float(a - b)) < 0.1 + 0.05 * int(cand.sum()), (g, float(a), float(b))


def test_region_draws_are_uniform():
    single = torch.from_numpy(face_map(224, seed=7))[None]
    touch = touch_of(single, 16)[0]
    assert len({tuple(touch[g].tolist()) for g in range(6)}) == 6
    _, fr = ops.crfrp_mask(single.expand(1200, -1, -1).contiguous(), region="image",
                           backend="cpu", seed=8)
    counts = [sum(torch.equal(row, touch[g]) for row in fr) for g in range(6)]
    assert sum(counts) == 1200 and all(140 <= c <= 260 for c in counts), counts
    per_batch = {next(g for g in range(6) if torch.equal(ops.crfrp_mask(
        single, backend="cpu", seed=s)[1][0], touch[g])) for s in range(60)}
    assert per_batch == set(range(6))


def test_uniform_choice_inside_each_group():
    runs = 1500
    single = synthetic_faces(1, seed=12)
    touch = touch_of(single, 16)[0]
    img, _ = ops.crfrp_mask(single.expand(runs, -1, -1).contiguous(), region_index=2,
                            backend="cpu", seed=9)
    rates = per_patch_rates(img)
    claimed = touch[2].clone()
    for g in range(8):
        cand = touch[g] & ~claimed
        claimed |= cand
        if int(cand.sum()) > 1:
            r = rates[cand]
            assert float((r - r.mean()).abs().max()) < 5 * (0.25 / runs) ** 0.5 + 0.01, g


# --------------------------------------------------------------------------- the random stream

def test_reproducible_and_seed_sensitive():
    parsing = synthetic_faces(8, seed=2)
    for strategy in STRATEGIES:
        a = ops.crfrp_mask(parsing, strategy=strategy, region="image", backend="cpu",
                           generator=torch.Generator().manual_seed(5))
        torch.manual_seed(123)  # the global generator plays no part
        b = ops.crfrp_mask(parsing, strategy=strategy, region="image", backend="cpu",
                           generator=torch.Generator().manual_seed(5))
        c = ops.crfrp_mask(parsing, strategy=strategy, region="image", backend="cpu",
                           generator=torch.Generator().manual_seed(6))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])
        assert torch.equal(op(parsing, strategy=strategy, seed=7, offset=1)[0],
                           op(parsing, strategy=strategy, seed=7, offset=1)[0])
        assert not torch.equal(op(parsing, strategy=strategy, seed=7, offset=1)[0],
                               op(parsing, strategy=strategy, seed=7, offset=2)[0])


def test_generator_is_consumed_once_per_call():
    parsing = synthetic_faces(4, seed=3)
    g = torch.Generator().manual_seed(1)
    first = ops.crfrp_mask(parsing, backend="cpu", generator=g)
    second = ops.crfrp_mask(parsing, backend="cpu", generator=g)
    assert not torch.equal(first[0], second[0])
    g2 = torch.Generator().manual_seed(1)
    assert torch.equal(ops.crfrp_mask(parsing, backend="cpu", generator=g2)[0], first[0])
    torch.manual_seed(4)
    d = ops.crfrp_mask(parsing, backend="cpu")  # generator None: the default CPU generator
    torch.manual_seed(4)
    assert torch.equal(ops.crfrp_mask(parsing, backend="cpu")[0], d[0])


def test_image_mask_depends_only_on_its_map_and_index():
    parsing = synthetic_faces(5, seed=4)
    changed = parsing.clone()
    changed[0] = torch.from_numpy(hair_map(224))
    changed[3] = 0
    for region in ("batch", "image"):
        a = op(parsing, region=region, seed=3)
        b = op(changed, region=region, seed=3)
        for row in (1, 2, 4):
            assert torch.equal(a[0][row], b[0][row]) and torch.equal(a[1][row], b[1][row])
    same = synthetic_faces(1, seed=5).expand(2, -1, -1).contiguous()
    a = op(same, region_index=torch.tensor([1, 1]), seed=0)
    assert not torch.equal(a[0][0], a[0][1])  # identical maps, independent masks


def test_batch_versus_image_region():
    same = synthetic_faces(1, seed=6).expand(24, -1, -1).contiguous()
    _, fr_batch = op(same, region="batch", seed=8)
    _, fr_image = op(same, region="image", seed=8)
    assert len({tuple(r.tolist()) for r in fr_batch}) == 1
    assert len({tuple(r.tolist()) for r in fr_image}) >= 3


def test_large_seeds_wrap_to_int64():
    parsing = face_batch(2, 64)
    big = (1 << 64) - 3
    assert torch.equal(ops.crfrp_mask(parsing, backend="cpu", seed=big)[0],
                       ops.crfrp_mask(parsing, backend="cpu", seed=-3)[0])


# --------------------------------------------------------------------------- the GPU logic on CPU

REPLAY_SHAPES = [((4, 224, 224), 16), ((3, 224, 224), 14), ((2, 112, 224), 16),
                 ((3, 224, 112), 14), ((2, 96, 64), 8), ((2, 32, 32), 32), ((1, 60, 45), 15),
                 ((2, 48, 48), 2)]


@pytest.mark.parametrize("shape, patch", REPLAY_SHAPES)
def test_replay_equals_twin_bit_for_bit(shape, patch):
    b, h, w = shape
    maps = [face_batch(b, h, w, seed=patch), random_labels(b, h, w, seed=patch)]
    if (h, w) == (224, 224):
        maps.append(synthetic_faces(b, seed=patch))
    for parsing in maps:
        for n, strategy in enumerate(STRATEGIES):
            for region, index in (("batch", None), ("image", None),
                                  ("batch", torch.arange(b) % 6)):
                args = dict(patch=patch, ratio=(0.75, 0.5, 0.29, 0.9)[n], strategy=strategy,
                            region=region, region_index=index, seed=n * 7919 - 3,
                            offset=n << 40)
                want = op(parsing, **args)
                check_masks(parsing, patch, args["ratio"], *want, strategy=strategy,
                            region_index=index)
                got = replay(parsing, **args)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_replay_independent_of_block_size():
    parsing = synthetic_faces(3, seed=7)
    want = op(parsing, region="image", seed=11)
    for threads in (32, 64, 100, 256, 512):
        got = replay(parsing, region="image", seed=11, threads=threads)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), threads


# --------------------------------------------------------------------------- errors

BAD = [
    (dict(parsing=torch.full((2, 32, 32), 11, dtype=torch.uint8)), ValueError, r"max label 11"),
    (dict(parsing=torch.zeros(2, 32, 32, dtype=torch.int64)), TypeError, r"uint8"),
    (dict(parsing=torch.zeros(2, 30, 32, dtype=torch.uint8)), ValueError, r"divisible|divide"),
    (dict(parsing=torch.zeros(32, 32, dtype=torch.uint8)), ValueError, r"3-D|3 dims"),
    (dict(patch=0), ValueError, r"positive"),
    (dict(ratio=1.0), ValueError, r"mask_ratio"),
    (dict(ratio=0.0), ValueError, r"mask_ratio"),
    (dict(ratio=float("nan")), ValueError, r"mask_ratio"),
    (dict(strategy="crfrp"), ValueError, r"strategy"),
    (dict(region="pixel"), ValueError, r"region"),
    (dict(region_index=torch.tensor([0, 6])), ValueError, r"region_index must be in 0..5"),
    (dict(region_index=torch.tensor([-1, 0])), ValueError, r"region_index must be in 0..5"),
    (dict(region_index=torch.tensor([0])), ValueError, r"shape"),
    (dict(region_index=torch.tensor([0, 1], dtype=torch.int32)), TypeError, r"int64"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD)
def test_compiled_op_checks_its_inputs(kwargs, error, message):
    args = dict(parsing=torch.zeros(2, 32, 32, dtype=torch.uint8))
    args.update(kwargs)
    with pytest.raises(error, match=message):
        op(**args)
    with pytest.raises(error, match=message):
        replay(**args)


@pytest.mark.parametrize("bad", [11, 12, 255])
def test_public_op_rejects_bad_labels_without_consuming_randomness(bad):
    parsing = synthetic_faces(3, seed=8)
    parsing[2, 100, 7] = bad
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(ValueError, match=f"max label {bad}"):
        ops.crfrp_mask(parsing, backend="cpu", generator=g)
    assert torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match="region_index"):
        ops.crfrp_mask(parsing[:2], backend="cpu", generator=g,
                       region_index=torch.tensor([0, 7]))
    assert torch.equal(g.get_state(), state)


def test_seed_argument_rules():
    parsing = face_batch(1, 64)
    with pytest.raises(ValueError, match="either generator or seed"):
        ops.crfrp_mask(parsing, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="offset"):
        ops.crfrp_mask(parsing, offset=3)
    with pytest.raises(TypeError, match="seed"):
        ops.crfrp_mask(parsing, seed=1.5)


def test_backend_errors(monkeypatch):
    x = face_batch(1, 64)
    with pytest.raises(RuntimeError, match="CUDA"):
        ops.crfrp_mask(x, backend="cuda")
    monkeypatch.setattr(_ext, "C", None)
    monkeypatch.setattr(_ext, "IMPORT_ERROR", ImportError("libfoo.so: cannot open"))
    with pytest.raises(RuntimeError, match="libfoo.so"):
        ops.crfrp_mask(x, backend="cpu")
    img, fr = ops.crfrp_mask(x, seed=1)  # auto falls back to the reference
    check_masks(x, 16, 0.75, img, fr)


def test_benchmark_baseline_is_a_faithful_crfrp(monkeypatch):
    # The benchmark's speed-ups are only fair if its collate-style baseline computes CRFR-P.
    spec = importlib.util.spec_from_file_location("bench_crfrp_mask",
                                                  ROOT / "benchmarks" / "bench_crfrp_mask.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    parsing = torch.cat([synthetic_faces(4, seed=13),
                         torch.from_numpy(np.stack([hair_map(224)] * 2))])
    torch.manual_seed(0)
    for _ in range(6):
        check_masks(parsing, 16, 0.75, *bench.collate_masks(parsing))


# --------------------------------------------------------------------------- tracing

def test_fake_impl_and_meta():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        img, fr = op(torch.empty(5, 224, 112, dtype=torch.uint8), 14)
        assert img.shape == fr.shape == (5, 128) and img.dtype == fr.dtype == torch.bool
    meta = ops.crfrp_mask(torch.empty(3, 64, 32, dtype=torch.uint8, device="meta"), 16, seed=0)
    assert meta[0].shape == (3, 8) and meta[0].device.type == "meta"


def test_torch_compile_fullgraph():
    def masks(p):
        img, fr = ops.crfrp_mask(p, 14, strategy="crfr_p", region="image", backend="cpu",
                                 seed=17, offset=3)
        return img.sum(1), fr & img

    compiled = torch.compile(masks, fullgraph=True, backend="aot_eager", dynamic=True)
    for batch in (2, 3):
        x = face_batch(batch, 56, 112, seed=batch)
        got, want = compiled(x), masks(x)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_opcheck():
    torch.library.opcheck(torch.ops.fsfm_fast.crfrp_mask.default,
                          (face_batch(2, 32, 48), 16, 0.75, "crfr_p", "image", None, 1, 2))
    torch.library.opcheck(torch.ops.fsfm_fast.crfrp_mask.default,
                          (face_batch(2, 32, 48), 16, 0.5, "fr", "batch",
                           torch.tensor([1, 2]), 1, 2))


# --------------------------------------------------------------------------- CUDA

CUDA_SHAPES = REPLAY_SHAPES + [((64, 224, 224), 16), ((1, 224, 224), 2)]


@pytest.mark.cuda
@pytest.mark.parametrize("shape, patch", CUDA_SHAPES)
def test_cuda_equals_cpu_bit_for_bit(shape, patch):
    b, h, w = shape
    for parsing in (face_batch(b, h, w, seed=patch), random_labels(b, h, w, seed=patch)):
        for n, strategy in enumerate(STRATEGIES):
            for region, index in (("batch", None), ("image", None),
                                  ("batch", torch.arange(b) % 6)):
                for seed, offset in ((0, 0), (n - 5, 1 << 33), ((1 << 63) - 1, 7)):
                    args = dict(patch=patch, ratio=(0.75, 0.5, 0.29, 0.9)[n],
                                strategy=strategy, region=region, seed=seed, offset=offset)
                    want = op(parsing, region_index=index, **args)
                    got = op(parsing.cuda(), region_index=None if index is None else index.cuda(),
                             **args)
                    assert got[0].device.type == "cuda" and got[0].dtype == torch.bool
                    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.cuda
def test_cuda_unaligned_storage_and_public_op():
    x = synthetic_faces(8, seed=9)
    want = op(x, region="image", seed=5, offset=9)
    for shift in (1, 2, 4, 8):
        base = torch.empty(x.numel() + shift, dtype=torch.uint8, device="cuda")
        unaligned = base[shift:].view(x.shape)
        unaligned.copy_(x)
        got = op(unaligned, region="image", seed=5, offset=9)
        assert torch.equal(got[0].cpu(), want[0]), shift
    got = ops.crfrp_mask(x.cuda(), region="image", seed=5, offset=9)  # auto -> cuda
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    got = ops.crfrp_mask(x.cuda(), region="image", region_index=3, seed=5, offset=9)
    assert torch.equal(got[1].cpu(), ops.crfrp_mask(x, region_index=3, seed=5, offset=9)[1])


@pytest.mark.cuda
def test_cuda_rejects_bad_inputs_before_launch():
    x = torch.zeros(2, 32, 32, dtype=torch.uint8, device="cuda")
    x[1, 5, 7] = 12
    with pytest.raises(ValueError, match="max label 12"):
        op(x)
    ok = torch.zeros(2, 32, 32, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="region_index must be in 0..5"):
        op(ok, region_index=torch.tensor([0, 6], device="cuda"))
    with pytest.raises(ValueError, match="is on"):
        op(ok, region_index=torch.tensor([0, 1]))


@pytest.mark.cuda
def test_cuda_generator_reproduces_and_advances():
    x = synthetic_faces(4, seed=10).cuda()
    g = torch.Generator(device="cuda").manual_seed(3)
    first = ops.crfrp_mask(x, generator=g)
    second = ops.crfrp_mask(x, generator=g)
    assert not torch.equal(first[0], second[0])
    again = ops.crfrp_mask(x, generator=torch.Generator(device="cuda").manual_seed(3))
    assert torch.equal(again[0], first[0])
    # (seed, offset) of a CUDA generator: the same masks on the CPU twin
    assert torch.equal(first[0].cpu(), ops.crfrp_mask(x.cpu(), seed=3, offset=0)[0])


@pytest.mark.cuda
def test_cuda_compile_fullgraph():
    def masks(p):
        return ops.crfrp_mask(p, 16, backend="cuda", seed=2, offset=4)

    x = face_batch(4, 224, seed=11).cuda()
    got = torch.compile(masks, fullgraph=True)(x)
    want = masks(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
