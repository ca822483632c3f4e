"""Procedural LaPa-style parsing maps for the masking tests."""
from __future__ import annotations

import numpy as np
import torch


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def face_map(height: int = 224, width: int = None, seed: int = 0) -> np.ndarray:
    """uint8 [H, W]: background, a hair cap, a skin face, brows, eyes, nose and lips, with the
    parts jittered by the seed so different seeds give differently sized regions."""
    width = width or height
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height, endpoint=False),
                         np.linspace(0, 1, width, endpoint=False), indexing="ij")
    dy, dx = rng.uniform(-0.03, 0.03, size=2)
    s = rng.uniform(0.9, 1.1)
    yy, xx = (yy - 0.5 - dy) / s + 0.5, (xx - 0.5 - dx) / s + 0.5
    out = np.zeros((height, width), dtype=np.uint8)
    parts = [
        (10, (0.40, 0.50, 0.38, 0.36)),                        # hair cap behind the face
        (1, (0.56, 0.50, 0.36, 0.27)),                         # skin
        (2, (0.42, 0.38, 0.018, 0.07)), (3, (0.42, 0.62, 0.018, 0.07)),
        (4, (0.48, 0.38, 0.025, 0.055)), (5, (0.48, 0.62, 0.025, 0.055)),
        (6, (0.59, 0.50, 0.08, 0.035)),
        (7, (0.705, 0.50, 0.018, 0.09)), (8, (0.725, 0.50, 0.010, 0.07)),
        (9, (0.75, 0.50, 0.022, 0.085)),
    ]
    for label, (cy, cx, ry, rx) in parts:
        ry, rx = ry * rng.uniform(0.85, 1.15), rx * rng.uniform(0.85, 1.15)
        out[_ellipse(yy, xx, cy, cx, ry, rx)] = label
    return out


def face_batch(batch: int, height: int = 224, width: int = None, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.stack([face_map(height, width, seed + i) for i in range(batch)]))


def hair_map(size: int = 224) -> np.ndarray:
    """Almost all hair with a small face: the hair region alone exceeds M at ratio 0.75."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size, endpoint=False),
                         np.linspace(0, 1, size, endpoint=False), indexing="ij")
    out = np.full((size, size), 10, dtype=np.uint8)
    out[_ellipse(yy, xx, 0.55, 0.5, 0.12, 0.09)] = 1
    out[_ellipse(yy, xx, 0.52, 0.46, 0.01, 0.02)] = 4
    return out


def interior(labels: np.ndarray, r: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood holds one label: resampling cannot disagree there."""
    h, w = labels.shape
    pad = np.pad(labels, r, mode="edge")
    same = np.ones_like(labels, bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            same &= pad[dy:dy + h, dx:dx + w] == labels
    return same
