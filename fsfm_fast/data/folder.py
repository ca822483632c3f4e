"""Reference-layout face folders: ``<root>/images/<stem>.png`` + ``<root>/parsing_maps/<stem>.npy``.

A sample that cannot be used (undecodable image, bad map) comes back with ``ok=False`` and a reason
instead of raising, and ``collate_faces`` drops it: one broken file among millions must not stop a
pretraining run, but it must be counted and named.

Augmentation (random resized crop + horizontal flip) moves the image and its parsing map together.
A flip swaps the left/right labels (2<->3 brows, 4<->5 eyes): the labels name the subject's side,
and in a mirrored picture the part now on the other side of the image is the mirrored subject's
other side, so without the swap flipped samples would contradict the labelling convention. CRFR-P
masking groups left and right together, so the swap never changes a mask.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

NUM_LABELS = 11
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)

# mirror image: left and right brows (2, 3) and eyes (4, 5) trade places
FLIP_LABELS = np.arange(256, dtype=np.uint8)
FLIP_LABELS[[2, 3, 4, 5]] = [3, 2, 5, 4]


def _as_roots(roots) -> list[Path]:
    if isinstance(roots, (str, Path)):
        roots = [roots]
    roots = [Path(r) for r in roots]
    if not roots:
        raise ValueError("roots is empty: give at least one dataset folder")
    return roots


def _scan(roots: list[Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image, map) pairs in a stable order, and the images that have no map."""
    pairs, missing = [], []
    for root in roots:
        img_dir, map_dir = root / "images", root / "parsing_maps"
        if not img_dir.is_dir():
            raise ValueError(f"{root} has no images/ folder (expected the reference layout "
                             "<root>/images/*.png + <root>/parsing_maps/*.npy)")
        for img in sorted(img_dir.iterdir()):
            if img.suffix.lower() not in IMAGE_EXTENSIONS or not img.is_file():
                continue
            parsing = map_dir / f"{img.stem}.npy"
            (pairs.append((img, parsing)) if parsing.is_file() else missing.append(img))
    return pairs, missing


def _check_values(values, name: str) -> tuple[float, ...]:
    out = tuple(float(x) for x in values)
    if len(out) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {len(out)}")
    return out


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
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


class FaceParsingFolder(Dataset):
    """Faces and parsing maps from one or more reference-layout folders.

    ``dataset[i]`` or ``dataset[(i, epoch)]`` -> dict(image float32 [3,S,S] normalised,
    parsing uint8 [S,S], ok bool, path str, reason str). With ``augment`` the crop and flip are drawn
    from ``default_rng((seed, epoch, i))``: the same sample of the same epoch is augmented the same
    way whichever worker loads it.
    """

    def __init__(self, roots, input_size: int, mean, std, augment: bool = False, seed: int = 0):
        self._set_transform(input_size, mean, std, augment, seed)
        self.roots = _as_roots(roots)
        self.samples, missing = _scan(self.roots)
        self.missing_maps = len(missing)
        if missing:
            warnings.warn(f"{len(missing)} image(s) have no parsing map and are skipped, e.g. "
                          f"{[str(m) for m in missing[:5]]}", stacklevel=2)
        if not self.samples:
            raise ValueError(f"no image with a parsing map under {[str(r) for r in self.roots]}")


    def _set_transform(self, input_size, mean, std, augment: bool, seed: int) -> None:
        """Validates and stores what every sample's transform needs (shared with the shard reader)."""
        if int(input_size) != input_size or input_size < 1:
            raise ValueError(f"input_size must be a positive integer, got {input_size}")
        self.input_size = int(input_size)
        self.mean = np.asarray(_check_values(mean, "mean"), np.float32)
        self.std = np.asarray(_check_values(std, "std"), np.float32)
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        self.augment = bool(augment)
        self.seed = int(seed)
    def __len__(self) -> int:
        return len(self.samples)

    def _key(self, key) -> tuple[int, int]:
        index, epoch = (key, 0) if not isinstance(key, (tuple, list)) else key
        index, epoch = int(index), int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return index % len(self), epoch

    def _failed(self, path: Path, reason: str) -> dict:
        s = self.input_size
        return {"image": torch.zeros(3, s, s), "parsing": torch.zeros(s, s, dtype=torch.uint8),
                "ok": False, "path": str(path), "reason": reason}

    def __getitem__(self, key) -> dict:
        index, epoch = self._key(key)
        img_path, map_path = self.samples[index]
        try:
            with Image.open(img_path) as im:
                image = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001  any decoder failure marks the sample, never the run
            return self._failed(img_path, f"unreadable image ({type(exc).__name__}: {exc})")
        try:
            parsing = np.load(map_path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            return self._failed(map_path, f"unreadable parsing map ({type(exc).__name__}: {exc})")
        problem = _map_problem(parsing, image.size)
        if problem:
            return self._failed(map_path, problem)
        image, parsing = self._geometry(image, parsing.astype(np.uint8, copy=False), index, epoch)
        pixels = np.asarray(image, np.float32) * np.float32(1.0 / 255.0)
        pixels = (pixels - self.mean) / self.std
        return {"image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
                "parsing": torch.from_numpy(np.ascontiguousarray(parsing)),
                "ok": True, "path": str(img_path), "reason": ""}

    def _geometry(self, image: Image.Image, parsing: np.ndarray, index: int, epoch: int):
        """Resize (or random-resized-crop and maybe flip) image and map identically."""
        s = self.input_size
        width, height = image.size
        box, flip = (0, 0, width, height), False
        if self.augment:
            box, flip = augment_params(self.seed, epoch, index, width, height)
        if box != (0, 0, s, s):
            image = image.resize((s, s), Image.BICUBIC, box=box)
            parsing = np.array(Image.fromarray(parsing).resize((s, s), Image.NEAREST, box=box))
        image = np.asarray(image)
        if flip:
            image = image[:, ::-1]
            parsing = FLIP_LABELS[parsing[:, ::-1]]
        return image, parsing


def _map_problem(parsing: np.ndarray, image_size: tuple[int, int]) -> str:
    """Why a parsing map cannot be used with an image of PIL size (W, H); empty when it can."""
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


def compute_mean_std(roots, input_size: int, max_samples: int = 0, batch_size: int = 64,
                     num_workers: int = 0, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels (in [0, 1], after resizing to ``input_size``) of all
    samples, or of a seeded random subset of ``max_samples``; unusable samples are left out."""
    dataset = FaceParsingFolder(roots, input_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    indices = np.arange(len(dataset))
    if 0 < max_samples < len(dataset):
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=max_samples, replace=False))
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_faces)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for batch in loader:
        x = batch["images"].double()
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError(f"no usable sample under {[str(r) for r in dataset.roots]} to compute mean/std from")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
