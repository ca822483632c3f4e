"""The synthetic anti-spoofing benchmark: print and replay attacks differ from the live face the ways
their types say, checked on the pixels that carry each trace; the four camera domains differ in colour
temperature, noise, blur, resolution and JPEG quality; the benchmark reads as FAS domains."""
from __future__ import annotations

import numpy as np
import pytest

from fsfm_fast.data.fas import load_fas_data, scale_saturation
from fsfm_fast.data.forgery import real_video
from fsfm_fast.data.spoof import DOMAINS, capture, print_attack, replay_attack, write_spoof_benchmark

SIZE = 64


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return real_video(seed=2, identity=11, n_frames=1, size=SIZE)[0].image


def _grey(img) -> np.ndarray:
    return np.asarray(img, np.float64).mean(axis=-1)


def _saturation(img) -> np.ndarray:
    img = np.asarray(img, np.float64)
    top = img.max(-1)
    return (top - img.min(-1)) / np.maximum(top, 1e-6)


def _amplitude(grey: np.ndarray, fx: float, fy: float, mask: np.ndarray | None = None) -> float:
    """|Fourier coefficient| of ``grey`` (mean removed) at the frequency (fx, fy) cycles per pixel."""
    y, x = np.mgrid[0:grey.shape[0], 0:grey.shape[1]] + 0.5
    mask = np.ones(grey.shape, bool) if mask is None else mask
    g = grey[mask] - grey[mask].mean()
    return float(np.abs((g * np.exp(-2j * np.pi * (fx * x[mask] + fy * y[mask]))).mean()))


def test_saturation_scaling_keeps_hue_and_value():
    rgb = np.array([[200.0, 100.0, 50.0], [30.0, 30.0, 30.0], [255.0, 10.0, 128.0]])
    half = scale_saturation(rgb, 0.5)
    assert np.allclose(half.max(-1), rgb.max(-1)) and np.allclose(_saturation(half), _saturation(rgb) / 2)
    assert np.allclose(half[1], rgb[1])  # grey stays grey
    full = scale_saturation(rgb, 3.0)
    assert np.allclose(_saturation(full), np.minimum(3 * _saturation(rgb), 1)) and full.min() >= 0
    hue = lambda c: (c[..., 1] - c[..., 2]) / (c.max(-1) - c.min(-1))  # noqa: E731 (red-max pixels)
    assert hue(full[0]) == pytest.approx(hue(rgb[0])) and hue(half[0]) == pytest.approx(hue(rgb[0]))


def test_print_attack_compresses_the_gamut_adds_halftone_paper_and_a_border(face):
    attack = print_attack(face, np.random.default_rng(4), bend=False)
    scene, info, border = attack.scene, attack.info, attack.maps["border"]
    photo = ~border
    # the visible border: white paper (times its texture) where the live frame shows the scene
    top, bottom, left, right = info["margins"]
    assert max(info["margins"]) > 0 and border.sum() == SIZE * SIZE - (SIZE - top - bottom) * (SIZE - left - right)
    paper = scene[border] / attack.maps["texture"][border][:, None]
    assert np.allclose(paper, info["white"], atol=1e-3)
    assert np.abs(scene[border] - face[border]).mean() > 20
    # gamut: ink on paper is duller and cannot reach the scene's black and white
    assert _saturation(scene)[photo].mean() < 0.8 * _saturation(face).mean()
    assert scene[photo].max() < min(face.max(), 255 * 0.92) and scene[photo].min() > face.min()
    # halftone: the dot screen's two diagonal frequencies, which the live frame does not hold
    c, s, p = np.cos(info["halftone_angle"]), np.sin(info["halftone_angle"]), info["halftone_period"]
    for fu, fv in ((1, 1), (1, -1)):  # cos(u) cos(v) = [cos(u + v) + cos(u - v)] / 2, in the rotated frame
        fx, fy = (fu * c - fv * s) / p, (fu * s + fv * c) / p
        assert _amplitude(_grey(scene), fx, fy, photo) > 5 * _amplitude(_grey(face), fx, fy, photo)
    # a bent sheet: its sides turn from the light (darker), its middle column stays as it was
    bent = print_attack(face, np.random.default_rng(4), bend=True)
    assert bent.info["bend"] and not info["bend"]
    side, middle = np.r_[0:4, SIZE - 4:SIZE], slice(SIZE // 2 - 1, SIZE // 2 + 1)
    assert _grey(bent.scene)[:, side].mean() < 0.9 * _grey(scene)[:, side].mean()
    assert _grey(bent.scene)[:, middle].mean() == pytest.approx(_grey(scene)[:, middle].mean(), rel=0.03)


def test_replay_attack_adds_a_pixel_grid_moire_and_glare(face):
    attack = replay_attack(face, np.random.default_rng(9))
    scene, info = attack.scene, attack.info
    # the pixel grid: a peak at the screen's pitch, along both axes
    for fx, fy in ((1 / info["pitch"], 0), (0, 1 / info["pitch"])):
        assert _amplitude(_grey(scene), fx, fy) > 3 * _amplitude(_grey(face), fx, fy)
    # moire: slow bands; where the wave crests the screen is brighter, relative to the live face, than
    # where it troughs, by about the band's amplitude
    band, far = attack.maps["moire"], attack.maps["glare"] < 0.02
    crest, trough = far & (band > 1 + info["moire_amplitude"] / 2), far & (band < 1 - info["moire_amplitude"] / 2)
    relative = [scene[m, 1].mean() / face[m, 1].mean() for m in (crest, trough)]
    assert crest.sum() > 200 and trough.sum() > 200 and relative[0] / relative[1] > 1 + info["moire_amplitude"]
    # glare: at its centre the screen is washed towards white, brighter and greyer than the live face
    gy, gx = (int(v) for v in info["glare_centre"])
    assert _grey(scene)[gy, gx] > _grey(face)[gy, gx] + 0.3 * (255 - _grey(face)[gy, gx])
    assert _saturation(scene)[gy, gx] < _saturation(face)[gy, gx] or _saturation(face)[gy, gx] < 0.1
    far = attack.maps["glare"] < 0.01
    # the screen glows: its darkest pixels (away from the glare) stay above the live frame's black
    assert scene[far].min() > face[far].min()


def test_the_four_domains_differ_in_every_capture_condition():
    values = {k: [getattr(d, k) for d in DOMAINS.values()] for k in ("kelvin", "blur", "resolution", "noise", "jpeg")}
    assert all(len(set(v)) == len(DOMAINS) or k == "resolution" and len(set(v)) >= 3 for k, v in values.items())
    grey = np.full((SIZE, SIZE, 3), 128.0, np.float32)
    checker = np.where((np.indices((SIZE, SIZE)).sum(0) // 2) % 2 == 0, 60.0, 190.0)[..., None].repeat(3, -1)
    measured = {}
    for name, domain in DOMAINS.items():
        settings = {"kelvin": domain.kelvin, "blur": domain.blur, "resolution": domain.resolution,
                    "noise": domain.noise, "jpeg": domain.jpeg}
        flat = capture(grey, domain, settings, np.random.default_rng(0)).astype(float)
        still = capture(checker, domain, {**settings, "noise": 0.0}, np.random.default_rng(0)).astype(float)
        measured[name] = {"red_blue": flat[..., 0].mean() / flat[..., 2].mean(), "noise": flat[..., 1].std(),
                          "detail": _amplitude(_grey(still), 0.25, 0.25)}
    # colour temperature: warm (webcam, 3300 K) reddens grey, cool (phone, 8000 K) blues it
    assert measured["webcam"]["red_blue"] > 1.3 > 1.0 > measured["phone"]["red_blue"]
    assert measured["cctv"]["noise"] > measured["webcam"]["noise"] > measured["phone"]["noise"]
    # blur and resolution: the sharp phone keeps a fine checkerboard that the cctv camera loses
    assert measured["phone"]["detail"] > 4 * measured["cctv"]["detail"]
    assert measured["phone"]["detail"] > measured["laptop"]["detail"] > measured["cctv"]["detail"]


def test_benchmark_layout_reads_as_fas_domains(tmp_path):
    root = write_spoof_benchmark(tmp_path / "b", size=32, frames_per_video=2, identities={"train": 2, "test": 2},
                                 domains=("webcam", "cctv"))
    assert write_spoof_benchmark(root, size=32, frames_per_video=2, identities={"train": 2, "test": 2},
                                 domains=("webcam", "cctv")) == root  # the manifest matches: left alone
    data = load_fas_data({"webcam": str(root / "webcam")}, ("cctv", str(root / "cctv")), val_fraction=0.25,
                         split_seed=0)
    assert {s.cls for s in data.train} == {"real", "spoof_print", "spoof_replay"}
    assert sorted(data.groups) == ["webcam/fake", "webcam/real"]
    assert len(data.target) == 2 * 3 * 2 and {s.label for s in data.target} == {0, 1}
    assert all(s.video.startswith("webcam/") for s in data.train + data.val)
    assert not {s.video for s in data.train} & {s.video for s in data.val}  # held out by whole videos
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="not empty"):
        write_spoof_benchmark(tmp_path / "mine")
