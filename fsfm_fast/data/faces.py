"""What every face dataset shares, whatever its storage (reference folders, shards, DALI).

The check of a parsing map (LaPa-11 labels, ``data.labels``), the ``(index, epoch)`` sample key, the
seeded augmentation draw, the transform that moves an image and its map together (a flip swaps the
left/right labels), the record of a sample that could not be used, and the collate that drops such
samples (counted and named).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .labels import FLIP_LABELS, NUM_LABELS

# --augment's random resized crop: the share of the image's area kept, and the aspect ratio range
# (a face crop's enlargement around its detector box is prepare's CROP_SCALE, another thing)
CROP_AREA = (0.2, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def rgb_triple(values, name: str) -> tuple[float, float, float]:
    """Three per-channel values (a mean or std), as floats."""
    out = tuple(float(x) for x in values)
    if len(out) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {len(out)}")
    return out


def parsing_map_problem(parsing: np.ndarray, image_size: tuple[int, int]) -> str:
    """Why a parsing map cannot be used with an image of PIL size (W, H); empty when it can.

    This is where labels are validated: once per sample, on the host, where the data is read, so
    the training step never needs to read labels back from the GPU."""
    if parsing.ndim != 2:
        return f"parsing map must be 2-D, got shape {parsing.shape}"
    if not np.issubdtype(parsing.dtype, np.integer):
        return f"parsing map must hold integer labels, got dtype {parsing.dtype}"
    width, height = image_size
    if parsing.shape != (height, width):
        return f"parsing map shape {parsing.shape} differs from the image's {(height, width)}"
    if parsing.size and (parsing.min() < 0 or parsing.max() >= NUM_LABELS):
        return f"parsing map labels must lie in 0..{NUM_LABELS - 1}, found {parsing.min()}..{parsing.max()}"
    return ""


def sample_key(key, length: int) -> tuple[int, int]:
    """``dataset[i]`` or ``dataset[(i, epoch)]`` -> (index in [0, length), epoch)."""
    index, epoch = (key, 0) if not isinstance(key, (tuple, list)) else key
    index, epoch = int(index), int(epoch)
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for {length} samples")
    return index % length, epoch


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale=CROP_AREA, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """A crop box (left, top, right, bottom) covering ``scale`` of the area with aspect in ``ratio``;
    after 10 failed draws, the largest centred box whose aspect fits ``ratio``."""
    area = width * height
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        w = round(float(np.sqrt(target * aspect)))
        h = round(float(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def augment_params(seed: int, epoch: int, index: int, width: int,
                   height: int) -> tuple[tuple[int, int, int, int], bool]:
    """The crop box and flip of sample ``index`` in ``epoch``: a function of (seed, epoch, index) only."""
    rng = np.random.default_rng((seed, epoch, index))
    box = random_resized_crop_box(rng, width, height)
    return box, bool(rng.random() < 0.5)


class FaceTransform:
    """Resize (or random-resized-crop and maybe flip) a face and its map together, then normalise.

    The crop and flip of a sample are drawn from ``(seed, epoch, index)``: the same sample of the same
    epoch is augmented the same way whichever worker, loader or storage serves it.
    """

    def __init__(self, input_size: int, mean, std, augment: bool = False, seed: int = 0):
        if int(input_size) != input_size or input_size < 1:
            raise ValueError(f"input_size must be a positive integer, got {input_size}")
        self.input_size = int(input_size)
        self.mean = np.asarray(rgb_triple(mean, "mean"), np.float32)
        self.std = np.asarray(rgb_triple(std, "std"), np.float32)
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        self.augment = bool(augment)
        self.seed = int(seed)

    def box_and_flip(self, index: int, epoch: int, width: int, height: int):
        if not self.augment:
            return (0, 0, width, height), False
        return augment_params(self.seed, epoch, index, width, height)

    def geometry(self, image: Image.Image, parsing: np.ndarray, index: int, epoch: int):
        """(RGB uint8 [S,S,3], uint8 labels [S,S]): PIL bicubic for the image, nearest for the map."""
        s = self.input_size
        box, flip = self.box_and_flip(index, epoch, *image.size)
        if box != (0, 0, s, s):
            image = image.resize((s, s), Image.BICUBIC, box=box)
            parsing = np.array(Image.fromarray(parsing).resize((s, s), Image.NEAREST, box=box))
        image = np.asarray(image)
        if flip:
            image = image[:, ::-1]
            parsing = FLIP_LABELS[parsing[:, ::-1]]
        return image, parsing

    def __call__(self, image: Image.Image, parsing: np.ndarray, index: int, epoch: int):
        """(float32 [3,S,S] normalised, uint8 [S,S]) tensors."""
        image, parsing = self.geometry(image, parsing.astype(np.uint8, copy=False), index, epoch)
        pixels = (np.asarray(image, np.float32) * np.float32(1.0 / 255.0) - self.mean) / self.std
        return (torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(parsing)))

    def sample(self, image: Image.Image, parsing: np.ndarray, index: int, epoch: int, path: str) -> dict:
        """A usable sample as every face dataset returns it."""
        pixels, labels = self(image, parsing, index, epoch)
        return {"image": pixels, "parsing": labels, "ok": True, "path": path, "reason": ""}

    def failed(self, path, reason: str) -> dict:
        """The record of a sample that cannot be used: zeros of the right shape, and why."""
        s = self.input_size
        return {"image": torch.zeros(3, s, s), "parsing": torch.zeros(s, s, dtype=torch.uint8),
                "ok": False, "path": str(path), "reason": reason}


def collate_faces(samples: list[dict]) -> dict:
    """Stack the usable samples; count and name the others.

    -> dict(images [B,3,S,S], parsing uint8 [B,S,S], n_skipped, skipped [(path, reason)],
    skipped_paths [path]). B is 0 when every sample was skipped.
    """
    if not samples:
        raise ValueError("collate_faces got an empty list of samples")
    good = [x for x in samples if x["ok"]]
    bad = [x for x in samples if not x["ok"]]
    ref = samples[0]
    if good:
        images = torch.stack([x["image"] for x in good])
        parsing = torch.stack([x["parsing"] for x in good])
    else:
        images = ref["image"].new_zeros((0,) + tuple(ref["image"].shape))
        parsing = ref["parsing"].new_zeros((0,) + tuple(ref["parsing"].shape))
    return {"images": images, "parsing": parsing, "n_skipped": len(bad),
            "skipped": [(x["path"], x["reason"]) for x in bad],
            "skipped_paths": [x["path"] for x in bad]}
