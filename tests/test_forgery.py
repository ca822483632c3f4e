"""The synthetic forgery benchmark: each fake differs from the real frame it came from the way its type
says, checked on the pixels its blending map names."""
from __future__ import annotations

import numpy as np
import pytest

from fsfm_fast.data import forgery
from fsfm_fast.data.forgery import (expression_frame, face_swap, make_video, real_video, reenactment, rerender,
                                    upsampling_artefacts, write_forgery_benchmark)
from fsfm_fast.data.synthetic import INNER_MOUTH, LEFT_EYE, LOWER_LIP, RIGHT_EYE, UPPER_LIP

SIZE = 96


@pytest.fixture(scope="module")
def frames():
    return real_video(seed=5, identity=3, n_frames=2, size=SIZE)


@pytest.fixture(scope="module")
def donor():
    return real_video(seed=5, identity=4, n_frames=1, size=SIZE)[0]


def _untouched_is_exact(fake, real):
    outside = fake.alpha == 0
    assert outside.mean() > 0.4, "the manipulation should leave most of the picture alone"
    assert np.array_equal(fake.image[outside], real.image[outside])


def _core_is_generated(fake):
    core = fake.alpha == 1
    assert core.sum() > 50
    expected = np.clip(np.rint(fake.generated[core]), 0, 255)
    assert np.array_equal(fake.image[core], expected.astype(np.uint8))
    return core


def _high_freq(img: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the grey image on ``mask`` (edges dropped)."""
    g = img.astype(np.float64).mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float((lap[mask[1:-1, 1:-1]] ** 2).mean())


def _phase_contrast(img: np.ndarray, mask: np.ndarray, phases: np.ndarray) -> float:
    """Least-squares strength of a 2x2 phase-gain pattern on the 2x2 blocks inside ``mask``: each block's
    four grey values divided by their mean, projected on the (zero-mean) pattern."""
    h, w = mask.shape
    g = img.astype(np.float64).mean(axis=2)[: h - h % 2, : w - w % 2].reshape(h // 2, 2, w // 2, 2)
    inside = mask[: h - h % 2, : w - w % 2].reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))
    rel = g / g.mean(axis=(1, 3), keepdims=True) - 1.0
    pattern = (phases - phases.mean())[None, :, None, :]
    return float(((rel * pattern).sum(axis=(1, 3)) / (pattern ** 2).sum())[inside].mean())


def test_a_video_is_one_person_with_small_jitter(frames):
    a, b = frames
    other = real_video(seed=5, identity=9, n_frames=1, size=SIZE)[0]
    same = np.abs(a.image.astype(int) - b.image.astype(int)).mean()
    different = np.abs(a.image.astype(int) - other.image.astype(int)).mean()
    assert 0 < same < different / 2
    assert (a.parsing == b.parsing).mean() > 0.85  # the head barely moved
    assert np.array_equal(real_video(5, 3, 1, SIZE)[0].image, a.image), "not reproducible"


def test_face_swap_pastes_another_inner_face_with_a_colour_mismatch_and_soft_seam(frames, donor):
    real = frames[0]
    fake = face_swap(real, donor, np.random.default_rng(0))
    _untouched_is_exact(fake, real)
    core = _core_is_generated(fake)
    assert ((fake.alpha > 0) & (fake.alpha < 1)).sum() > core.sum() * 0.2, "no feathered seam"
    # the pasted face is the other person's, whose colour was only partly matched to this one's
    mismatch = np.abs(fake.image[core].astype(float).mean(0) - real.image[core].astype(float).mean(0)).max()
    assert mismatch > 1.5
    assert np.abs(fake.image[core].astype(int) - real.image[core].astype(int)).mean() > 4
    # it covers the inner face (eyes, mouth), not the hair or the background
    inner = np.isin(real.parsing, [LEFT_EYE, RIGHT_EYE, UPPER_LIP, LOWER_LIP])
    assert (fake.alpha[inner] > 0).mean() > 0.9
    assert (fake.alpha[np.isin(real.parsing, [0, 10])] == 0).mean() > 0.99
    # the pasted face carries the swap decoder's fingerprint, the real frame none
    strength = fake.info["trace_strength"]
    assert _phase_contrast(fake.image, core, forgery.SWAP_PHASES) == pytest.approx(strength, rel=0.2)
    assert abs(_phase_contrast(real.image, core, forgery.SWAP_PHASES)) < 0.2 * strength


def test_reenactment_replaces_mouth_and_eyes_with_another_expression(frames):
    real = frames[0]
    expression = expression_frame(real, np.random.default_rng(1))
    assert (expression.parsing == INNER_MOUTH).sum() != (real.parsing == INNER_MOUTH).sum(), "same expression"
    fake = reenactment(real, expression, np.random.default_rng(2))
    _untouched_is_exact(fake, real)
    core = _core_is_generated(fake)
    mouth = np.isin(real.parsing, [UPPER_LIP, INNER_MOUTH, LOWER_LIP])
    eyes = np.isin(real.parsing, [LEFT_EYE, RIGHT_EYE])
    assert (fake.alpha[mouth] == 1).mean() > 0.9 and (fake.alpha[eyes] == 1).mean() > 0.9
    assert (fake.alpha[np.isin(real.parsing, [0, 10])] == 0).mean() > 0.97  # background and hair untouched
    assert np.abs(fake.image[mouth].astype(int) - real.image[mouth].astype(int)).mean() > 5
    # re-rendered smooth (no camera noise, blurred) under the renderer's fingerprint
    smooth = np.clip(np.rint(fake.generated / forgery._decoder_trace(forgery.REENACT_PHASES, core.shape,
                                                                     fake.info["trace_strength"])[..., None]), 0, 255)
    assert _high_freq(smooth, core) < 0.5 * _high_freq(real.image, core)
    assert _phase_contrast(fake.image, core, forgery.REENACT_PHASES) > 0.5 * fake.info["trace_strength"]


def test_upsampling_leaves_a_checkerboard(frames):
    real = frames[0]
    fake = upsampling_artefacts(real, np.random.default_rng(3), mode="checkerboard")
    _untouched_is_exact(fake, real)
    core = _core_is_generated(fake)
    h, w = core.shape
    sign = np.where((np.add.outer(np.arange(h), np.arange(w)) % 2) == 0, 1.0, -1.0)
    # in each 2x2 block the decoder's value is one number times (1 + a) or (1 - a), on a checkerboard
    blocks = core.reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))

    def contrast(img):
        g = img.astype(np.float64).mean(axis=2).reshape(h // 2, 2, w // 2, 2)
        s = sign.reshape(h // 2, 2, w // 2, 2)
        return ((g * s).sum(axis=(1, 3)) / g.sum(axis=(1, 3)))[blocks].mean()

    assert contrast(fake.image) == pytest.approx(fake.info["amplitude"], abs=0.01)
    assert abs(contrast(real.image)) < 0.01


def test_upsampling_spectral_peaks(frames):
    real = frames[0]
    fake = upsampling_artefacts(real, np.random.default_rng(4), mode="spectral")
    _untouched_is_exact(fake, real)
    core = _core_is_generated(fake)
    yy, xx = np.nonzero(core)
    diff = fake.image.astype(np.float64) - real.image.astype(np.float64)
    for fx, fy, amp in fake.info["peaks"]:
        wave = np.cos(2 * np.pi * (fx * xx + fy * yy))
        in_fake = 2 * (fake.image[yy, xx].astype(np.float64).mean(1) * wave).mean()
        in_real = 2 * (real.image[yy, xx].astype(np.float64).mean(1) * wave).mean()
        assert abs(in_fake - in_real) > 0.5 * amp, (fx, fy, amp, in_fake, in_real)
        assert 2 * (diff[yy, xx].mean(1) * wave).mean() == pytest.approx(amp, abs=0.35 * amp)


def test_rerender_smooths_the_whole_face(frames):
    real = frames[0]
    fake = rerender(real, np.random.default_rng(5))
    _untouched_is_exact(fake, real)
    core = _core_is_generated(fake)
    features = np.isin(real.parsing, np.arange(2, 10))
    assert (fake.alpha[features] == 1).mean() > 0.95, "the whole face is re-rendered"
    assert _high_freq(fake.image, core) < 0.3 * _high_freq(real.image, core)


def test_videos_keep_one_manipulation_over_their_frames():
    a = make_video("rerender", seed=1, identity=2, n_frames=2, size=64)
    b = make_video("rerender", seed=1, identity=2, n_frames=2, size=64)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1])
    with pytest.raises(ValueError, match="kind must be one of"):
        make_video("morph", 1, 2, 1)


def test_benchmark_layout_and_idempotence(tmp_path):
    root = write_forgery_benchmark(tmp_path / "bench", size=48, frames_per_video=2,
                                   identities={"train": 3, "val": 2, "test": 2}, workers=1)
    classes = {split: sorted(p.name for p in (root / split).iterdir()) for split in ("train", "val", "test")}
    assert classes["train"] == ["fake_face_swap", "fake_reenactment", "real"]
    assert classes["test"] == ["fake_face_swap", "fake_reenactment", "fake_rerender", "fake_upsampling", "real"]
    assert len(list((root / "train" / "real").iterdir())) == 3 * 2 * 2  # people x sessions x frames
    assert len(list((root / "test" / "fake_upsampling").iterdir())) == 2 * 2
    stamp = (root / forgery.MANIFEST_NAME).stat().st_mtime_ns
    write_forgery_benchmark(root, size=48, frames_per_video=2, identities={"train": 3, "val": 2, "test": 2})
    assert (root / forgery.MANIFEST_NAME).stat().st_mtime_ns == stamp, "rewritten although it matched"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="not empty"):
        write_forgery_benchmark(tmp_path / "mine")
