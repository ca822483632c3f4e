"""Where dlib's model files are: inside the face-recognition-models package (a PyPI wheel), so that
preparation runs offline. They are located without importing ``face_recognition_models``, whose
``__init__`` needs ``pkg_resources``, which recent setuptools no longer ships."""
from __future__ import annotations

import importlib.util
from pathlib import Path

LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"  # dlib's 68-point landmark model
CNN_DETECTOR_MODEL = "mmod_human_face_detector.dat"  # dlib's CNN face detector


def model_path(name: str) -> Path:
    """The path of one of dlib's model files inside the face-recognition-models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"dlib's model {name} comes with the face-recognition-models package: "
                          "pip install 'fsfm_fast[prepare]'")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    raise ImportError(f"face-recognition-models is installed but holds no {name}")
