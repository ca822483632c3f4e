"""The vocabularies that the data, the ops and the preparation verb share, each defined here once.

Parsing maps use the LaPa-11 labels (the reference's face parser). A flip swaps the left/right labels
(2<->3 brows, 4<->5 eyes): the labels name the subject's side, and in a mirrored picture the part now on
the other side of the image is the mirrored subject's other side, so without the swap flipped samples
would contradict the labelling convention. CRFR-P masking groups left and right together, so the swap
never changes a mask. The compiled masking kernels hard-code the same 11 labels (``csrc/``, ``kernels/``).

Prepared fine-tuning data are ``<split>/<class>/<video>_frame_<i>.png``: the split names and the mark
between a video's name and its frame number are written by ``prepare`` and read by ``data.labelled``.
"""
from __future__ import annotations

import numpy as np

NUM_LABELS = 11
(BACKGROUND, SKIN, LEFT_BROW, RIGHT_BROW, LEFT_EYE, RIGHT_EYE, NOSE,
 UPPER_LIP, INNER_MOUTH, LOWER_LIP, HAIR) = range(NUM_LABELS)

# mirror image: left and right brows and eyes trade places (a 256-entry table, so any uint8 map indexes it)
FLIP_LABELS = np.arange(256, dtype=np.uint8)
FLIP_LABELS[[LEFT_BROW, RIGHT_BROW, LEFT_EYE, RIGHT_EYE]] = [RIGHT_BROW, LEFT_BROW, RIGHT_EYE, LEFT_EYE]

SPLITS = ("train", "val", "test")
FRAME_MARK = "_frame_"
