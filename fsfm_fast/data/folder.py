"""Reference-layout face folders: ``<root>/images/<stem>.png`` + ``<root>/parsing_maps/<stem>.npy``.

A sample that cannot be used (undecodable image, bad map) comes back with ``ok=False`` and a reason
instead of raising, and ``collate_faces`` drops it: one broken file among millions must not stop a
pretraining run, but it must be counted and named. What the folder dataset shares with the shard
readers (labels, sample keys, augmentation, transform) lives in ``faces``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from ..runtime.signals import ignore_stop_signals
from .faces import FaceTransform, collate_faces, parsing_map_problem, sample_key

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def as_roots(roots) -> list[Path]:
    """One folder or several, as a non-empty list of Paths."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    roots = [Path(r) for r in roots]
    if not roots:
        raise ValueError("roots is empty: give at least one dataset folder")
    return roots


def scan_reference_layout(roots: list[Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image, map) pairs of reference-layout folders in a stable order, and the images without a map."""
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


class FaceParsingFolder(Dataset):
    """Faces and parsing maps from one or more reference-layout folders.

    ``dataset[i]`` or ``dataset[(i, epoch)]`` -> dict(image float32 [3,S,S] normalised,
    parsing uint8 [S,S], ok bool, path str, reason str). With ``augment`` the crop and flip are drawn
    from ``(seed, epoch, i)`` (``FaceTransform``).
    """

    def __init__(self, roots, input_size: int, mean, std, augment: bool = False, seed: int = 0):
        self.transform = FaceTransform(input_size, mean, std, augment, seed)
        self.roots = as_roots(roots)
        self.samples, missing = scan_reference_layout(self.roots)
        self.missing_maps = len(missing)
        if missing:
            warnings.warn(f"{len(missing)} image(s) have no parsing map and are skipped, e.g. "
                          f"{[str(m) for m in missing[:5]]}", stacklevel=2)
        if not self.samples:
            raise ValueError(f"no image with a parsing map under {[str(r) for r in self.roots]}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index, epoch = sample_key(key, len(self))
        img_path, map_path = self.samples[index]
        try:
            with Image.open(img_path) as im:
                image = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001  any decoder failure marks the sample, never the run
            return self.transform.failed(img_path, f"unreadable image ({type(exc).__name__}: {exc})")
        try:
            parsing = np.load(map_path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            return self.transform.failed(map_path, f"unreadable parsing map ({type(exc).__name__}: {exc})")
        problem = parsing_map_problem(parsing, image.size)
        if problem:
            return self.transform.failed(map_path, problem)
        return self.transform.sample(image, parsing, index, epoch, str(img_path))


def pixel_mean_std(dataset: Dataset, max_samples: int = 0, batch_size: int = 64, num_workers: int = 0,
                   seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels of a face dataset built with mean 0 and std 1 (so in
    [0, 1], after its resize), over all samples or a seeded random subset of ``max_samples``;
    unusable samples are left out."""
    indices = np.arange(len(dataset))
    if 0 < max_samples < len(dataset):
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=max_samples, replace=False))
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_faces, worker_init_fn=ignore_stop_signals)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for batch in loader:
        x = batch["images"].double()
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError(f"no usable sample in {len(indices)} to compute the mean/std from")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def compute_mean_std(roots, input_size: int, max_samples: int = 0, batch_size: int = 64,
                     num_workers: int = 0, seed: int = 0) -> tuple[list[float], list[float]]:
    """``pixel_mean_std`` of reference-layout folders, after resizing to ``input_size``."""
    dataset = FaceParsingFolder(roots, input_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return pixel_mean_std(dataset, max_samples, batch_size, num_workers, seed)
