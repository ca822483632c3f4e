"""Face anti-spoofing data: source and target domains, the held-out source validation split, and the
reference's training augmentation (SPEC section 7).

A domain is a folder in the fine-tuning layout, ``<root>/{train,test}/<class folder>/<video>_frame_<i>.png``,
its class folders ``real`` and ``spoof`` / ``fake`` / ``attack`` (or several of them, such as
``spoof_print`` and ``spoof_replay``), labelled by the folder-name rule of ``data/labelled.py``: an
attack is 1, the positive class, and a score is P(attack). A video is the name before ``_frame_``.

Sources train; the target is tested. Model selection and the honest threshold need held-out SOURCE
data: a source's ``val/`` folder when it has one, otherwise ``carve_validation`` holds out a seeded
share of each class's training videos (whole videos, never single frames). Which videos were held out
is written down (``write_split``).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms

from ..runtime.cli import UsageError
from .labelled import samples_from
from .samples import LABEL_NAMES, Sample

VAL_SPLIT_FILE = "val_split.txt"


# ----------------------------------------------------------------------------------------------
# the reference's augmentation: HSV saturation, then resize and horizontal flip


def scale_saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` (float [..., 3], 0..255) with its HSV saturation multiplied by ``factor``, hue and value
    kept: each channel moves away from (or towards) the pixel's maximum, ``v - f (v - c)``. Where the
    saturation would pass 1, it stops at 1 (the pixel's minimum reaches 0)."""
    rgb = np.asarray(rgb, np.float32)
    value = rgb.max(axis=-1, keepdims=True)
    spread = value - rgb.min(axis=-1, keepdims=True)
    limit = np.divide(value, spread, out=np.full_like(value, np.inf), where=spread > 0)
    return value - np.minimum(np.float32(factor), limit) * (value - rgb)


class SaturationJitter:
    """With probability ``p``, HSV saturation x U(low, high): the reference's colour augmentation for FAS
    (it draws from torch's stream, which ``LabelledImages`` seeds per sample)."""

    def __init__(self, p: float = 0.5, low: float = 0.8, high: float = 1.2):
        self.p, self.low, self.high = p, low, high

    def __call__(self, image):
        from PIL import Image
        if float(torch.rand(())) >= self.p:
            return image
        factor = self.low + (self.high - self.low) * float(torch.rand(()))
        pixels = scale_saturation(np.asarray(image.convert("RGB"), np.float32), factor)
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def fas_train_transform(size: int, mean, std):
    """Saturation jitter, resize to ``size`` x ``size`` (bicubic), horizontal flip, normalise."""
    return transforms.Compose([
        SaturationJitter(), transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(mean, std)])


# ----------------------------------------------------------------------------------------------
# domains and splits


@dataclass
class FASData:
    train: list[Sample]  # every source's training frames; a video id starts with its domain's name
    groups: dict[str, list[int]]  # "<domain>/<real|fake>" -> indices into train: what a batch balances
    val: list[Sample]  # held-out source frames
    target: list[Sample]  # the target domain's test frames
    split: dict  # per source: where its validation data came from, and how many videos/frames of each


def _in_domain(samples: list[Sample], domain: str) -> list[Sample]:
    return [Sample(s.path, s.label, f"{domain}/{s.video}", s.cls) for s in samples]


def carve_validation(samples: list[Sample], fraction: float, seed: int, domain: str
                     ) -> tuple[list[Sample], list[Sample]]:
    """(train, val): ``fraction`` of each class's videos (at least one) held out, drawn with ``seed`` and
    the domain's name. A class with fewer than 2 videos cannot be split: an error naming it."""
    train, val = [], []
    for label, name in enumerate(LABEL_NAMES):
        videos = sorted({s.video for s in samples if s.label == label})
        if len(videos) < 2:
            raise UsageError(f"--source {domain}: its {name} training frames come from {len(videos)} video(s); holding "
                             "out validation videos needs 2 or more (or give the source a val/ folder)")
        rng = np.random.default_rng([seed, zlib.crc32(domain.encode()), label])
        count = min(max(1, round(fraction * len(videos))), len(videos) - 1)
        held = {videos[i] for i in rng.permutation(len(videos))[:count]}
        for s in samples:
            if s.label == label:
                (val if s.video in held else train).append(s)
    return train, val


def load_fas_data(sources: dict[str, str], target: tuple[str, str], *, val_fraction: float, split_seed: int,
                  class_map: dict[str, int] | None = None) -> FASData:
    """Read the sources' training (and validation) frames and the target's test frames."""
    train, val, groups, split = [], [], {}, {}
    for domain, root in sources.items():
        own = _in_domain(samples_from(root, "train", class_map), domain)
        if (Path(root) / "val").is_dir():
            held, how = _in_domain(samples_from(root, "val", class_map), domain), "its val/ folder"
        elif val_fraction > 0:
            own, held = carve_validation(own, val_fraction, split_seed, domain)
            how = f"{val_fraction:g} of the training videos of each class, seed {split_seed}"
        else:
            raise UsageError(f"--source {domain} has no val/ folder and --val_fraction is 0: the honest evaluation "
                             "needs held-out source data")
        for label, name in enumerate(LABEL_NAMES):
            groups[f"{domain}/{name}"] = [len(train) + i for i, s in enumerate(own) if s.label == label]
            if not groups[f"{domain}/{name}"]:
                raise UsageError(f"--source {domain} has no {name} training frames ({root})")
        split[domain] = {"validation": how, **{f"{part}_{name}_{unit}": count(part_samples, label, unit)
                                               for part, part_samples in (("train", own), ("val", held))
                                               for label, name in enumerate(LABEL_NAMES)
                                               for unit in ("videos", "frames")}}
        train += own
        val += held
    name, root = target
    tested = _in_domain(samples_from(root, "test", class_map), name)
    if len({s.label for s in tested}) < 2:
        raise UsageError(f"--target {name}: its test frames hold one class only ({root}); HTER and AUC need both")
    return FASData(train, groups, val, tested, split)


def count(samples: list[Sample], label: int, unit: str) -> int:
    """Frames or videos of ``label`` among ``samples``."""
    chosen = [s for s in samples if s.label == label]
    return len({s.video for s in chosen}) if unit == "videos" else len(chosen)


def write_split(path: str | Path, data: FASData) -> None:
    """The held-out source frames as a split file (``<image path> <real|fake>`` lines, which
    ``--val_split`` of the fine-tuning verb and ``data.labelled.read_split_file`` read)."""
    how = "; ".join(f"{domain}: {v['validation']}" for domain, v in data.split.items())
    lines = [f"# held-out source validation frames: {how}"]
    lines += [f"{s.path} {LABEL_NAMES[s.label]}" for s in data.val]
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
