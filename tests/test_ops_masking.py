"""CRFR-P masking: the properties of SPEC section 2, checked on procedural face maps."""
import random

import numpy as np
import pytest
import torch

from _maps import face_batch, face_map, hair_map
from fsfm_fast import _ext, ops
from fsfm_fast.ops import reference

BRIEF_CASES = [(224, 224, 16), (112, 112, 16), (224, 224, 14), (112, 224, 16)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# SPEC section 2 holds for every implementation a run may use: the reference is what "auto" falls
# back to on a GPU without the extension, so it gets the same property tests as the compiled ops.
BACKENDS = ["torch"] + (["cpu"] if _ext.has_extension() else []) + \
    (["cuda"] if _ext.cuda_built() and torch.cuda.is_available() else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def masks(backend, parsing, *args, generator=None, **kwargs):
    """ops.crfrp_mask on the backend's device, drawing from the stream named by generator's seed
    (every backend takes a seed), masks returned on the CPU."""
    device = "cuda" if backend == "cuda" else "cpu"
    if isinstance(kwargs.get("region_index"), torch.Tensor):
        kwargs["region_index"] = kwargs["region_index"].to(device)
    seed = generator.initial_seed() if generator is not None else 0
    img, fr = ops.crfrp_mask(parsing.to(device), *args, backend=backend, seed=seed, **kwargs)
    return img.cpu(), fr.cpu()


def touch_of(parsing, patch_size):
    return reference.group_touch(reference.region_presence(parsing, patch_size))


def num_mask(parsing, patch_size, ratio=0.75):
    L = (parsing.shape[1] // patch_size) * (parsing.shape[2] // patch_size)
    return L, int(ratio * L)


def walk_candidates(touch_row, region):
    """Per walked group (G order, R skipped): the patch sets it may hide, as Python sets."""
    sets = [set(torch.nonzero(touch_row[g]).flatten().tolist()) for g in range(8)]
    claimed = set(sets[region])
    out = {}
    for g in range(8):
        if g == region:
            continue
        out[g] = sets[g] - claimed
        claimed |= out[g]
    return out


def python_crfrp(touch_row, region, L, M, rnd):
    """Straightforward one-image CRFR-P written from SPEC section 2, on Python's random."""
    fr = set(torch.nonzero(touch_row[region]).flatten().tolist())
    if len(fr) >= M:
        kept = set(rnd.sample(sorted(fr), M))
        return kept, kept
    ratio = (M - len(fr)) / (L - len(fr))
    hidden = set(fr)
    for cand in walk_candidates(touch_row, region).values():
        hidden |= set(rnd.sample(sorted(cand), round(ratio * len(cand))))
    if len(hidden) < M:
        hidden |= set(rnd.sample(sorted(set(range(L)) - hidden), M - len(hidden)))
    elif len(hidden) > M:
        hidden -= set(rnd.sample(sorted(hidden - fr), len(hidden) - M))
    return hidden, fr


# --------------------------------------------------------------------------- presence / groups

def test_region_presence_matches_per_patch_sets():
    parsing = torch.randint(0, 11, (2, 32, 48), generator=gen(1), dtype=torch.uint8)
    parsing[0, :16, :16] = 3  # a patch with a single label
    bits = ops.region_presence(parsing, 16)
    assert bits.dtype == torch.int16 and bits.shape == (2, 6)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                labels = set(parsing[b, i * 16:(i + 1) * 16, j * 16:(j + 1) * 16].flatten().tolist())
                expect = sum(1 << k for k in labels)
                assert int(bits[b, i * 3 + j]) == expect
    assert int(bits[0, 0]) == 1 << 3


def test_group_touch_boundary_rule():
    def bits(*labels):
        return sum(1 << k for k in labels)

    presence = torch.tensor([[bits(1, 10), bits(1, 0), bits(1), bits(10, 0), bits(2, 9), bits(5)]],
                            dtype=torch.int16)
    touch = ops.group_touch(presence)[0]
    boundary = reference.GROUP_NAMES.index("boundary")
    assert touch[boundary].tolist() == [True, True, False, False, False, False]
    assert touch[:, 4].tolist() == [True, False, False, True, False, False, False, False]
    assert touch[:, 5].tolist() == [False, True, False, False, False, False, False, False]
    assert touch[:, 3].tolist() == [False, False, False, False, False, True, False, True]


# --------------------------------------------------------------------------- core properties

@pytest.mark.parametrize("height,width,patch", BRIEF_CASES)
def test_crfrp_exact_count_and_region_hidden(backend, height, width, patch):
    parsing = face_batch(8, height, width, seed=10)
    touch = touch_of(parsing, patch)
    L, M = num_mask(parsing, patch)
    for region in range(6):
        img, fr = masks(backend, parsing, patch, 0.75, region_index=region, generator=gen(region))
        assert img.dtype == torch.bool and img.shape == (8, L)
        assert (img.sum(1) == M).all()
        assert not (fr & ~img).any()
        small = touch[:, region].sum(1) < M
        assert small.all()  # face maps: every region is smaller than M
        assert torch.equal(fr, touch[:, region])


def test_proportional_walk_hides_round_ratio_of_each_group_before_fixup():
    parsing = face_batch(12, seed=20)
    touch = touch_of(parsing, 16)
    L, M = num_mask(parsing, 16)
    for region in range(6):
        fr = touch[:, region]
        pre = reference._proportional_walk(touch, fr, M, gen(region))
        for b in range(parsing.shape[0]):
            n_fr = int(fr[b].sum())
            ratio = (M - n_fr) / (L - n_fr)
            hidden = set(torch.nonzero(pre[b]).flatten().tolist())
            assert set(torch.nonzero(fr[b]).flatten().tolist()) <= hidden
            for g, cand in walk_candidates(touch[b], region).items():
                assert len(hidden & cand) == round(ratio * len(cand)), (b, region, g)


def test_fixup_moves_few_patches_in_one_direction(backend):
    parsing = face_batch(16, seed=30)
    touch = touch_of(parsing, 16)
    L, M = num_mask(parsing, 16)
    for region in range(6):
        img, _ = masks(backend, parsing, 16, region_index=region, generator=gen(100 + region))
        for b in range(parsing.shape[0]):
            n_fr = int(touch[b, region].sum())
            ratio = (M - n_fr) / (L - n_fr)
            hidden = set(torch.nonzero(img[b]).flatten().tolist())
            cands = walk_candidates(touch[b], region)
            planned = {g: round(ratio * len(c)) for g, c in cands.items()}
            shortfall = M - n_fr - sum(planned.values())
            assert abs(shortfall) <= 4  # seven roundings of at most 0.5 each
            devs = [len(hidden & c) - planned[g] for g, c in cands.items()]
            assert sum(devs) == shortfall
            assert all(d * shortfall >= 0 and abs(d) <= abs(shortfall) for d in devs)


@pytest.mark.parametrize("region", [1, 4])
def test_matches_python_implementation_statistically(backend, region):
    runs = 600
    single = torch.from_numpy(face_map(224, seed=3))[None]
    touch = touch_of(single, 16)[0]
    L, M = num_mask(single, 16)
    img, _ = masks(backend, single.expand(runs, -1, -1).contiguous(), 16,
                            region_index=region, generator=gen(7))
    ref_freq = img.double().mean(0).numpy()
    rnd = random.Random(7)
    py_freq = np.zeros(L)
    for _ in range(runs):
        hidden, _ = python_crfrp(touch, region, L, M, rnd)
        py_freq[sorted(hidden)] += 1.0 / runs
    for g, cand in walk_candidates(touch, region).items():
        if not cand:
            continue
        idx = sorted(cand)
        # same hidden fraction per group as the per-image algorithm
        assert abs(ref_freq[idx].mean() - py_freq[idx].mean()) < 0.02, g
        # uniform choice inside the group: no patch favoured over another
        assert np.abs(ref_freq[idx] - ref_freq[idx].mean()).max() < 0.1, g
    assert np.abs(ref_freq - py_freq).max() < 0.15


def test_region_bigger_than_m_becomes_the_whole_mask(backend):
    parsing = torch.from_numpy(np.stack([hair_map(224)] * 4))
    touch = touch_of(parsing, 16)
    L, M = num_mask(parsing, 16)
    assert int(touch[0, 5].sum()) > M
    for strategy in ("crfr_p", "crfr_r", "fr"):
        img, fr = masks(backend, parsing, 16, region_index=5, strategy=strategy, generator=gen(2))
        assert (img.sum(1) == M).all()
        assert torch.equal(img, fr)
        assert not (fr & ~touch[:, 5]).any()
        assert not torch.equal(img[0], img[1])  # the kept part of the region is random


def test_random_labels_every_region_covers_everything(backend):
    parsing = torch.randint(0, 11, (6, 224, 224), generator=gen(3), dtype=torch.uint8)
    L, M = num_mask(parsing, 16)
    for region in range(6):
        img, fr = masks(backend, parsing, 16, region_index=region, generator=gen(region))
        assert (img.sum(1) == M).all() and torch.equal(img, fr)


@pytest.mark.parametrize("strategy", reference.STRATEGIES)
def test_all_background_map(backend, strategy):
    parsing = torch.zeros(3, 112, 112, dtype=torch.uint8)
    L, M = num_mask(parsing, 16)
    for region in range(6):
        img, fr = masks(backend, parsing, 16, strategy=strategy, region_index=region,
                                 generator=gen(region))
        assert (img.sum(1) == M).all()
        assert not fr.any()


def test_batch_of_one_and_empty_batch(backend):
    parsing = face_batch(1, 112)
    img, fr = masks(backend, parsing, 16, generator=gen())
    assert img.shape == (1, 49) and int(img.sum()) == 36 and not (fr & ~img).any()
    img, fr = masks(backend, parsing[:0], 16, generator=gen())
    assert img.shape == (0, 49) and fr.shape == (0, 49)


def test_mask_count_follows_python_float_arithmetic(backend):
    parsing = face_batch(2, 160)  # L = 100, and 0.29 * 100 == 28.999999999999996 in float64
    img, _ = masks(backend, parsing, 16, 0.29, generator=gen())
    assert (img.sum(1) == 28).all()


@pytest.mark.parametrize("strategy", ["random", "crfr_r", "fr"])
@pytest.mark.parametrize("height,width,patch", BRIEF_CASES)
def test_other_strategies_exact_count(backend, strategy, height, width, patch):
    parsing = face_batch(6, height, width, seed=40)
    touch = touch_of(parsing, patch)
    L, M = num_mask(parsing, patch)
    img, fr = masks(backend, parsing, patch, strategy=strategy, region="image", generator=gen(4))
    assert (img.sum(1) == M).all()
    assert not (fr & ~img).any()
    if strategy == "random":
        assert not fr.any()
        return
    # fr is one of the six regions, fully hidden
    assert all(any(torch.equal(fr[b], touch[b, g]) for g in range(6)) for b in range(6))
    if strategy == "fr":
        faces = touch[:, :6].any(1)
        fits = (faces.sum(1) <= M).unsqueeze(1)
        # all six regions go before any random fill; if they exceed M, nothing else is hidden
        assert not (fits & faces & ~img).any()
        assert not (~fits & img & ~faces).any()


def test_fr_strategy_hides_whole_regions_first(backend):
    parsing = face_batch(8, seed=50)
    touch = touch_of(parsing, 16)
    # M between the two smallest regions' sizes: hide R (nose) then part of one more region
    img, fr = masks(backend, parsing, 16, 0.06, strategy="fr", region_index=2, generator=gen(5))
    M = int(0.06 * 196)
    assert (img.sum(1) == M).all() and torch.equal(fr, touch[:, 2])
    regions = touch[:, :6].any(1)
    assert not (img & ~regions).any()  # no random fill needed, so nothing outside the regions


def test_fr_strategy_takes_regions_in_random_order(backend):
    runs = 400
    single = torch.from_numpy(face_map(224, seed=6))[None]
    touch = touch_of(single, 16)[0]
    nose = int(touch[2].sum())
    ratio = (nose + 1.5) / 196  # M = |nose| + 1: one patch of whichever region comes next
    img, _ = masks(backend, single.expand(runs, -1, -1).contiguous(), 16, ratio, strategy="fr",
                            region_index=2, generator=gen(9))
    extra = img & ~touch[2]
    assert (extra.sum(1) == 1).all()
    for g in (0, 1, 3, 4, 5):
        share = float((extra & touch[g]).any(1).double().mean())
        assert share > 0.12, (g, share)  # about 1/5 each (more where regions overlap)


def test_region_draw_is_uniform_over_six_regions(backend):
    single = torch.from_numpy(face_map(224, seed=7))[None]
    touch = touch_of(single, 16)[0]
    assert len({tuple(touch[g].tolist()) for g in range(6)}) == 6
    _, fr = masks(backend, single.expand(600, -1, -1).contiguous(), 16, region="image",
                           generator=gen(10))
    counts = [sum(torch.equal(row, touch[g]) for row in fr) for g in range(6)]
    assert sum(counts) == 600
    assert all(60 <= c <= 140 for c in counts), counts
    batch_regions = set()
    for seed in range(40):
        _, fr = masks(backend, single, 16, generator=gen(seed))
        batch_regions |= {g for g in range(6) if torch.equal(fr[0], touch[g])}
    assert batch_regions == set(range(6))


def test_crfr_r_fills_outside_region_uniformly(backend):
    single = torch.from_numpy(face_map(112, seed=5))[None].expand(1000, -1, -1).contiguous()
    touch = touch_of(single, 16)[0]
    L, M = num_mask(single, 16)
    img, fr = masks(backend, single, 16, strategy="crfr_r", region_index=1, generator=gen(6))
    outside = ~touch[1]
    freq = img[:, outside].double().mean(0)
    expected = (M - int(touch[1].sum())) / int(outside.sum())
    assert (freq - expected).abs().max() < 0.08
    assert img[:, touch[1]].all()


# --------------------------------------------------------------------------- randomness

def test_seeded_reproducibility():
    # faces (|R| < M) and hair maps (|R| >= M) exercise both branches
    parsing = torch.cat([face_batch(6, seed=60), torch.from_numpy(np.stack([hair_map()] * 2))])
    for strategy in reference.STRATEGIES:
        torch.manual_seed(1)
        a = ops.crfrp_mask(parsing, strategy=strategy, region="image", generator=gen(11))
        torch.manual_seed(2)  # the global RNG must play no part
        b = ops.crfrp_mask(parsing, strategy=strategy, region="image", generator=gen(11))
        c = ops.crfrp_mask(parsing, strategy=strategy, region="image", generator=gen(12))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])
    hair = parsing[6:7].expand(4, -1, -1)
    a = ops.crfrp_mask(hair, region_index=5, generator=gen(13))
    torch.manual_seed(3)
    b = ops.crfrp_mask(hair, region_index=5, generator=gen(13))
    assert torch.equal(a[0], b[0])
    torch.manual_seed(3)
    d = ops.crfrp_mask(parsing)
    torch.manual_seed(3)
    e = ops.crfrp_mask(parsing)
    assert torch.equal(d[0], e[0])


def test_region_per_image_versus_per_batch(backend):
    same = face_batch(1, seed=70).expand(24, -1, -1).contiguous()
    _, fr_batch = masks(backend, same, region="batch", generator=gen(8))
    _, fr_image = masks(backend, same, region="image", generator=gen(8))
    assert len({tuple(r.tolist()) for r in fr_batch}) == 1
    assert len({tuple(r.tolist()) for r in fr_image}) >= 3


def test_region_index_tensor_forces_per_image_region(backend):
    parsing = face_batch(6, seed=80)
    touch = touch_of(parsing, 16)
    index = torch.tensor([0, 1, 2, 3, 4, 5])
    _, fr = masks(backend, parsing, region_index=index, generator=gen())
    assert all(torch.equal(fr[b], touch[b, b]) for b in range(6))


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("bad", [11, 255])
def test_invalid_label_rejected_before_any_work(bad):
    parsing = face_batch(2, 112)
    parsing[1, 5, 7] = bad
    g = gen(0)
    state = g.get_state()
    with pytest.raises(ValueError, match=f"max label {bad}"):
        ops.crfrp_mask(parsing, generator=g)
    assert torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match="label"):
        ops.region_presence(parsing, 16)
    with pytest.raises(ValueError, match=f"max label {bad}"):
        ops.region_presence(parsing, 16, backend="torch")


@pytest.mark.parametrize("kwargs,error", [
    (dict(parsing=torch.zeros(2, 112, 112)), TypeError),
    (dict(parsing=torch.zeros(2, 112, 112, dtype=torch.int64)), TypeError),
    (dict(parsing=torch.zeros(112, 112, dtype=torch.uint8)), ValueError),
    (dict(patch_size=15), ValueError),
    (dict(patch_size=0), ValueError),
    (dict(mask_ratio=0.0), ValueError),
    (dict(mask_ratio=1.0), ValueError),
    (dict(mask_ratio=1.5), ValueError),
    (dict(strategy="crfrp"), ValueError),
    (dict(region="pixel"), ValueError),
    (dict(region_index=6), ValueError),
    (dict(region_index=torch.tensor([0, 9])), ValueError),
    (dict(region_index=torch.tensor([0])), ValueError),
    (dict(region_index=1.0), TypeError),
    (dict(generator=123), TypeError),
    (dict(backend="cuda"), RuntimeError),  # CPU parsing (or a build without CUDA)
])
def test_bad_arguments(kwargs, error):
    args = dict(parsing=torch.zeros(2, 112, 112, dtype=torch.uint8), patch_size=16)
    args.update(kwargs)
    with pytest.raises(error):
        ops.crfrp_mask(**args)


def test_backend_argument_and_environment(monkeypatch):
    parsing = face_batch(2, 112)
    auto = ops.crfrp_mask(parsing, generator=gen(1))
    forced = ops.crfrp_mask(parsing, generator=gen(1), backend="torch")
    # auto takes the C++ twin on CPU tensors when the extension is built: other random
    # stream than the reference, so other masks for the same generator
    compiled = "cpu" if _ext.has_extension() else "torch"
    assert torch.equal(auto[0], ops.crfrp_mask(parsing, generator=gen(1), backend=compiled)[0])
    monkeypatch.setenv("FSFM_OPS_BACKEND", "torch")
    assert torch.equal(ops.crfrp_mask(parsing, generator=gen(1))[0], forced[0])
    monkeypatch.setenv("FSFM_OPS_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="FSFM_OPS_BACKEND"):
        ops.crfrp_mask(parsing, generator=gen(1))
    with pytest.raises(ValueError, match="auto"):
        ops.crfrp_mask(parsing, backend="fast")
