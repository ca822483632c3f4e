"""Synthetic cross-domain face anti-spoofing: synthetic people filmed live and as print and replay attacks
by four different cameras (domains). The embedded default of ``python -m fsfm_fast.finetune_fas``.

A live scene is a frame of a real "video" of ``forgery.real_video`` (one synthetic person, small jitter of
pose and light, the renderer's own noise). An attack puts the same person's face, from another
recording, on a medium held before the camera:

- ``print_attack``: the photo printed on paper. Gamut compression (ink on paper is duller than the
  scene: colours desaturated and squeezed between the ink's black and the paper's white), a halftone
  dot screen (the printer's dots, at a period and angle of their own), paper texture (slow fibre
  variations), a visible border (white paper margins on one to four sides, with the photo shrunk inside
  them), and in half of the prints a bend (the sheet curls around a vertical axis: compressed towards
  its sides, which turn away from the light and darken).
- ``replay_attack``: the face shown on a screen. The screen's tone (glowing blacks, a cool tint), its
  pixel grid (dark gaps between the screen's pixels, both ways), moire (the beat between the screen's
  grid and the camera's, slow colour-fringed bands) and screen glare (a soft specular highlight that
  washes the picture towards white).

Every scene, live or attack, then goes through the camera of its domain (``capture``, a ``Domain``):
optics blur, sensor resolution (the picture sampled down and back up), white balance (colour
temperature as channel gains), sensor noise and JPEG compression. The four ``DOMAINS`` differ in all
five, as MSU-MFSD, CASIA-FASD, Replay-Attack and OULU-NPU differ in cameras and settings; each video
varies a little around its domain's setting. An attack returns its scene with the maps and parameters
that made it (``Attack``), so tests can check each trace on the pixels it names.

``write_spoof_benchmark`` writes the benchmark in the FAS domain layout (``data/fas.py``):
``root/<domain>/{train,test}/{real,spoof_print,spoof_replay}/<video>_frame_<t>.png``, other people in
every domain and split, one live, one print and one replay video per person.
"""
from __future__ import annotations

import io
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..demo import SPOOF_TARGET
from .fas import scale_saturation
from .forgery import _blur, _save_png, _to_uint8, real_video
from .synthetic import _smooth_noise, _write_json, benchmark_is_current

CLASS_FOLDERS = {"real": "real", "print": "spoof_print", "replay": "spoof_replay"}
MANIFEST_NAME = "spoof_manifest.json"
BENCHMARK_VERSION = 1
_REFERENCE_SIZE = 64.0  # pixel lengths below are drawn for 64-pixel pictures and scaled to the picture


@dataclass(frozen=True)
class Domain:
    """A camera: colour temperature (K; 6500 is neutral), Gaussian optics blur (sigma, px at 64 px),
    sensor resolution (share of the picture's pixels per side), sensor noise (sigma, grey levels) and
    JPEG quality."""
    kelvin: float
    blur: float
    resolution: float
    noise: float
    jpeg: int

    def gains(self, kelvin: float | None = None) -> np.ndarray:
        """RGB white-balance gains: warm light (low K) lifts red and cuts blue, cool light the reverse."""
        t = np.log(6500.0 / (self.kelvin if kelvin is None else kelvin))
        return np.array([np.exp(0.3 * t), 1.0, np.exp(-0.45 * t)], np.float32)


DOMAINS = {
    "webcam": Domain(kelvin=3300, blur=0.9, resolution=0.6, noise=4.0, jpeg=70),
    "phone": Domain(kelvin=8000, blur=0.35, resolution=1.0, noise=2.0, jpeg=92),
    "cctv": Domain(kelvin=5000, blur=1.3, resolution=0.5, noise=7.0, jpeg=45),
    "laptop": Domain(kelvin=6200, blur=0.6, resolution=0.75, noise=3.0, jpeg=80),
}
DEFAULT_TARGET = SPOOF_TARGET


@dataclass(frozen=True, eq=False)
class Attack:
    """An attack scene (float32 [H, W, 3], 0..255, before the camera), what made it, and its maps."""
    scene: np.ndarray
    info: dict
    maps: dict = field(default_factory=dict)  # named float32/bool [H, W] maps, for checking the pixels


# ----------------------------------------------------------------------------------------------
# attacks


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres (y, x)


def _curl(values: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``values`` [H, W, ...] resampled at fractional columns ``cols`` [W] (linear)."""
    c0 = np.floor(cols).astype(int)
    c1 = np.minimum(c0 + 1, values.shape[1] - 1)
    f = (cols - c0).reshape((1, -1) + (1,) * (values.ndim - 2))
    return values[:, c0] * (1 - f) + values[:, c1] * f


def print_attack(face: np.ndarray, rng: np.random.Generator, bend: bool | None = None) -> Attack:
    """``face`` (uint8 [S, S, 3]) printed on paper and held before the camera; see the module docstring.
    ``bend`` forces the sheet flat (False) or curled (True); by default half of the prints curl."""
    s = face.shape[0]
    scale = s / _REFERENCE_SIZE
    desaturate = rng.uniform(0.5, 0.7)
    black, white = rng.uniform(28, 48), rng.uniform(200, 225)
    period, angle, depth = rng.uniform(2.6, 3.4) * scale, rng.uniform(0.25, 1.3), rng.uniform(0.14, 0.22)
    texture_amp = rng.uniform(0.02, 0.04)
    sides = rng.random(4) < 0.5
    sides[rng.integers(4)] = True  # at least one margin shows
    margin = int(round(rng.uniform(0.07, 0.12) * s))
    curled = bool(rng.random() < 0.5) if bend is None else bool(bend)
    curl, shade = rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.35)
    texture = 1.0 + texture_amp * _smooth_noise(rng, s, 6)[..., 0]

    # the flat sheet: white paper, the photo shrunk inside the margins, inked through the dot screen
    top, bottom, left, right = (margin * int(k) for k in sides)
    photo = np.asarray(Image.fromarray(face).resize((s - left - right, s - top - bottom), Image.BILINEAR), np.float32)
    inked = black + (white - black) * scale_saturation(photo, desaturate) / 255.0
    y, x = _grid(s, s)
    u, v = np.cos(angle) * x + np.sin(angle) * y, -np.sin(angle) * x + np.cos(angle) * y
    dots = 1.0 - depth * (0.5 + 0.5 * np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period))
    border = np.ones((s, s), bool)
    border[top:s - bottom, left:s - right] = False
    halftone = np.where(border, 1.0, dots).astype(np.float32)
    sheet = np.full((s, s, 3), white, np.float32)
    sheet[top:s - bottom, left:s - right] = inked
    sheet = sheet * (halftone * texture)[..., None]
    shading = np.ones((s, s), np.float32)
    if curled:  # a cylinder seen from the front: columns crowd towards the sides, which turn from the light
        xn = x[0] / s * 2 - 1
        cols = np.clip((np.sin(xn * curl) / np.sin(curl) + 1) / 2 * s - 0.5, 0, s - 1)
        sheet, halftone, texture = (_curl(a, cols) for a in (sheet, halftone, texture))
        border = _curl(border.astype(np.float32), cols) > 0.5
        shading = np.broadcast_to(1.0 - shade * xn ** 2, (s, s)).astype(np.float32)
        sheet = sheet * shading[..., None]
    info = {"type": "print", "desaturate": float(desaturate), "black": float(black), "white": float(white),
            "halftone_period": float(period), "halftone_angle": float(angle), "halftone_depth": float(depth),
            "margins": [top, bottom, left, right], "bend": curled, "curl": float(curl), "shade": float(shade)}
    maps = {"border": border, "halftone": halftone.astype(np.float32), "shading": shading,
            "texture": texture.astype(np.float32)}
    return Attack(sheet.astype(np.float32), info, maps)


def replay_attack(face: np.ndarray, rng: np.random.Generator) -> Attack:
    """``face`` (uint8 [S, S, 3]) shown on a screen filmed by the camera; see the module docstring."""
    s = face.shape[0]
    scale = s / _REFERENCE_SIZE
    glow = rng.uniform(14, 28)
    tint = np.array([rng.uniform(0.92, 0.97), 1.0, rng.uniform(1.03, 1.08)], np.float32)
    pitch, gap, dark = rng.uniform(2.6, 3.4) * scale, rng.uniform(0.3, 0.45), rng.uniform(0.2, 0.35)
    phase = rng.uniform(0, 1, 2)
    moire_period, moire_angle = rng.uniform(9, 16) * scale, rng.uniform(0, np.pi)
    moire_amp, moire_phase, fringe = rng.uniform(0.08, 0.14), rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.2)
    glare_y, glare_x = rng.uniform(0.25, 0.75, 2) * s
    glare_sigma, glare_gain = rng.uniform(0.1, 0.18) * s, rng.uniform(0.45, 0.7)

    screen = np.clip((glow + (255.0 - glow) * face.astype(np.float32) / 255.0) * tint, 0, 255)
    # the screen's pixel grid, seen through the camera's pixels: the share of each camera pixel that
    # falls in a gap between screen pixels (4 x 4 sub-samples)
    sub = (np.arange(4 * s, dtype=np.float32) + 0.5) / 4
    gap_x = ((sub / pitch + phase[0]) % 1.0 < gap).reshape(s, 4).mean(1)
    gap_y = ((sub / pitch + phase[1]) % 1.0 < gap).reshape(s, 4).mean(1)
    grid = (1.0 - dark * (1.0 - (1.0 - gap_y[:, None]) * (1.0 - gap_x[None, :]))).astype(np.float32)
    y, x = _grid(s, s)
    wave = 2 * np.pi * (np.cos(moire_angle) * x + np.sin(moire_angle) * y) / moire_period + moire_phase
    moire = 1.0 + moire_amp * np.stack([np.cos(wave + c * fringe) for c in (-1, 0, 1)], axis=-1)
    glare = glare_gain * np.exp(-((x - glare_x) ** 2 + (y - glare_y) ** 2) / (2 * glare_sigma ** 2))
    lit = screen * grid[..., None] * moire
    scene = lit + (255.0 - lit) * glare[..., None]
    info = {"type": "replay", "glow": float(glow), "tint": tint.tolist(), "pitch": float(pitch), "gap": float(gap),
            "grid_darkness": float(dark), "moire_period": float(moire_period), "moire_angle": float(moire_angle),
            "moire_amplitude": float(moire_amp), "glare_centre": [float(glare_y), float(glare_x)],
            "glare_sigma": float(glare_sigma), "glare_gain": float(glare_gain)}
    return Attack(scene.astype(np.float32), info, {"grid": grid, "moire": moire[..., 1].astype(np.float32),
                                                    "glare": glare.astype(np.float32)})


# ----------------------------------------------------------------------------------------------
# the camera


def camera_settings(domain: Domain, rng: np.random.Generator) -> dict:
    """One video's camera: the domain's setting, varied a little."""
    return {"kelvin": domain.kelvin * rng.uniform(0.95, 1.05), "blur": domain.blur * rng.uniform(0.85, 1.15),
            "resolution": domain.resolution, "noise": domain.noise * rng.uniform(0.8, 1.2),
            "jpeg": int(np.clip(domain.jpeg + rng.integers(-4, 5), 5, 98))}


def capture(scene: np.ndarray, domain: Domain, settings: dict, rng: np.random.Generator) -> np.ndarray:
    """``scene`` (float or uint8 [S, S, 3]) as the domain's camera records it -> uint8 [S, S, 3]: blur,
    sensor resolution, white balance, noise (from ``rng``), JPEG."""
    s = scene.shape[0]
    img = _blur(scene.astype(np.float32), settings["blur"] * s / _REFERENCE_SIZE)
    low = max(int(round(settings["resolution"] * s)), 8)
    if low < s:
        small = [Image.fromarray(img[..., c], "F").resize((low, low), Image.BOX) for c in range(3)]
        img = np.stack([np.asarray(c.resize((s, s), Image.BILINEAR)) for c in small], axis=-1)
    img = img * domain.gains(settings["kelvin"])
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(settings["noise"])
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(img)).save(buffer, format="JPEG", quality=settings["jpeg"])
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


# ----------------------------------------------------------------------------------------------
# videos and the benchmark on disk

DEFAULT_IDENTITIES = {"train": 24, "test": 12}
_SPLIT_OFFSET = {"train": 0, "test": 500_000}


def _person(domain: str, split: str, index: int) -> int:
    """Different people in every domain and split."""
    return (list(DOMAINS).index(domain) + 1) * 1_000_000 + _SPLIT_OFFSET[split] + index


def make_video(kind: str, domain: str, seed: int, person: int, n_frames: int, size: int) -> list[np.ndarray]:
    """Frames (uint8 [size, size, 3]) of one video of ``person`` filmed by ``domain``'s camera: live
    (``kind`` "real"), or a print or replay attack showing the face of another recording of the person."""
    if kind not in CLASS_FOLDERS or domain not in DOMAINS:
        raise ValueError(f"kind must be one of {list(CLASS_FOLDERS)} and domain one of {list(DOMAINS)}")
    key = [seed, person, zlib.crc32(kind.encode())]
    camera = camera_settings(DOMAINS[domain], np.random.default_rng(key + [0]))
    if kind == "real":
        scenes = [f.image for f in real_video(seed, person, n_frames, size)]
    else:
        shown = real_video(seed, person, n_frames, size, session=1)
        # the attack's medium stays the same over the video (one seed): a print is one still photo, made
        # once; a replay plays the recording, frame by frame
        if kind == "print":
            scenes = [print_attack(shown[0].image, np.random.default_rng(key + [1])).scene] * len(shown)
        else:
            scenes = [replay_attack(f.image, np.random.default_rng(key + [1])).scene for f in shown]
    return [capture(scene, DOMAINS[domain], camera, np.random.default_rng(key + [2, t]))
            for t, scene in enumerate(scenes)]


def write_spoof_benchmark(root, seed: int = 0, size: int = 64, frames_per_video: int = 2,
                          identities: dict | None = None, domains=tuple(DOMAINS),
                          say: Callable[[str], None] | None = None) -> Path:
    """Write the synthetic FAS benchmark under ``root`` (one folder per domain) and return ``root``.

    A folder whose manifest matches is left as it is; one with another manifest is rewritten; a non-empty
    folder without one is refused (it may hold the user's data)."""
    identities = dict(DEFAULT_IDENTITIES if identities is None else identities)
    if set(identities) != set(_SPLIT_OFFSET) or any(int(n) != n or n < 2 for n in identities.values()):
        raise ValueError(f"identities must give train and test counts >= 2, got {identities}")
    if int(frames_per_video) != frames_per_video or frames_per_video < 1 or int(size) != size or size < 32:
        raise ValueError(f"frames_per_video must be >= 1 and size >= 32, got {frames_per_video}, {size}")
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; the synthetic domains are {list(DOMAINS)}")
    root = Path(root)
    wanted = {"generator": "fsfm_fast.data.spoof", "version": BENCHMARK_VERSION, "seed": int(seed), "size": int(size),
              "frames_per_video": int(frames_per_video), "identities": identities, "domains": list(domains)}
    manifest = root / MANIFEST_NAME
    if benchmark_is_current(manifest, wanted, "synthetic anti-spoofing benchmark", say):
        return root
    for domain in domains:
        shutil.rmtree(root / domain, ignore_errors=True)
        for split, count in identities.items():
            for kind, folder in CLASS_FOLDERS.items():
                out = root / domain / split / folder
                out.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    person = _person(domain, split, i)
                    for t, frame in enumerate(make_video(kind, domain, seed, person, frames_per_video, size)):
                        _save_png(frame, out / f"{domain}_p{person:07d}_frame_{t}.png")
    _write_json(manifest, wanted)
    return root
