"""Short synthetic videos of moving synthetic faces, with their per-frame LaPa-11 labels.

A video shows one face of ``render_face`` (so its parts and labels are the generator's) cut out along
its labels and composited onto a cluttered background, drifting, turning a little in the image plane
and moving towards and away from the camera. Two things make it look like a camera picture to a
frontal face detector: the face is turned upright first (the generator's random roll of up to 16
degrees, measured from the eye centres, is undone, then a gentle sway of a few degrees is added), and
the exposure is set on the face (a camera's face-priority auto exposure) so that dark skin tones are
not rendered a few grey levels above black. Labels move with the pixels (nearest neighbour), so every
frame keeps exact ground truth for the face detector and parser tests.

``write_synthetic_videos`` writes a demo set: ``real/`` videos of one identity each, and ``fake/``
videos in which the inner face (skin and features inside the face) of a second identity replaces the
first one's in every frame, a crude face swap that gives the fine-tuning layout two classes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .forgery import VIDEO_KINDS, manipulate, real_video
from .synthetic import BACKGROUND, HAIR, LEFT_EYE, RIGHT_EYE, SKIN, _Canvas, _draw_background, render_face

FACE_RENDER_SIZE = 224
_EXPOSURE_TARGET = 135.0  # mean grey level of the face after exposure
_SWAY_DEG = 4.0


def _upright_angle(labels: np.ndarray) -> float:
    """Roll of a rendered face in degrees (counter-clockwise), from the line through its eye centres."""
    ys_l, xs_l = np.nonzero(labels == LEFT_EYE)
    ys_r, xs_r = np.nonzero(labels == RIGHT_EYE)
    if len(xs_l) == 0 or len(xs_r) == 0:
        return 0.0
    # the subject's left eye lies on the image's right
    return float(np.degrees(np.arctan2(ys_l.mean() - ys_r.mean(), xs_l.mean() - xs_r.mean())))


def _affine(angle_deg: float, scale: float, centre_out: tuple[float, float], centre_in: float) -> tuple:
    """PIL's inverse-affine coefficients: output pixel -> face-render pixel, for a face rotated by
    ``-angle_deg`` (undoing a roll of ``angle_deg``), scaled and centred at ``centre_out``."""
    t = np.radians(angle_deg)
    c, s = np.cos(t) / scale, np.sin(t) / scale
    ox, oy = centre_out
    # input = R(angle) / scale @ (output - centre_out) + centre_in
    return (c, -s, centre_in - c * ox + s * oy, s, c, centre_in - s * ox - c * oy)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    canvas = _Canvas(max(width, height))
    _draw_background(canvas, {"bg": rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32)}, rng)
    return np.clip(canvas.image[:height, :width] * 255.0 + 0.5, 0, 255)


def _motion(rng: np.random.Generator, num_frames: int, width: int, height: int, face_scale: float):
    """Per frame (centre x, centre y, scale, sway angle): a smooth path that keeps the face inside."""
    t = np.arange(num_frames) / max(num_frames, 1)
    phase = rng.uniform(0, 2 * np.pi, 4)
    scale = face_scale * (1.0 + 0.08 * np.sin(2 * np.pi * t + phase[0]))
    reach = 0.5 * FACE_RENDER_SIZE * scale.max()  # half the face render's side, scaled
    free_x, free_y = max(width / 2 - 0.7 * reach, 0.0), max(height / 2 - 0.75 * reach, 0.0)
    cx = width / 2 + 0.6 * free_x * np.sin(2 * np.pi * t + phase[1])
    cy = height / 2 + 0.4 * free_y * np.sin(2 * np.pi * t + phase[2])
    sway = _SWAY_DEG * np.sin(2 * np.pi * t + phase[3])
    return cx, cy, scale, sway


def _composite(face: np.ndarray, labels: np.ndarray, background: np.ndarray, coeffs: tuple
               ) -> tuple[np.ndarray, np.ndarray]:
    h, w = background.shape[:2]
    moved = np.asarray(Image.fromarray(face).transform((w, h), Image.AFFINE, coeffs, Image.BILINEAR))
    moved_labels = np.asarray(Image.fromarray(labels).transform((w, h), Image.AFFINE, coeffs, Image.NEAREST))
    person = moved_labels != BACKGROUND
    frame = np.where(person[..., None], moved.astype(np.float32), background)
    on_face = (moved_labels >= SKIN) & (moved_labels < HAIR)
    if on_face.any():  # face-priority auto exposure
        frame *= np.clip(_EXPOSURE_TARGET / max(float(frame[on_face].mean()), 1.0), 0.7, 3.0)
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8), np.where(person, moved_labels, BACKGROUND).astype(np.uint8)


def moving_face_frames(seed: int, num_frames: int, width: int = 320, height: int = 240,
                       face_scale: float = 1.0, face: tuple[np.ndarray, np.ndarray] | None = None,
                       faces: list[tuple[np.ndarray, np.ndarray]] | None = None
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (RGB uint8 [height, width, 3]) and labels (uint8 [height, width]) of one moving face.

    ``face``: a rendered ``(image, labels)`` pair at 224 px to animate instead of the seed's own face
    (the seed still draws the background and the motion); ``faces``: one such pair per frame, for a
    face that changes from frame to frame (each turned upright by its own labels). Faces are about
    ``face_scale`` x 100 to 135 px wide: dlib's HOG detector needs about 80 px.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even (video encoders need it), got {width}x{height}")
    if faces is not None and len(faces) != num_frames:
        raise ValueError(f"faces must hold one (image, labels) pair per frame: {len(faces)} for {num_frames} frames")
    rng = np.random.default_rng([seed, 1])
    if faces is None:
        faces = [face if face is not None else render_face(np.random.default_rng([seed, 0]), FACE_RENDER_SIZE)]
    background = _background(rng, width, height)
    rolls = [_upright_angle(labels) for _, labels in faces]
    frames, maps = [], []
    for t, (cx, cy, scale, sway) in enumerate(zip(*_motion(rng, num_frames, width, height, face_scale))):
        image, labels = faces[t % len(faces)]
        coeffs = _affine(rolls[t % len(rolls)] + sway, scale, (cx, cy), FACE_RENDER_SIZE / 2)
        frame, frame_labels = _composite(image, labels, background, coeffs)
        frames.append(frame)
        maps.append(frame_labels)
    return frames, maps


def swap_inner_face(target: tuple[np.ndarray, np.ndarray], source: tuple[np.ndarray, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``target`` face render with the inner face of ``source`` (their skin and parts where both have
    a face) pasted in: a crude face swap whose labels are those of the pasted pixels."""
    t_img, t_lab = target
    s_img, s_lab = source
    inner = (t_lab >= SKIN) & (t_lab < HAIR) & (s_lab >= SKIN) & (s_lab < HAIR)
    # keep the target's own skin tone at the seam: shift the source's colours to the target's skin mean
    t_skin, s_skin = t_lab == SKIN, s_lab == SKIN
    shift = t_img[t_skin].mean(0) - s_img[s_skin].mean(0) if t_skin.any() and s_skin.any() else 0.0
    pasted = np.clip(s_img.astype(np.float32) + shift, 0, 255).astype(np.uint8)
    return np.where(inner[..., None], pasted, t_img), np.where(inner, s_lab, t_lab).astype(np.uint8)


def write_synthetic_videos(root, num_videos: int = 3, num_fakes: int = 0, num_frames: int = 16, width: int = 320,
                           height: int = 240, fps: int = 25, seed: int = 0) -> list[Path]:
    """Write ``num_videos`` real videos (``<root>/real/synth_video_<k>.mp4``) and ``num_fakes`` face-swapped
    ones (``<root>/fake/synth_swap_<k>.mp4``); returns their paths. Deterministic in ``seed``."""
    root = Path(root)
    paths = []
    for k in range(num_videos):
        frames, _ = moving_face_frames(seed * 1000 + k, num_frames, width, height)
        paths.append(write_video(root / "real" / f"synth_video_{k:03d}.mp4", frames, fps))
    for k in range(num_fakes):
        target_seed, source_seed = seed * 1000 + 500 + k, seed * 1000 + 700 + k
        swapped = swap_inner_face(render_face(np.random.default_rng([target_seed, 0]), FACE_RENDER_SIZE),
                                  render_face(np.random.default_rng([source_seed, 0]), FACE_RENDER_SIZE))
        frames, _ = moving_face_frames(target_seed, num_frames, width, height, face=swapped)
        paths.append(write_video(root / "fake" / f"synth_swap_{k:03d}.mp4", frames, fps))
    return paths


def write_forgery_videos(root, people: int = 1, num_frames: int = 8, composite: bool = True, size: int = FACE_RENDER_SIZE,
                         width: int = 320, height: int = 240, fps: int = 8, seed: int = 0,
                         first_person: int = 3_000_000) -> list[tuple[Path, str]]:
    """For each of ``people`` synthetic people of the forgery generator (``forgery.py``; numbered from
    ``first_person``, apart from the fine-tuning benchmark's), a real video and one video of each
    manipulation: ``<root>/<kind>/<kind>_<k>.mp4``; the fakes are made frame by frame from the real
    frames. ``composite``: the generator's 224 px frames become a moving face on a cluttered background
    (``width`` x ``height``), as a camera would film a person; otherwise the video is the generator's
    frames themselves, drawn at ``size`` px. Returns ``(path, kind)`` pairs, kind "real" or a manipulation."""

    root = Path(root)
    written = []
    for k in range(people):
        person = first_person + k
        render = FACE_RENDER_SIZE if composite else size
        real = real_video(seed, person, num_frames, render)  # every kind is made from these frames
        donors = real_video(seed, person + 1, num_frames, render)  # make_video's default donor
        labels = [f.parsing for f in real]  # the fakes have the real frames' geometry: these labels cut them out
        for kind in VIDEO_KINDS:
            frames = manipulate(kind, real, seed, person, donors)
            if composite:
                frames, _ = moving_face_frames(seed * 1000 + k, num_frames, width, height, faces=list(zip(frames, labels)))
            written.append((write_video(root / kind / f"{kind}_{k}.mp4", frames, fps), kind))
    return written


def write_video(path, frames, fps: int = 25, *, codec: str = "libx264", crf: int = 18, keyframe_interval: int = 12
                ) -> Path:
    """Encode RGB uint8 frames ``[H, W, 3]`` (all the same size, even sides for yuv420p) to ``path``.

    Written to a temporary name and renamed, so a killed run never leaves a truncated video.
    ``keyframe_interval`` keeps seeking cheap in short test videos.
    """
    try:
        import av  # PyAV is an optional extra, needed only here
    except ImportError as exc:
        raise ImportError("writing videos needs PyAV: pip install 'fsfm_fast[prepare]' (or pip install av)") from exc
    frames = list(frames)
    if not frames:
        raise ValueError("write_video needs at least one frame")
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"frame size {w}x{h}: width and height must be even for yuv420p video")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(keyframe_interval)}
            for image in frames:
                if image.shape != (h, w, 3) or image.dtype != np.uint8:
                    raise ValueError(f"every frame must be uint8 [{h}, {w}, 3], got {image.dtype} {image.shape}")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
