"""Face detection and cropping: pluggable detectors that return boxes, the largest face, the square crop.

A detector is any object with a ``name`` (recorded in ``dataset.json``) and ``detect(image)`` taking
an RGB uint8 ``[H, W, 3]`` array and returning a list of ``Box``. Every built-in detector carries its
model inside a PyPI wheel and never downloads anything:

- ``dlib_hog`` (default): dlib's HOG + linear SVM frontal face detector (``dlib-bin``), the
  reference's own detector, called as the reference calls it: with one upsampling, so that faces down
  to about 40 px are found (without it, about 80 px: none of the 49 px faces of a real 176x144
  talking-head video).
- ``dlib_cnn``: dlib's CNN (MMOD) face detector, ``mmod_human_face_detector.dat`` from the
  ``face-recognition-models`` wheel: finds faces HOG misses (heavily compressed video, turned heads)
  at about 50-100x HOG's cost on the CPU. Its boxes are mapped to HOG's framing (``CNN_TO_HOG``), so
  its crops are framed like the default's.
- ``opencv_cascade``: OpenCV's Haar cascade ``haarcascade_frontalface_alt2`` (``opencv-python-headless``).

Detection rates and speeds on real and synthetic faces are in ``benchmarks/RESULTS.md``.

The crop is the reference's: a square of ``scale`` x max(w, h) centred on the largest face. It is
never stretched: at the border the square is kept square and inside the image as the reference keeps
it, by moving its top-left corner into the image (the square slides right or down, the face is then
off-centre) and, if it still sticks out at the right or the bottom, shrinking its side to fit. Shrinking
rather than padding because the reference's data has no padded crops: a model fine-tuned on crops with
black bands would see an input the paper's models never saw. The 1.3x square cuts off the top of the
head on many photos (the face box runs from the brows to the chin); it is kept because the reference
crops so. No alignment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from .model_files import CNN_DETECTOR_MODEL, model_path

DETECTORS = ("dlib_hog", "dlib_cnn", "opencv_cascade")
# dlib detectors double the image this many times before detecting (the reference: 1)
DEFAULT_UPSAMPLE = 1
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

    def holds_centre_of(self, other: "Box") -> bool:
        cx, cy = (other.x0 + other.x1) / 2, (other.y0 + other.y1) / 2
        return self.x0 <= cx < self.x1 and self.y0 <= cy < self.y1

    def iou(self, other: "Box") -> float:
        inter = (max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
                 * max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0)))
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Box]:
        ...


class DlibHogDetector:
    """dlib's frontal face detector (HOG features, linear SVM, image pyramid); ``upsample`` doubles the
    image that many times first: 1 (the default, the reference's) finds faces down to about 40 px
    instead of 80 px, four times slower than 0."""

    def __init__(self, upsample: int = DEFAULT_UPSAMPLE):
        try:
            import dlib
        except ImportError as exc:
            raise ImportError("the dlib_hog detector needs dlib: pip install 'fsfm_fast[prepare]' "
                              "(the dlib-bin wheel)") from exc
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = _check_upsample(upsample)
        self.name = f"dlib_hog(upsample={self.upsample})"

    def detect(self, image: np.ndarray) -> list[Box]:
        rects = self._detector(np.ascontiguousarray(image), self.upsample)
        return [Box(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in rects]


def _check_upsample(upsample) -> int:
    if int(upsample) != upsample or not 0 <= upsample <= 3:
        raise ValueError(f"upsample must be 0, 1, 2 or 3 (times the image is doubled), got {upsample!r}")
    return int(upsample)


# dlib's CNN box -> the HOG box of the same face: the centre moved by (dx, dy) x side and the side scaled
# by ``scale`` (side: the CNN box's larger side). HOG's boxes are a little larger and lower than the
# CNN's. Medians over the 37 real faces both detectors found at one upsampling (bench_prepare.py --real
# prints the fit and its spread; figures in benchmarks/RESULTS.md).
CNN_TO_HOG = {"scale": 1.08, "dx": 0.078, "dy": 0.043}


class DlibCnnDetector:
    """dlib's CNN face detector (max-margin object detection, ``mmod_human_face_detector.dat``); boxes
    mapped to HOG's framing (``CNN_TO_HOG``). ``upsample`` as for HOG: 1 finds faces down to about 40 px.
    Measured on a 2-core CPU machine at one upsampling: about 1 s per 176x144 frame, 6-12 s per
    512-640 px photo; dlib-bin's wheels are built without CUDA."""

    def __init__(self, upsample: int = DEFAULT_UPSAMPLE):
        try:
            import dlib
        except ImportError as exc:
            raise ImportError("the dlib_cnn detector needs dlib: pip install 'fsfm_fast[prepare]' "
                              "(the dlib-bin wheel)") from exc
        self._detector = dlib.cnn_face_detection_model_v1(str(model_path(CNN_DETECTOR_MODEL)))
        self.upsample = _check_upsample(upsample)
        self.name = f"dlib_cnn(upsample={self.upsample})"

    def detect(self, image: np.ndarray) -> list[Box]:
        return [cnn_to_hog_framing(box) for box in self.detect_unmapped(image)]

    def detect_unmapped(self, image: np.ndarray) -> list[Box]:
        """The CNN's own boxes (what ``CNN_TO_HOG`` was fitted on)."""
        found = self._detector(np.ascontiguousarray(image), self.upsample)
        return [Box(d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1) for d in found]


def cnn_to_hog_framing(box: Box, framing: dict | None = None) -> Box:
    """The box HOG would give for the face dlib's CNN boxed as ``box`` (``framing``: ``CNN_TO_HOG``)."""
    f = framing or CNN_TO_HOG
    side = max(box.width, box.height)
    cx = (box.x0 + box.x1) / 2 + f["dx"] * side
    cy = (box.y0 + box.y1) / 2 + f["dy"] * side
    half = f["scale"] * side / 2
    return Box(cx - half, cy - half, cx + half, cy + half)


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


def make_detector(name: str, upsample: int = DEFAULT_UPSAMPLE) -> FaceDetector:
    """The detector called ``name``; ``upsample`` applies to the dlib detectors (the cascade's smallest
    face is its ``min_size``, 40 px)."""
    if name == "dlib_hog":
        return DlibHogDetector(upsample)
    if name == "dlib_cnn":
        return DlibCnnDetector(upsample)
    if name == "opencv_cascade":
        return OpenCVCascadeDetector()
    raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}")


def largest_face(boxes: list[Box]) -> Box | None:
    """The box with the largest area (the reference keeps one face per frame), or None."""
    return max(boxes, key=lambda b: b.area, default=None)


def crop_region(box: Box, width: int, height: int, scale: float = CROP_SCALE) -> tuple[int, int, int, int]:
    """Integer ``(x0, y0, x1, y1)`` of the square of side ``scale`` x max(w, h) centred on ``box``, kept
    square and inside a ``width`` x ``height`` image: its top-left corner is moved into the image, then
    its side shrunk to fit the right and bottom edges (see the module notes). Always square; an error
    for a box that leaves no square inside the image."""
    side = max(1, math.floor(scale * max(box.width, box.height) + 0.5))
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    x0 = max(math.floor(cx - side / 2 + 0.5), 0)  # half-way rounds up
    y0 = max(math.floor(cy - side / 2 + 0.5), 0)
    side = min(side, width - x0, height - y0)
    if side <= 0 or box.x1 <= 0 or box.y1 <= 0 or box.x0 >= width or box.y0 >= height:
        raise ValueError(f"face box {box.as_list()} lies outside the {width}x{height} image")
    return x0, y0, x0 + side, y0 + side


def crop_face(image: np.ndarray, box: Box, scale: float = CROP_SCALE, size: int = CROP_SIZE) -> np.ndarray:
    """The reference crop of ``box`` from an RGB uint8 image (a square region, ``crop_region``), resized
    (bicubic) to ``size`` x ``size``: both axes by the same factor."""
    x0, y0, x1, y1 = crop_region(box, image.shape[1], image.shape[0], scale)
    region = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    return np.asarray(region.resize((size, size), Image.BICUBIC))


def box_in_crop(box: Box, region: tuple[int, int, int, int], size: int) -> Box:
    """``box`` in the coordinates of the ``size`` x ``size`` crop made from ``region``."""
    x0, y0, x1, y1 = region
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    return Box((box.x0 - x0) * sx, (box.y0 - y0) * sy, (box.x1 - x0) * sx, (box.y1 - y0) * sy)


def implied_box(size: int, scale: float = CROP_SCALE) -> Box:
    """The face box a crop made by ``crop_face`` holds when it did not touch the border: its central 1/scale."""
    margin = size * (1.0 - 1.0 / scale) / 2
    return Box(margin, margin, size - margin, size - margin)
