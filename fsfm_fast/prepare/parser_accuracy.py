"""How well a face parser (or detector) does on synthetic video frames, whose labels are exact.

``synthetic_crops`` runs the detector on moving-face frames and cuts the same square from the frame
and from its label map, so a parser's output on the crop can be scored against the generator's own
labels with ``RegionIoU``. Used by the tests and by ``benchmarks/bench_prepare.py``.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..data.synthetic_video import moving_face_frames
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
