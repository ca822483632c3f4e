"""Face detection and cropping: pluggable detectors that return boxes, the largest face, the square crop.

A detector is any object with a ``name`` (recorded in ``dataset.json``) and ``detect(image)`` taking
an RGB uint8 ``[H, W, 3]`` array and returning a list of ``Box``. Both built-in detectors carry their
model inside a PyPI wheel and never download anything:

- ``dlib_hog`` (default): dlib's HOG + linear SVM frontal face detector (``dlib-bin``), the
  reference's own detector. On the synthetic video faces it found more faces than the cascade, at a
  similar speed (``benchmarks/bench_prepare.py``; figures in ``benchmarks/RESULTS.md``).
- ``opencv_cascade``: OpenCV's Haar cascade ``haarcascade_frontalface_alt2`` (``opencv-python-headless``).

The crop follows the reference: a square of ``scale`` x max(w, h) centred on the largest face, clipped
to the image (so a face at the border gives a smaller, possibly non-square, region), resized to
``size`` x ``size``. No alignment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

DETECTORS = ("dlib_hog", "opencv_cascade")
CROP_SCALE = 1.3
CROP_SIZE = 224


@dataclass(frozen=True)
class Box:
    """A face box in pixels: ``x0 <= x < x1``, ``y0 <= y < y1`` (floats; may extend past the image)."""
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def as_list(self) -> list[float]:
        return [float(self.x0), float(self.y0), float(self.x1), float(self.y1)]


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Box]:
        ...


class DlibHogDetector:
    """dlib's frontal face detector (HOG features, linear SVM, image pyramid); ``upsample`` doubles the
    image that many times first, finding faces down to about 40 px instead of 80 px, four times slower."""

    def __init__(self, upsample: int = 0):
        try:
            import dlib
        except ImportError as exc:
            raise ImportError("the dlib_hog detector needs dlib: pip install 'fsfm_fast[prepare]' "
                              "(the dlib-bin wheel)") from exc
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.name = f"dlib_hog(upsample={self.upsample})"

    def detect(self, image: np.ndarray) -> list[Box]:
        rects = self._detector(np.ascontiguousarray(image), self.upsample)
        return [Box(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in rects]


class OpenCVCascadeDetector:
    """OpenCV's Viola-Jones Haar cascade (``haarcascade_frontalface_alt2.xml``, shipped in the wheel)."""

    def __init__(self, cascade: str = "haarcascade_frontalface_alt2.xml", min_neighbors: int = 3,
                 scale_factor: float = 1.1, min_size: int = 40):
        try:
            import cv2
        except ImportError as exc:
            raise ImportError("the opencv_cascade detector needs OpenCV: pip install 'fsfm_fast[prepare]'") from exc
        if not hasattr(cv2, "CascadeClassifier"):
            raise ImportError(f"OpenCV {cv2.__version__} has no Haar cascades (they left the main "
                              "package in OpenCV 5): pip install 'opencv-python-headless<5'")
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + cascade)
        if self._cascade.empty():
            raise ImportError(f"OpenCV could not load its bundled cascade {cascade}")
        self.min_neighbors, self.scale_factor, self.min_size = min_neighbors, scale_factor, min_size
        self.name = f"opencv_cascade({cascade.removesuffix('.xml')})"

    def detect(self, image: np.ndarray) -> list[Box]:
        gray = self._cv2.cvtColor(np.ascontiguousarray(image), self._cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(gray, self.scale_factor, self.min_neighbors,
                                               minSize=(self.min_size, self.min_size))
        return [Box(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in found]


def make_detector(name: str) -> FaceDetector:
    if name == "dlib_hog":
        return DlibHogDetector()
    if name == "opencv_cascade":
        return OpenCVCascadeDetector()
    raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}")


def largest_face(boxes: list[Box]) -> Box | None:
    """The box with the largest area (the reference keeps one face per frame), or None."""
    return max(boxes, key=lambda b: b.area, default=None)


def crop_region(box: Box, width: int, height: int, scale: float = CROP_SCALE) -> tuple[int, int, int, int]:
    """Integer ``(x0, y0, x1, y1)`` of the square of side ``scale`` x max(w, h) centred on ``box``,
    clipped to a ``width`` x ``height`` image; never empty for a box that overlaps the image."""
    side = scale * max(box.width, box.height)
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    x0, y0 = math.floor(cx - side / 2 + 0.5), math.floor(cy - side / 2 + 0.5)  # half-way rounds up
    x1, y1 = math.floor(cx + side / 2 + 0.5), math.floor(cy + side / 2 + 0.5)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {box.as_list()} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def crop_face(image: np.ndarray, box: Box, scale: float = CROP_SCALE, size: int = CROP_SIZE) -> np.ndarray:
    """The reference crop of ``box`` from an RGB uint8 image, resized (bicubic) to ``size`` x ``size``."""
    x0, y0, x1, y1 = crop_region(box, image.shape[1], image.shape[0], scale)
    region = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    return np.asarray(region.resize((size, size), Image.BICUBIC))


def box_in_crop(box: Box, region: tuple[int, int, int, int], size: int) -> Box:
    """``box`` in the coordinates of the ``size`` x ``size`` crop made from ``region``."""
    x0, y0, x1, y1 = region
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    return Box((box.x0 - x0) * sx, (box.y0 - y0) * sy, (box.x1 - x0) * sx, (box.y1 - y0) * sy)


def implied_box(size: int, scale: float = CROP_SCALE) -> Box:
    """The face box a crop made by ``crop_face`` holds when it was not clipped: its central 1/scale."""
    margin = size * (1.0 - 1.0 / scale) / 2
    return Box(margin, margin, size - margin, size - margin)
