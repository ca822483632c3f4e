"""Preparing datasets from raw videos and images (``python -m fsfm_fast.prepare``), and the pieces a
caller can reuse: frame sampling, face detection and cropping, face parsing.

The heavy libraries (PyAV, dlib, OpenCV) come with ``pip install 'fsfm_fast[prepare]'`` and are
imported only when a function needs them.
"""
from .faces import (CROP_SCALE, CROP_SIZE, DETECTORS, Box, DlibCnnDetector, DlibHogDetector, FaceDetector,
                    OpenCVCascadeDetector, crop_face, crop_region, largest_face, make_detector)
from .splits import video_id
from .video import VideoError, count_frames, sample_frames, sample_indices

__all__ = ["CROP_SCALE", "CROP_SIZE", "DETECTORS", "Box", "DlibCnnDetector", "DlibHogDetector", "FaceDetector",
           "OpenCVCascadeDetector", "VideoError", "count_frames", "crop_face", "crop_region", "largest_face",
           "make_detector", "sample_frames", "sample_indices", "video_id"]
