"""Synthetic deepfakes: short "videos" of synthetic people, and procedural face manipulations that leave
the traces real forgeries leave.

A real video is one synthetic person (``face_params`` of ``synthetic.py``) filmed a few frames long: the
same face, textures and background in every frame, with a small jitter of head position, roll, yaw,
gaze and light, and fresh camera noise per frame. Each manipulation is a function of a real frame:

- ``face_swap``: the inner face of another person, aligned on the eyes and mouth, generated at a lower
  resolution, pasted with a partly corrected colour mismatch and a feathered seam (FaceSwap, DeepFakes);
- ``reenactment``: the mouth and eyes of another expression of the same person, re-rendered smooth
  with a slight colour drift (Face2Face, NeuralTextures);
- ``upsampling_artefacts``: the face region regenerated at half resolution and upsampled, leaving a
  checkerboard, or periodic spectral peaks (GAN and diffusion decoders, no blending);
- ``rerender``: the whole face re-rendered with smoothed texture and lost high frequencies.

Generated pixels carry no camera noise: a pasted or generated region is cleaner than the frame around
it, as in real forgeries. The face-swap and reenactment generators also leave their decoder's
fingerprint: the last x2 upsampling layer of a trained decoder gives each of the four output pixel
phases its own gain, the same pattern in every fake of that method (``SWAP_PHASES``,
``REENACT_PHASES``); the unseen upsampling type leaves other periodic patterns, and the re-render none.
Every manipulation returns its blending map ``alpha`` (0 = pixel untouched), so each fake can be
checked pixel by pixel against the real frame it came from.

A manipulation draws all its parameters from ``rng`` before touching pixels, so calling it on every
frame of a video with an rng seeded the same way gives the video one consistent manipulation.
``make_video`` does exactly that; ``write_forgery_benchmark`` writes a train/val/test benchmark in the
fine-tuning layout.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .synthetic import (HAIR, LEFT_EYE, LOWER_LIP, RIGHT_EYE, SKIN, UPPER_LIP, _write_json, benchmark_is_current,
                        draw_face, face_params, map_in_processes)

FORGERY_TYPES = ("face_swap", "reenactment", "upsampling", "rerender")
TRAIN_TYPES = ("face_swap", "reenactment")  # what the default benchmark trains on
VIDEO_KINDS = ("real",) + FORGERY_TYPES
FAKE_PREFIX = "fake_"  # class folder of a type: fake_<type>, labelled fake by the folder-name rule
MANIFEST_NAME = "forgery_manifest.json"
BENCHMARK_VERSION = 5
_FACE_LABELS = np.arange(SKIN, HAIR)  # skin and the inner features: 1..9
_MOUTH = (UPPER_LIP, UPPER_LIP + 1, LOWER_LIP)
# Decoder fingerprints (see _decoder_trace): the face-swap autoencoder upsamples with a stride-2
# transposed convolution whose overlap is uneven along both axes, (1 + s_y)(1 + s_x) with s = +-1 by
# parity (stripes and a weak checkerboard); the reenactment renderer with a sub-pixel convolution
# whose first phase is the brightest. The unseen generator's checkerboard is a third pattern.
SWAP_PHASES = np.array([[1.0, 0.0], [0.0, -1.0]])
REENACT_PHASES = np.array([[1.0, -1.0 / 3], [-1.0 / 3, -1.0 / 3]])
TRACE_STRENGTH = (0.08, 0.14)


@dataclass(frozen=True, eq=False)
class Frame:
    """One real frame: the picture, its parsing map, and what drew it (to draw the person again)."""
    image: np.ndarray  # uint8 [H, W, 3], with camera noise
    parsing: np.ndarray  # uint8 [H, W], LaPa-11 labels
    params: dict = field(repr=False)
    texture_seed: tuple = ()
    clean: np.ndarray | None = field(default=None, repr=False)  # float32 render before camera noise


@dataclass(frozen=True, eq=False)
class Forgery:
    """A manipulated frame: ``image = alpha * generated + (1 - alpha) * real``, rounded to uint8."""
    image: np.ndarray  # uint8 [H, W, 3]
    alpha: np.ndarray  # float32 [H, W] in [0, 1]; 0 where the real frame is untouched
    generated: np.ndarray  # float32 [H, W, 3], what was blended in
    info: dict


# ----------------------------------------------------------------------------------------------
# real frames


def identity_params(seed: int, identity: int, size: int) -> dict:
    """The face of person ``identity``: shape, colours, expression, base pose and light."""
    params = face_params(np.random.default_rng([seed, identity, 0]), size)
    # Camera noise is added per frame, after drawing: 2.7 to 5.9 grey levels, the sensor noise of a
    # lightly compressed video, which pasted or generated regions lack.
    params["camera_noise"] = 0.008 + 0.6 * params["noise"]
    params["noise"] = 0.0
    return params


def jitter(params: dict, rng: np.random.Generator) -> dict:
    """The same person a moment later: head moved by ~1.5% of the picture, rolled and turned a little,
    eyes moved, light direction and strength changed slightly."""
    p = dict(params)
    f = p["frame"]
    size_px = f.a / 0.26  # the face half-width is ~26% of the picture
    roll = float(np.arctan2(f.sin, f.cos)) + rng.uniform(-0.03, 0.03)
    p["frame"] = dataclasses.replace(f, cx=f.cx + rng.uniform(-0.015, 0.015) * size_px,
                                     cy=f.cy + rng.uniform(-0.015, 0.015) * size_px,
                                     cos=float(np.cos(roll)), sin=float(np.sin(roll)))
    p["yaw"] = p["yaw"] + rng.uniform(-0.04, 0.04)
    p["gaze"] = (p["gaze"][0] + rng.uniform(-0.05, 0.05), p["gaze"][1] + rng.uniform(-0.03, 0.03))
    light = p["light"] + rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    p["light"] = (light / np.linalg.norm(light)).astype(np.float32)
    p["ambient"] = float(np.clip(p["ambient"] + rng.uniform(-0.03, 0.03), 0.3, 0.8))
    return p


def another_expression(params: dict, rng: np.random.Generator) -> dict:
    """The same person, pose and light with another expression: mouth opening and smile, gaze, eye opening."""
    p = dict(params)
    open_now = p["mouth_open"] > 0
    p["mouth_open"] = 0.0 if open_now else rng.uniform(0.2, 0.45)  # an opening mouth, or a closing one
    p["smile"] = float(np.clip(p["smile"] + rng.choice([-1, 1]) * rng.uniform(0.08, 0.16), -0.08, 0.24))
    p["gaze"] = (rng.uniform(-0.25, 0.25), rng.uniform(-0.15, 0.1))
    p["eye_h"] = p["eye_h"] * rng.uniform(0.6, 0.8)
    return p


def render_frame(params: dict, texture_seed: tuple, rng: np.random.Generator | None, size: int) -> Frame:
    """Draw ``params`` with the textures of ``texture_seed``; add camera noise from ``rng`` (none if None)."""
    clean, parsing = draw_face(params, np.random.default_rng(list(texture_seed)), size)
    clean = clean.astype(np.float32)
    image = clean
    if rng is not None:
        image = clean + rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(params["camera_noise"] * 255)
    return Frame(_to_uint8(image), parsing, params, tuple(texture_seed), clean)


def real_video(seed: int, identity: int, n_frames: int, size: int = 128, session: int = 0) -> list[Frame]:
    """``n_frames`` frames of person ``identity``; another ``session`` is another recording (other
    background and hair textures, other jitter)."""
    params = identity_params(seed, identity, size)
    texture = (seed, identity, 1, session)
    return [render_frame(jitter(params, rng), texture, rng, size)
            for rng in (np.random.default_rng([seed, identity, 2, session, t]) for t in range(n_frames))]


def expression_frame(frame: Frame, rng: np.random.Generator) -> Frame:
    """``frame``'s person, pose and light with another expression, rendered clean (a renderer's output)."""
    return render_frame(another_expression(frame.params, rng), frame.texture_seed, None, frame.image.shape[0])


# ----------------------------------------------------------------------------------------------
# image helpers


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float image [H, W] or [H, W, C], edges reflected. The kernel is cut
    at 3 sigma, so a blurred mask is exactly 0 farther than that from the mask."""
    if sigma <= 0:
        return x.astype(np.float32, copy=True)
    r = max(int(np.ceil(3 * sigma)), 1)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = x.astype(np.float32, copy=True)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(2 * r + 1))
    return out


def _morph(mask: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    filt = ImageFilter.MaxFilter if grow else ImageFilter.MinFilter
    img = Image.fromarray(mask.astype(np.uint8) * 255).filter(filt(2 * radius + 1))
    return np.asarray(img) > 127


def _feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A soft blending map from a binary mask: 1 deep inside, 0 beyond 3 sigma outside, a ramp between."""
    alpha = _blur(mask.astype(np.float32), sigma)
    alpha[alpha < 1e-3] = 0.0
    alpha[alpha > 1 - 1e-3] = 1.0
    return alpha


def _blend(real: np.ndarray, generated: np.ndarray, alpha: np.ndarray, info: dict) -> Forgery:
    image = _to_uint8(alpha[..., None] * generated + (1 - alpha[..., None]) * real.astype(np.float32))
    image[alpha == 0] = real[alpha == 0]  # untouched pixels stay bit-exact
    return Forgery(image, alpha.astype(np.float32), generated.astype(np.float32), info)


def _centroid(parsing: np.ndarray, labels) -> np.ndarray | None:
    ys, xs = np.nonzero(np.isin(parsing, labels))
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5]) if xs.size else None


def _landmarks(parsing: np.ndarray) -> np.ndarray | None:
    """Pixel centres of the two eyes and the mouth, [3, 2] (x, y); None if one is not visible."""
    points = [_centroid(parsing, [LEFT_EYE]), _centroid(parsing, [RIGHT_EYE]), _centroid(parsing, _MOUTH)]
    return None if any(p is None for p in points) else np.stack(points)


def _face_region(parsing: np.ndarray, scale: float) -> np.ndarray:
    """Face pixels (skin and features) inside an ellipse around the inner features, ``scale`` times
    their extent: about the inner face at 1.2, the whole face at 1.8."""
    h, w = parsing.shape
    ys, xs = np.nonzero(np.isin(parsing, np.arange(2, 10)))  # brows, eyes, nose, lips, mouth
    face = np.isin(parsing, _FACE_LABELS)
    if xs.size == 0:
        return face
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    rx = max(xs.max() - xs.min(), 4) / 2 * scale
    ry = max(ys.max() - ys.min(), 4) / 2 * scale
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return face & (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the rotation + uniform scale + shift that best maps points ``src`` onto ``dst``."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    a = (s * d).sum()
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()
    norm = (s * s).sum()
    c, sn = a / norm, b / norm
    rot = np.array([[c, -sn], [sn, c]])
    return np.concatenate([rot, (md - rot @ ms)[:, None]], axis=1)


def _scale(frame_or_image) -> float:
    """Pixel lengths are drawn for 128-pixel pictures and scaled to the picture's size."""
    img = frame_or_image.image if isinstance(frame_or_image, Frame) else frame_or_image
    return img.shape[0] / 128.0


def _decoder_trace(phases: np.ndarray, shape: tuple[int, int], strength: float) -> np.ndarray:
    """The gain a generator's last x2 upsampling layer leaves on its output: one gain per output phase
    (row % 2, col % 2), ``1 + strength * phases`` tiled over the picture -> [H, W]. A method's decoder
    is one set of trained weights, so its phase pattern is the same in all its fakes (its fingerprint)."""
    h, w = shape
    return np.tile(1.0 + strength * phases, (h // 2 + 1, w // 2 + 1))[:h, :w].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# manipulations


def face_swap(target: Frame, donor: Frame, rng: np.random.Generator) -> Forgery:
    """``donor``'s inner face on ``target``: aligned on eyes and mouth (bilinear warp), produced at a
    lower resolution by a decoder that leaves its fingerprint, its colour only partly matched to the
    target's, blended through a feathered seam."""
    resolution = rng.uniform(0.4, 0.7)  # the generator's face size relative to the frame's
    strength = float(rng.uniform(*TRACE_STRENGTH))
    trace = _decoder_trace(SWAP_PHASES, target.parsing.shape, strength)
    correction = rng.uniform(0.0, 0.5)  # how much of the colour difference the blender removes
    tint = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    feather = rng.uniform(1.0, 2.0) * _scale(target)
    dst, src = _landmarks(target.parsing), _landmarks(donor.parsing)
    h, w = target.parsing.shape
    if dst is None or src is None:  # a feature hidden: align the face centres only
        dst = _centroid(target.parsing, _FACE_LABELS)[None]
        src = _centroid(donor.parsing, _FACE_LABELS)[None]
        matrix = np.array([[1.0, 0.0, src[0, 0] - dst[0, 0]], [0.0, 1.0, src[0, 1] - dst[0, 1]]])
    else:
        matrix = _similarity(dst, src)  # target pixel -> donor pixel, what PIL's AFFINE wants
    coeffs = tuple(matrix.reshape(-1))
    warped = Image.fromarray(donor.image).transform((w, h), Image.AFFINE, coeffs, Image.BILINEAR)
    low = (max(int(w * resolution), 8), max(int(h * resolution), 8))
    warped = np.asarray(warped.resize(low, Image.BOX).resize((w, h), Image.BILINEAR), np.float32)
    warped_parsing = np.asarray(Image.fromarray(donor.parsing).transform((w, h), Image.AFFINE, coeffs,
                                                                         Image.NEAREST))
    margin = int(np.ceil(3 * feather))
    region = (_face_region(target.parsing, 1.2)
              & _morph(np.isin(target.parsing, _FACE_LABELS), margin, grow=False)
              & _morph(np.isin(warped_parsing, _FACE_LABELS), margin, grow=False))
    if region.any():
        shift = target.image[region].astype(np.float32).mean(0) - warped[region].mean(0)
    else:
        shift = np.zeros(3, np.float32)
    generated = (warped + correction * shift) * tint * trace[..., None]
    return _blend(target.image, generated, _feather(region, feather),
                  {"type": "face_swap", "resolution": float(resolution), "colour_correction": float(correction),
                   "tint": tint.tolist(), "trace_strength": strength})


def reenactment(frame: Frame, expression: Frame, rng: np.random.Generator) -> Forgery:
    """The mouth and eyes of ``expression`` (the same person and pose with another expression, as
    ``expression_frame`` draws it) re-rendered smooth by a decoder that leaves its fingerprint, with a
    slight colour drift, blended into ``frame``."""
    smooth = rng.uniform(0.8, 1.4) * _scale(frame)
    gain = rng.uniform(0.9, 1.1, 3).astype(np.float32)  # the renderer's colour drift
    strength = float(rng.uniform(*TRACE_STRENGTH))
    trace = _decoder_trace(REENACT_PHASES, frame.parsing.shape, strength)
    feather = rng.uniform(1.0, 1.8) * _scale(frame)
    grow = int(np.ceil(3 * feather)) + 1  # the ramp stays outside the features: they are replaced whole
    both = np.stack([frame.parsing, expression.parsing])
    mouth = _morph(np.isin(both, _MOUTH).any(0), grow, grow=True)
    eyes = _morph(np.isin(both, (LEFT_EYE, RIGHT_EYE)).any(0), grow, grow=True)
    generated = _blur(expression.clean if expression.clean is not None else expression.image, smooth) * gain
    generated = generated * trace[..., None]
    return _blend(frame.image, generated, _feather(mouth | eyes, feather),
                  {"type": "reenactment", "smoothing_sigma": float(smooth), "gain": gain.tolist(),
                   "trace_strength": strength})


def upsampling_artefacts(frame: Frame, rng: np.random.Generator, mode: str | None = None) -> Forgery:
    """The face region regenerated by a decoder that upsamples: half resolution brought back up with
    a checkerboard (uneven transposed-convolution overlap), or with periodic spectral peaks."""
    mode = mode or ("checkerboard" if rng.random() < 0.5 else "spectral")
    feather = rng.uniform(1.0, 2.0) * _scale(frame)
    real = frame.image.astype(np.float32)
    h, w = real.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    if mode == "checkerboard":
        amplitude = rng.uniform(0.04, 0.08)
        even = real[: h - h % 2, : w - w % 2]
        low = even.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))  # the decoder's half-resolution map
        up = np.pad(low.repeat(2, 0).repeat(2, 1), ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        pattern = 1.0 + amplitude * np.where((yy + xx) % 2 == 0, 1.0, -1.0)
        generated = up * pattern[..., None]
        info = {"type": "upsampling", "mode": mode, "amplitude": float(amplitude)}
    elif mode == "spectral":
        peaks = []
        generated = _blur(real, 0.7 * _scale(frame))
        for _ in range(int(rng.integers(2, 4))):
            period = rng.uniform(2.0, 4.0)
            angle = rng.uniform(0, np.pi)
            amp = rng.uniform(3.0, 6.0)
            fx, fy = np.cos(angle) / period, np.sin(angle) / period  # cycles per pixel
            generated = generated + amp * np.cos(2 * np.pi * (fx * xx + fy * yy))[..., None]
            peaks.append((float(fx), float(fy), float(amp)))
        info = {"type": "upsampling", "mode": mode, "peaks": peaks}
    else:
        raise ValueError(f"mode must be 'checkerboard' or 'spectral', got {mode!r}")
    region = _face_region(frame.parsing, 1.5)
    return _blend(frame.image, generated, _feather(region, feather), info)


def rerender(frame: Frame, rng: np.random.Generator) -> Forgery:
    """The whole face re-rendered: texture smoothed and high frequencies lost, contrast slightly flattened."""
    sigma = rng.uniform(1.0, 1.8) * _scale(frame)
    flatten = rng.uniform(0.85, 0.95)
    feather = rng.uniform(1.5, 2.5) * _scale(frame)
    region = _face_region(frame.parsing, 1.8)
    smooth = _blur(frame.image.astype(np.float32), sigma)
    mean = smooth[region].mean(0) if region.any() else smooth.reshape(-1, 3).mean(0)
    generated = mean + (smooth - mean) * flatten
    return _blend(frame.image, generated, _feather(region, feather),
                  {"type": "rerender", "sigma": float(sigma), "contrast": float(flatten)})


# ----------------------------------------------------------------------------------------------
# videos


def _kind_rng(seed: int, identity: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([seed, identity, 3, VIDEO_KINDS.index(kind)])


def make_video(kind: str, seed: int, identity: int, n_frames: int, size: int = 128,
               donor: int | None = None) -> list[np.ndarray]:
    """Frames (uint8 [size, size, 3]) of a real video of person ``identity``, or of one manipulated
    ``kind`` of it (face swap: with person ``donor``, default ``identity + 1``). The fake videos are
    made from the frames of the real one (session 0), as FaceForensics++ makes its fakes."""
    if kind not in VIDEO_KINDS:
        raise ValueError(f"kind must be one of {VIDEO_KINDS}, got {kind!r}")
    frames = real_video(seed, identity, n_frames, size)
    donors = real_video(seed, identity + 1 if donor is None else donor, n_frames, size) if kind == "face_swap" else None
    return manipulate(kind, frames, seed, identity, donors)


def manipulate(kind: str, frames: list[Frame], seed: int, identity: int,
               donors: list[Frame] | None = None) -> list[np.ndarray]:
    """The frames of ``make_video`` from the real video's ``frames`` (and the donor's, for a face
    swap), so that a caller making several kinds of one person renders the real video once."""
    if kind == "real":
        return [f.image for f in frames]
    out = []
    for t, frame in enumerate(frames):
        rng = _kind_rng(seed, identity, kind)  # the same parameters for every frame of the video
        if kind == "face_swap":
            fake = face_swap(frame, donors[t], rng)
        elif kind == "reenactment":
            expression = expression_frame(frame, np.random.default_rng([seed, identity, 4]))
            fake = reenactment(frame, expression, rng)
        elif kind == "upsampling":
            fake = upsampling_artefacts(frame, rng)
        else:
            fake = rerender(frame, rng)
        out.append(fake.image)
    return out


# ----------------------------------------------------------------------------------------------
# the benchmark on disk

DEFAULT_IDENTITIES = {"train": 96, "val": 16, "test": 32}
SPLIT_TYPES = {"train": TRAIN_TYPES, "val": TRAIN_TYPES, "test": FORGERY_TYPES}
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # disjoint people per split


def _save_png(image: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image, "RGB").save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def _write_person(job: tuple) -> int:
    root, split, index, count, seed, size, n_frames = job
    person = _SPLIT_OFFSET[split] + index
    donor = _SPLIT_OFFSET[split] + (index + 1) % count  # another person of the same split
    split_dir = Path(root) / split
    name = f"id{person:07d}"
    recordings = [real_video(seed, person, n_frames, size, session) for session in (0, 1)]
    for session, frames in enumerate(recordings):  # two real recordings; the fakes are made from the first
        for t, frame in enumerate(frames):
            _save_png(frame.image, split_dir / "real" / f"{name}_s{session}_frame_{t}.png")
    donors = real_video(seed, donor, n_frames, size) if "face_swap" in SPLIT_TYPES[split] else None
    for kind in SPLIT_TYPES[split]:
        video = f"{name}_{donor:07d}" if kind == "face_swap" else name
        for t, img in enumerate(manipulate(kind, recordings[0], seed, person, donors)):
            _save_png(img, split_dir / f"{FAKE_PREFIX}{kind}" / f"{video}_frame_{t}.png")
    return index


def write_forgery_benchmark(root, seed: int = 0, size: int = 128, frames_per_video: int = 4,
                            identities: dict | None = None, workers: int | None = None,
                            say: Callable[[str], None] | None = None) -> Path:
    """Write the synthetic forgery benchmark under ``root`` in the fine-tuning layout and return ``root``:

        root/train/{real, fake_face_swap, fake_reenactment}/<video>_frame_<t>.png
        root/val/  {real, fake_face_swap, fake_reenactment}/...
        root/test/ {real, fake_face_swap, fake_reenactment, fake_upsampling, fake_rerender}/...

    Each person has two real videos and one fake video of each type of its split; people of the three
    splits are disjoint. A folder whose manifest matches is left as it is; a folder with a different
    manifest is rewritten; a non-empty folder without one is refused (it may hold the user's data).
    """
    identities = dict(DEFAULT_IDENTITIES if identities is None else identities)
    if set(identities) != set(SPLIT_TYPES) or any(int(n) != n or n < 2 for n in identities.values()):
        raise ValueError(f"identities must give train, val and test counts >= 2, got {identities}")
    if int(frames_per_video) != frames_per_video or frames_per_video < 1:
        raise ValueError(f"frames_per_video must be a positive integer, got {frames_per_video}")
    root = Path(root)
    wanted = {"generator": "fsfm_fast.data.forgery", "version": BENCHMARK_VERSION, "seed": int(seed),
              "size": int(size), "frames_per_video": int(frames_per_video), "identities": identities}
    manifest = root / MANIFEST_NAME
    if benchmark_is_current(manifest, wanted, "synthetic forgery benchmark", say):
        return root
    jobs = []
    for split, count in identities.items():
        shutil.rmtree(root / split, ignore_errors=True)
        for cls in ("real",) + tuple(FAKE_PREFIX + k for k in SPLIT_TYPES[split]):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        jobs += [(str(root), split, i, int(count), int(seed), int(size), int(frames_per_video)) for i in range(count)]
    map_in_processes(_write_person, jobs, workers, per_process=8, chunksize=4)
    _write_json(manifest, wanted)
    return root
