"""Procedural synthetic faces with exact LaPa-11 parsing maps.

Each face is painted back to front (background, clothes, hair behind the head, neck, ears, head,
hair in front, nose, eyes, brows, mouth) into an RGB canvas and a label canvas at the same time, so
the parsing map is exactly the set of pixels each part painted last. Every shape is a vectorised
inequality over a pixel grid; textures are smooth noise fields, hair strands and sphere shading, so
that masked reconstruction has structure to learn without being trivial.

Left/right follow the subject: label 2/4 (left brow/eye) is the subject's left, which lies on the
image's right in a frontal face.

The face of index ``i`` in a written dataset depends only on ``(seed, i)``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ..runtime.cli import available_cpus
from .labels import (
    BACKGROUND,
    HAIR,
    INNER_MOUTH,
    LEFT_BROW,
    LEFT_EYE,
    LOWER_LIP,
    NOSE,
    RIGHT_BROW,
    RIGHT_EYE,
    SKIN,
    UPPER_LIP,
)

# Bump when the drawing changes: a dataset written by another version is not silently reused.
GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic_manifest.json"
PROGRESS_NAME = "synthetic_manifest.partial.json"
_STEM = "synth_{:07d}"
_STEM_RE = re.compile(r"^synth_(\d{7})$")
_MIN_SIZE = 32

_SKIN_TONES = np.array([[0.97, 0.82, 0.72], [0.90, 0.70, 0.57], [0.80, 0.58, 0.43],
                        [0.64, 0.44, 0.30], [0.46, 0.30, 0.20], [0.30, 0.19, 0.13]], np.float32)
_HAIR_COLOURS = np.array([[0.05, 0.04, 0.04], [0.17, 0.11, 0.07], [0.35, 0.22, 0.12], [0.55, 0.38, 0.22],
                          [0.82, 0.68, 0.42], [0.55, 0.20, 0.08], [0.62, 0.62, 0.62], [0.90, 0.88, 0.84]],
                         np.float32)
_HAIR_WEIGHTS = np.array([0.26, 0.22, 0.16, 0.1, 0.1, 0.06, 0.06, 0.04])
_IRIS_COLOURS = np.array([[0.25, 0.14, 0.07], [0.40, 0.25, 0.12], [0.28, 0.42, 0.62], [0.33, 0.45, 0.28],
                          [0.45, 0.50, 0.55], [0.12, 0.08, 0.05]], np.float32)
_SHORT, _MEDIUM, _LONG = range(3)


# ----------------------------------------------------------------------------------------------
# noise and geometry helpers


@lru_cache(maxsize=64)
def _interp_matrix(n: int, cells: int) -> np.ndarray:
    """[n, cells] smoothstep interpolation weights: noise on a coarse lattice -> n samples."""
    pos = (np.arange(n, dtype=np.float64) + 0.5) / n * (cells - 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, cells - 2)
    f = pos - i0
    f = f * f * (3.0 - 2.0 * f)  # smoothstep: no visible lattice creases
    m = np.zeros((n, cells), np.float32)
    rows = np.arange(n)
    m[rows, i0] = 1.0 - f
    m[rows, i0 + 1] += f
    return m


def _smooth_noise(rng: np.random.Generator, n: int, cells: int, channels: int = 1) -> np.ndarray:
    """Band-limited noise [n, n, channels], roughly unit variance at the lattice points."""
    lattice = rng.standard_normal((channels, cells, cells), dtype=np.float32)
    m = _interp_matrix(n, cells)
    return np.stack([m @ g @ m.T for g in lattice], axis=-1)


def _ellipse(x, y, rx, ry) -> np.ndarray:
    return (x / rx) ** 2 + (y / ry) ** 2 <= 1.0


def _mix(a, b, t):
    return a + (b - a) * t


@dataclass
class _Frame:
    """Face frame: origin at the face centre, u across (image-right when frontal), v down, both
    normalised by the face half-width ``a`` and half-height ``b``; rotated by the roll angle."""
    cx: float
    cy: float
    cos: float
    sin: float
    a: float
    b: float

    def to_px(self, u: float, v: float) -> tuple[float, float]:
        du, dv = u * self.a, v * self.b
        return self.cx + self.cos * du - self.sin * dv, self.cy + self.sin * du + self.cos * dv


class _Canvas:
    def __init__(self, size: int):
        self.size = size
        self.image = np.zeros((size, size, 3), np.float32)
        self.label = np.zeros((size, size), np.uint8)
        coords = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
        self.xs, self.ys = coords[None, :], coords[:, None]

    def window(self, x: float, y: float, radius: float):
        """Slices of the square window around (x, y) clipped to the canvas, and its pixel centres."""
        x0, x1 = max(int(x - radius), 0), min(int(x + radius) + 2, self.size)
        y0, y1 = max(int(y - radius), 0), min(int(y + radius) + 2, self.size)
        if x0 >= x1 or y0 >= y1:
            return None
        return (slice(y0, y1), slice(x0, x1)), self.xs[:, x0:x1], self.ys[y0:y1, :]

    def paint(self, win, mask: np.ndarray, colour: np.ndarray, label: int | None) -> None:
        """Colour the masked pixels of a window; ``colour`` is one RGB triple or a field over the window."""
        np.copyto(self.image[win], colour, where=mask[..., None])
        if label is not None:
            np.copyto(self.label[win], np.uint8(label), where=mask)

    def shade(self, win, mask: np.ndarray, factor) -> None:
        """Multiply the masked pixels' colour (by a scalar or a field over the window), labels untouched."""
        img = self.image[win]
        factor = np.asarray(factor, np.float32)
        np.multiply(img, factor[..., None] if factor.ndim == 2 else factor, out=img, where=mask[..., None])


def _local(xs, ys, ox, oy, cos, sin, sx=1.0, sy=1.0):
    """Pixel centres in a frame at (ox, oy) rotated by (cos, sin), scaled by (sx, sy)."""
    dx, dy = xs - ox, ys - oy
    return (cos * dx + sin * dy) / sx, (cos * dy - sin * dx) / sy


# ----------------------------------------------------------------------------------------------
# parameters


def _sample_params(rng: np.random.Generator, size: int) -> dict:
    """Everything random about one face, drawn in a fixed order so a seed reproduces it."""
    u = rng.uniform
    p = {}
    a = u(0.22, 0.3) * size
    cx, cy = size * (0.5 + u(-0.06, 0.06)), size * (0.52 + u(-0.04, 0.05))
    roll = u(-0.28, 0.28)
    p["frame"] = _Frame(cx=cx, cy=cy, cos=float(np.cos(roll)), sin=float(np.sin(roll)), a=a, b=a * u(1.22, 1.38))
    p["yaw"] = u(-0.3, 0.3)
    p["jaw"] = u(0.05, 0.22)

    t = u(0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    skin = _mix(_SKIN_TONES[i], _SKIN_TONES[i + 1], t - i) * u(0.92, 1.06, 3).astype(np.float32)
    p["skin"] = np.clip(skin, 0.05, 1.0).astype(np.float32)
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_WEIGHTS)] * u(0.8, 1.15, 3)
    if u() < 0.06:  # dyed
        hair = u(0.1, 0.9, 3)
    p["hair"] = np.clip(hair, 0.02, 1.0).astype(np.float32)
    p["bg"] = u(0.0, 1.0, (2, 3)).astype(np.float32)
    p["cloth"] = u(0.05, 0.95, 3).astype(np.float32)
    p["iris"] = (_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * u(0.8, 1.2, 3)).astype(np.float32)
    p["lips"] = np.clip(_mix(p["skin"], np.array([0.75, 0.3, 0.32], np.float32), u(0.25, 0.6))
                        * u(0.8, 1.0), 0, 1).astype(np.float32)

    p["hair_style"] = int(rng.choice(3, p=[0.3, 0.35, 0.35]))
    p["hair_side"] = u(0.03, 0.09) if p["hair_style"] == _SHORT else u(0.08, 0.24)
    p["hair_top"] = u(0.03, 0.09) if p["hair_style"] == _SHORT else u(0.08, 0.2)
    p["hairline"] = u(-0.78, -0.5)
    p["hairline_curve"] = u(0.25, 0.6)
    p["fringe"] = u(0.0, 0.25) if u() < 0.4 else 0.0
    p["fringe_waves"], p["fringe_phase"] = u(2.0, 6.0), u(0, 2 * np.pi)
    p["hair_length"] = u(1.0, 1.9)
    p["hair_spread"] = u(0.0, 0.35)
    p["hair_ragged"], p["hair_tufts"] = u(0.0, 0.05), float(rng.integers(10, 40))

    p["neck"] = u() < 0.85
    p["neck_width"] = u(0.45, 0.62)
    p["clothes"] = u() < 0.8
    p["ears"] = u() < 0.85

    p["eye_v"] = u(-0.08, 0.06)
    p["eye_sep"] = u(0.36, 0.46)
    p["eye_w"] = u(0.16, 0.22)
    p["eye_h"] = u(0.065, 0.1)
    p["eye_tilt"] = u(-0.12, 0.12)
    p["gaze"] = (u(-0.25, 0.25), u(-0.15, 0.1))
    p["brow_gap"] = u(0.16, 0.25)
    p["brow_w"] = u(0.22, 0.3)
    p["brow_t"] = u(0.035, 0.065)
    p["brow_arch"] = u(0.05, 0.3)
    p["nose_v"] = u(0.3, 0.4)
    p["nose_top"] = u(0.05, 0.09)
    p["nose_bottom"] = u(0.15, 0.23)
    p["mouth_v"] = p["nose_v"] + u(0.2, 0.28)
    p["mouth_w"] = u(0.27, 0.38)
    p["smile"] = u(-0.06, 0.2)
    p["mouth_open"] = u(0.08, 0.45) if u() < 0.4 else 0.0
    p["upper_lip"] = u(0.055, 0.09)
    p["lower_lip"] = u(0.08, 0.13)
    p["teeth"] = u() < 0.7

    p["light"] = np.array([u(-0.7, 0.7), u(-0.6, 0.3), 1.0], np.float32)
    p["light"] /= np.linalg.norm(p["light"])
    p["ambient"] = u(0.45, 0.7)
    p["noise"] = u(0.004, 0.025)
    return p


def _yawed(u0: float, yaw: float) -> tuple[float, float]:
    """A feature at horizontal position u0 on a face turned by ``yaw``: new position and foreshortening."""
    phi = float(np.arcsin(np.clip(u0, -0.95, 0.95)))
    return float(np.sin(phi + yaw)), float(max(np.cos(phi + yaw) / np.cos(phi), 0.35))


# ----------------------------------------------------------------------------------------------
# layers, back to front


def _draw_background(c: _Canvas, p: dict, rng: np.random.Generator) -> None:
    n = c.size
    ang = rng.uniform(0, 2 * np.pi)
    g = np.clip((np.cos(ang) * (c.xs / n - 0.5) + np.sin(ang) * (c.ys / n - 0.5)) + 0.5, 0, 1)
    c.image[:] = _mix(p["bg"][0], p["bg"][1], g[..., None])
    c.image += 0.07 * _smooth_noise(rng, n, int(rng.integers(3, 7)), 3)
    for _ in range(int(rng.integers(0, 4))):  # background clutter: still background
        x, y = rng.uniform(0, n, 2)
        rx, ry = rng.uniform(0.05, 0.3, 2) * n
        box = rng.random() < 0.5
        colour, alpha = rng.uniform(0, 1, 3).astype(np.float32), np.float32(rng.uniform(0.3, 0.9))
        win, xs, ys = c.window(x, y, max(rx, ry))
        inside = (np.abs(xs - x) <= rx) & (np.abs(ys - y) <= ry) if box else _ellipse(xs - x, ys - y, rx, ry)
        c.paint(win, inside, _mix(c.image[win], colour, alpha), None)


def _hair_field(c: _Canvas, p: dict, crown: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hair colour with strands radiating from the crown, warped by smooth noise."""
    warp = _smooth_noise(rng, c.size, 6)[..., 0]
    strands = np.sin(crown * rng.uniform(50, 140) + 1.5 * warp)
    fine = np.sin(crown * rng.uniform(200, 400) + 3.0 * warp)
    tone = 0.8 + 0.13 * strands + 0.07 * fine + 0.06 * _smooth_noise(rng, c.size, 5)[..., 0]
    return p["hair"] * tone[..., None]


def _skin_field(c: _Canvas, p: dict, rng: np.random.Generator) -> np.ndarray:
    blotch = 0.05 * _smooth_noise(rng, c.size, 7)
    tint = 0.015 * _smooth_noise(rng, c.size, 9, 3)
    return (p["skin"] * (1.0 + blotch) + tint).astype(np.float32)


def _face_uv(c: _Canvas, f: _Frame):
    return _local(c.xs, c.ys, f.cx, f.cy, f.cos, f.sin, f.a, f.b)


def _head_mask(u, v, jaw):
    w = 1.0 - jaw * np.clip(v, 0, None) ** 2  # narrower towards the chin
    return (u / w) ** 2 + v ** 2 <= 1.0


def _hair_envelope(u, v, crown, p):
    """The volume the hair fills around the head; its outline wobbles with the angle around the crown."""
    side, top = 1.0 + p["hair_side"], p["hair_top"]
    ragged = 1.0 + p["hair_ragged"] * np.sin(crown * p["hair_tufts"] + p["fringe_phase"])
    return (u / side) ** 2 + ((v + top) / (1.0 + top)) ** 2 <= ragged


def _draw_clothes(c, p, u, v, rng):
    if not p["clothes"]:
        return
    top = rng.uniform(1.2, 1.45)
    shoulders = _ellipse(u, v - top - 1.0, rng.uniform(2.0, 3.0), 1.0)
    depth, nw = rng.uniform(0.2, 0.6), p["neck_width"]
    if rng.random() < 0.5:  # round neckline
        neckline = _ellipse(u, v - top, nw, depth)
    else:  # V neckline
        neckline = (np.abs(u) < nw) & (v < top + depth * (1.0 - np.abs(u) / nw))
    mask = shoulders & ~(neckline & p["neck"])
    folds = 1.0 + 0.12 * _smooth_noise(rng, c.size, 5)
    c.paint(np.s_[:, :], mask, p["cloth"] * folds, BACKGROUND)  # LaPa has no clothes label


def _draw_back_hair(c, p, u, v, hair, envelope):
    if p["hair_style"] != _LONG:
        return
    side = 1.0 + p["hair_side"]
    width = side + p["hair_spread"] * np.clip(v, 0, None)
    bottom = p["hair_length"] - 0.25 * (u / side) ** 4 + 0.04 * np.sin(u * 9.0)
    mask = (np.abs(u) <= width) & (v >= -p["hair_top"]) & (v <= bottom)
    c.paint(np.s_[:, :], mask | envelope, hair * 0.85, HAIR)  # the back lies in shadow


def _draw_neck(c, p, u, v, skin):
    if not p["neck"]:
        return
    mask = (np.abs(u) <= p["neck_width"]) & (v >= 0.3)
    below_chin = np.clip((v - 0.85) / 0.5, 0, 1)
    shade = (0.72 + 0.18 * below_chin) * (1.0 - 0.15 * (u / p["neck_width"]) ** 2)
    c.paint(np.s_[:, :], mask, skin * shade[..., None], SKIN)


def _draw_ears(c, p, u, v, skin):
    if not p["ears"]:
        return
    f = p["frame"]
    for side in (1.0, -1.0):
        # features move towards +u as yaw grows, turning the -u ear towards the camera
        visible = float(np.clip(1.0 - 2.5 * side * p["yaw"], 0.2, 1.6))
        found = c.window(*f.to_px(side * 0.97, 0.12), max(0.14 * visible * f.a, 0.2 * f.b) + 2)
        if found is None:
            continue
        win = found[0]
        eu, ev = (u[win] - side * 0.97) / (0.14 * visible), (v[win] - 0.12) / 0.2
        mask = eu ** 2 + ev ** 2 <= 1.0
        shade = 0.8 + 0.15 * np.clip(np.abs(eu), 0, 1)  # darker ear canal in the middle
        c.paint(win, mask, skin[win] * shade[..., None], SKIN)


def _head_window(c, p):
    f = p["frame"]
    return c.window(f.cx, f.cy, max(f.a, f.b) + 2)[0]


def _draw_head(c, p, u, v, skin):
    win = _head_window(c, p)
    u, v = u[win], v[win]
    head = _head_mask(u, v, p["jaw"])
    cheeks = 0.04 * np.exp(-((np.abs(u) - 0.5) ** 2 + (v - 0.3) ** 2) / 0.04)
    blush = np.array([0.5, -0.6, -0.5], np.float32) * cheeks[..., None]
    c.paint(win, head, skin[win] + blush, SKIN)


def _draw_front_hair(c, p, u, v, hair, brow_top, envelope):
    hairline = p["hairline"] + p["hairline_curve"] * u ** 2
    if p["fringe"]:
        hairline = hairline + p["fringe"] * (0.5 + 0.5 * np.sin(u * p["fringe_waves"] * np.pi + p["fringe_phase"]))
    # keep the forehead hair above the brows so every face keeps both of them
    hairline = np.where(np.abs(u) < 0.9, np.minimum(hairline, brow_top - 0.06), hairline)
    cap = envelope & (v < hairline)
    c.paint(np.s_[:, :], cap, hair, HAIR)


def _draw_nose(c, p, skin):
    f, yaw = p["frame"], p["yaw"]
    top = f.to_px(np.sin(yaw) * 0.9, p["eye_v"] + 0.02)
    bot = f.to_px(np.sin(yaw) * 1.2, p["nose_v"])
    axis = np.array([bot[0] - top[0], bot[1] - top[1]])
    length = float(np.hypot(*axis))
    ca, sa = axis / length
    wt, wb = p["nose_top"] * f.a, p["nose_bottom"] * f.a * max(np.cos(yaw), 0.7)
    win = c.window((top[0] + bot[0]) / 2, (top[1] + bot[1]) / 2, length / 2 + 2 * wb)
    if win is None:
        return
    win, xs, ys = win
    # along = t*length from the bridge down the nose axis, across in pixels (positive: image right)
    t, across = _local(xs, ys, top[0], top[1], ca, sa)
    t, across = t / length, -across
    width = wt + (wb - wt) * np.clip(t, 0, 1) ** 2
    body = (t >= 0) & (t <= 1) & (np.abs(across) <= width)
    along = t * length
    tip = _ellipse(across, along - 0.87 * length, wb * 0.78, 0.14 * length + 2)
    alae = _ellipse(np.abs(across) - wb * 0.92, along - 0.9 * length, wb * 0.42, 0.09 * length + 1.5)
    mask = body | tip | alae
    side = np.clip(across / (wb + 1e-6), -1.5, 1.5)
    shade = 1.0 + 0.14 * side * np.sign(p["light"][0] + 1e-3)  # the side facing the light is brighter
    shade = shade * (1.0 + 0.08 * np.exp(-(across / (0.4 * wt + 0.5)) ** 2))  # lit bridge
    shade = shade * (1.0 - 0.25 * np.clip((t - 0.92) / 0.1, 0, 1))  # underside
    colour = skin[win] * shade[..., None]
    nostrils = _ellipse(np.abs(across) - wb * 0.48, along - 0.95 * length, wb * 0.26, 0.045 * length + 1)
    colour[nostrils] *= 0.35
    c.paint(win, mask, colour, NOSE)
    # shadow under the nose is skin
    under = _ellipse(across, along - 1.08 * length, wb * 1.2, 0.08 * length + 1.5) & (c.label[win] == SKIN)
    c.shade(win, under, 0.88)


def _draw_eye(c, p, side: float, rng: np.random.Generator) -> None:
    f = p["frame"]
    u0, squash = _yawed(side * p["eye_sep"], p["yaw"])
    ex, ey = f.to_px(u0, p["eye_v"])
    w = p["eye_w"] * f.a * squash
    ht, hb = p["eye_h"] * f.a, p["eye_h"] * f.a * 0.7
    found = c.window(ex, ey, 2.2 * max(w, ht) + 2)
    if found is None:
        return
    win, xs, ys = found
    ang = side * p["eye_tilt"]
    cos, sin = f.cos * np.cos(ang) - f.sin * np.sin(ang), f.sin * np.cos(ang) + f.cos * np.sin(ang)
    along, q = _local(xs, ys, ex, ey, cos, sin)
    s = along / w
    lid = np.clip(1.0 - s ** 2, 0, None)
    skin_here = c.label[win] == SKIN
    # socket and crease: shading on skin only
    socket = _ellipse(s, q, 1.5, 2.6 * ht)
    c.shade(win, socket & skin_here, 0.9 + 0.05 * np.clip(np.abs(q) / (2.6 * ht), 0, 1))
    crease = (np.abs(s) < 0.95) & (np.abs(q + ht * lid ** 0.7 * 1.45) < max(0.6, 0.12 * ht))
    c.shade(win, crease & skin_here, 0.82)

    eye = (np.abs(s) < 1.0) & (q >= -ht * lid) & (q <= hb * lid)
    sclera = np.array([0.93, 0.91, 0.88], np.float32) * rng.uniform(0.85, 1.0)
    colour = np.broadcast_to(sclera, q.shape + (3,)).copy()
    colour = _mix(colour, np.array([0.85, 0.55, 0.55], np.float32), (0.45 * s ** 4)[..., None])
    r = 0.95 * ht
    gx, gy = p["gaze"]
    d = np.hypot(along - gx * w, q - gy * ht)
    colour[d <= r] = p["iris"] * (0.75 + 0.35 * np.clip(d[d <= r] / r, 0, 1))[..., None]
    colour[d <= 0.42 * r] = 0.04
    highlight = np.hypot(along - gx * w + 0.35 * r, q - gy * ht + 0.4 * r) <= max(0.7, 0.2 * r)
    colour[highlight] = 0.97
    lid_dist = q + ht * lid  # distance below the upper lid
    colour *= (1.0 - 0.35 * np.clip(1.0 - lid_dist / (0.45 * ht + 1e-6), 0, 1))[..., None]
    colour[lid_dist < max(0.8, 0.16 * ht)] = p["hair"] * 0.4  # lashes
    c.paint(win, eye, colour, LEFT_EYE if side > 0 else RIGHT_EYE)


def _brow_top(p: dict) -> float:
    """Highest v the brows reach (their arch included), used to keep the fringe above them."""
    return p["eye_v"] - p["brow_gap"] - (p["brow_arch"] * p["brow_w"] + 1.2 * p["brow_t"]) * p["frame"].a / p["frame"].b


def _draw_brow(c, p, side: float, rng: np.random.Generator) -> None:
    f = p["frame"]
    u0, squash = _yawed(side * (p["eye_sep"] + 0.02), p["yaw"])
    bx, by = f.to_px(u0, p["eye_v"] - p["brow_gap"])
    w = p["brow_w"] * f.a * squash
    thick = p["brow_t"] * f.a
    found = c.window(bx, by, w + 2 * thick + p["brow_arch"] * w + 2)
    if found is None:
        return
    win, xs, ys = found
    along, q = _local(xs, ys, bx, by, f.cos, f.sin)
    s = along / w
    outer = side * s  # +1 at the outer end of either brow
    centre = -p["brow_arch"] * w * (1.0 - ((outer - 0.25) / 1.25) ** 2)
    half = thick * (1.0 - 0.45 * (outer + 1.0) / 2.0) * np.sqrt(np.clip(1.0 - s ** 6, 0, None))
    mask = (np.abs(s) <= 1.0) & (np.abs(q - centre) <= half)
    hairs = 0.85 + 0.15 * np.sin(along * 2.2 + q * 1.1 + rng.uniform(0, 6))
    colour = _mix(p["skin"], p["hair"] * 0.75, 0.8) * hairs[..., None]
    c.paint(win, mask, colour, LEFT_BROW if side > 0 else RIGHT_BROW)


def _draw_mouth(c, p) -> None:
    f = p["frame"]
    mx, my = f.to_px(np.sin(p["yaw"]) * 0.95, p["mouth_v"])
    w = p["mouth_w"] * f.a * max(np.cos(p["yaw"]), 0.75)
    tu, tl = p["upper_lip"] * f.a, p["lower_lip"] * f.a
    gap = p["mouth_open"] * w
    found = c.window(mx, my, w + tu + tl + gap + 4)
    if found is None:
        return
    win, xs, ys = found
    along, q = _local(xs, ys, mx, my, f.cos, f.sin)
    s = along / w
    inside = np.abs(s) < 1.0
    taper = np.clip(1.0 - s ** 2, 0, None)
    line = -p["smile"] * w * s ** 2  # corners rise when smiling
    half_gap = 0.5 * gap * taper ** 0.7 + 0.75  # a closed mouth keeps a thin dark line
    bow = 1.0 - 0.3 * np.exp(-(s / 0.13) ** 2)  # cupid's bow dip
    upper_edge = line - half_gap - tu * np.sqrt(taper) * bow
    lower_edge = line + half_gap + tl * taper ** 0.6
    rel = q - line
    inner = inside & (np.abs(rel) <= half_gap)
    upper = inside & (q < line - half_gap) & (q >= upper_edge)
    lower = inside & (q > line + half_gap) & (q <= lower_edge)
    # skin shadow under the lower lip, painted first so the lips overlay it
    chin_shadow = inside & (q > lower_edge) & (q < lower_edge + 0.6 * tl) & (c.label[win] == SKIN)
    c.shade(win, chin_shadow, 0.88)

    ridges = 1.0 + 0.05 * np.sin(along * 1.7)
    c.paint(win, upper, p["lips"] * (0.85 * ridges)[..., None], UPPER_LIP)
    shine = 1.0 + 0.18 * np.exp(-((q - line - half_gap - 0.45 * tl) / (0.25 * tl + 0.5)) ** 2 - (s / 0.4) ** 2)
    c.paint(win, lower, p["lips"] * (ridges * shine)[..., None], LOWER_LIP)
    colour = np.array([0.22, 0.07, 0.07], np.float32) * (0.5 + 0.5 * np.clip(np.abs(s), 0, 1))[..., None]
    if p["teeth"] and gap > 3:
        teeth = (rel < -half_gap + 0.45 * gap * taper) & (np.abs(s) < 0.75)
        gaps = 0.8 + 0.2 * np.cos(along[teeth] * 0.9) ** 2  # darker lines between teeth
        colour[teeth] = np.array([0.9, 0.87, 0.78], np.float32) * gaps[..., None]
    c.paint(win, inner, colour, INNER_MOUTH)


def _shade_head(c, p, u, v) -> None:
    """Lambert shading of the head (and whatever covers it) as a sphere."""
    win = _head_window(c, p)
    u, v = u[win], v[win]
    lx, ly, lz = p["light"]
    nz = np.sqrt(np.clip(1.0 - u ** 2 - v ** 2, 0.0, 1.0))
    lambert = np.clip(u * lx + v * ly + nz * lz, 0, 1)
    c.shade(win, _head_mask(u, v, p["jaw"]), p["ambient"] + (1.0 - p["ambient"]) * lambert)


def _finish(c, p, rng) -> np.ndarray:
    img = c.image
    # light anti-aliasing of the painted edges ([1, 2, 1] / 4 both ways)
    img[1:-1] = 0.25 * (img[:-2] + img[2:]) + 0.5 * img[1:-1]
    img[:, 1:-1] = 0.25 * (img[:, :-2] + img[:, 2:]) + 0.5 * img[:, 1:-1]
    n = c.size
    lx, ly, _ = p["light"]
    gradient = 255.0 * (1.0 + 0.12 * (lx * (c.xs / n - 0.5) + ly * (c.ys / n - 0.5)))  # light over the whole picture
    noise = rng.standard_normal((n, n, 3), dtype=np.float32)
    noise *= np.float32(p["noise"] * 255.0)
    img *= gradient[..., None]
    img += noise
    img += np.float32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


def _check_rng_size(rng, size) -> int:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if int(size) != size or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE}, got {size}")
    return int(size)


def render_face(rng: np.random.Generator, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic face: (image uint8 [size, size, 3], parsing uint8 [size, size]) with LaPa-11 labels."""
    size = _check_rng_size(rng, size)
    return draw_face(face_params(rng, size), rng, size)


def face_params(rng: np.random.Generator, size: int = 224) -> dict:
    """The shape, colours, pose, expression and lighting of one face (``render_face`` = this, then
    ``draw_face``). A caller may change entries (``frame`` pose, ``yaw``, ``light``, ``ambient``,
    ``gaze``, ``smile``, ``mouth_open``, ``eye_h``, ``noise``, ...) to draw the same person again in
    another pose, light or expression."""
    return _sample_params(rng, _check_rng_size(rng, size))


def draw_face(params: dict, rng: np.random.Generator, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Paint a face of ``face_params``; ``rng`` draws its textures (hair strands, skin, background,
    sensor noise), so the same params and rng state give the same picture."""
    size = _check_rng_size(rng, size)
    p = params
    c = _Canvas(size)
    u, v = _face_uv(c, p["frame"])
    crown = np.arctan2(v + 1.3, u)  # angle around a point above the head
    envelope = _hair_envelope(u, v, crown, p)
    _draw_background(c, p, rng)
    hair, skin = _hair_field(c, p, crown, rng), _skin_field(c, p, rng)
    _draw_back_hair(c, p, u, v, hair, envelope)
    _draw_neck(c, p, u, v, skin)
    _draw_clothes(c, p, u, v, rng)
    _draw_ears(c, p, u, v, skin)
    _draw_head(c, p, u, v, skin)
    _draw_front_hair(c, p, u, v, hair, _brow_top(p), envelope)
    _draw_nose(c, p, skin)
    for side in (1.0, -1.0):
        _draw_eye(c, p, side, rng)
        _draw_brow(c, p, side, rng)
    _draw_mouth(c, p)
    _shade_head(c, p, u, v)
    return _finish(c, p, rng), c.label


# ----------------------------------------------------------------------------------------------
# dataset writer


def _face_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _paths(root: Path, index: int) -> tuple[Path, Path]:
    stem = _STEM.format(index)
    return root / "images" / f"{stem}.png", root / "parsing_maps" / f"{stem}.npy"


def _write_one(job: tuple[str, int, int, int]) -> int:
    root, index, size, seed = job
    image, parsing = render_face(_face_rng(seed, index), size)
    img_path, map_path = _paths(Path(root), index)
    # write-then-rename: a killed run leaves either a whole file or none
    tmp = img_path.with_name(img_path.name + ".tmp")
    # zlib's run-length strategy (3): about twice as fast as the default at level 1, and smaller
    Image.fromarray(image, "RGB").save(tmp, format="PNG", compress_level=1, compress_type=3)
    os.replace(tmp, img_path)
    tmp = map_path.with_name(map_path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, parsing, allow_pickle=False)
    os.replace(tmp, map_path)
    return index


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _same_faces(a: dict, b: dict) -> bool:
    """Whether two manifests describe the same face for every index they share."""
    return all(a.get(k) == b.get(k) for k in ("generator", "version", "size", "seed"))


def benchmark_is_current(manifest: Path, wanted: dict, what: str, say: Callable[[str], None] | None = None) -> bool:
    """Whether a synthetic benchmark's folder already holds what ``wanted`` describes (its ``manifest``
    says so); if not, the stale manifest is removed so that the caller rewrites the folder. A non-empty
    folder without a manifest is someone else's: refused. ``say`` is told which it is (reusing or
    writing), so that a resumed run does not announce a write it does not do."""
    root = manifest.parent
    if _read_manifest(manifest) == wanted:
        if say:
            say(f"reusing the {what} in {root}")
        return True
    if not manifest.is_file() and root.is_dir() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty and holds no {manifest.name}: choose an empty folder for the {what}")
    manifest.unlink(missing_ok=True)
    if say:
        say(f"writing the {what} to {root}")
    return False


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _check_foreign(root: Path) -> None:
    """Refuse to write synthetic faces into a folder holding other images: they would be mixed."""
    for sub in ("images", "parsing_maps"):
        folder = root / sub
        if not folder.is_dir():
            continue
        foreign = [f.name for f in folder.iterdir() if not f.name.endswith(".tmp") and not _STEM_RE.match(f.stem)]
        if foreign:
            raise ValueError(f"{folder} holds files that are not synthetic faces ({len(foreign)}, "
                             f"e.g. {sorted(foreign)[:3]}): choose an empty or synthetic-only folder")


def map_in_processes(fn, jobs: list, workers: int | None = None, per_process: int = 32, chunksize: int = 16) -> None:
    """Call ``fn(job)`` for every job (results dropped), in up to ``workers`` processes (default: every
    available CPU) when there are at least ``per_process`` jobs for each, in this process otherwise."""
    n_proc = min(workers or available_cpus(), max(len(jobs) // per_process, 1))
    if n_proc > 1:
        # fork starts workers without re-importing torch; elsewhere the platform default
        method = "fork" if "fork" in get_all_start_methods() else None
        with get_context(method).Pool(n_proc) as pool:
            for _ in pool.imap_unordered(fn, jobs, chunksize=chunksize):
                pass
    else:
        for job in jobs:
            fn(job)


def write_synthetic_dataset(root, num_images: int, size: int = 224, seed: int = 0,
                            workers: int | None = None, say: Callable[[str], None] | None = None) -> Path:
    """Write ``num_images`` faces in the reference layout under ``root`` and return ``root``.

    Idempotent: a folder whose manifest matches the parameters is left alone. A run records its
    parameters in a progress file first and writes the manifest last, so an interrupted run is
    completed by the next call, reusing the faces already written when they come from the same
    (seed, size); faces of unknown origin are rewritten. ``workers``: processes to render with
    (default: every available CPU when there is enough work). ``say`` is told whether the faces are
    reused or written.
    """
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images}")
    if int(size) != size or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE}, got {size}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    num_images, size, seed = int(num_images), int(size), int(seed)
    root = Path(root)
    manifest_path, progress_path = root / MANIFEST_NAME, root / PROGRESS_NAME
    wanted = {"generator": "fsfm_fast.data.synthetic", "version": GENERATOR_VERSION,
              "num_images": num_images, "size": size, "seed": seed}
    old = _read_manifest(manifest_path) if manifest_path.exists() else None
    if old == wanted:
        if say:
            say(f"reusing the {num_images} synthetic faces in {root}")
        return root
    if old is not None and not _same_faces(old, wanted):
        raise ValueError(f"{root} holds a different synthetic dataset ({old}); "
                         f"asked for {wanted}: use another folder or delete this one")
    _check_foreign(root)
    if old is None:
        old = _read_manifest(progress_path) if progress_path.exists() else None
    reuse = old is not None and _same_faces(old, wanted)
    if say:
        say(f"writing {num_images} synthetic faces to {root}")
    root.mkdir(parents=True, exist_ok=True)
    _write_json(progress_path, wanted)
    manifest_path.unlink(missing_ok=True)
    for sub in ("images", "parsing_maps"):
        (root / sub).mkdir(exist_ok=True)
        for f in (root / sub).iterdir():
            match = _STEM_RE.match(f.stem)
            if f.name.endswith(".tmp") or (match and (not reuse or int(match.group(1)) >= num_images)):
                f.unlink()  # leftovers of a killed run, other faces, or faces beyond a smaller request
    todo = [i for i in range(num_images) if not all(q.is_file() for q in _paths(root, i))]
    map_in_processes(_write_one, [(str(root), i, size, seed) for i in todo], workers, per_process=32, chunksize=16)
    _write_json(manifest_path, wanted)
    progress_path.unlink()
    return root
