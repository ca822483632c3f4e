"""Labelled face images for fine-tuning and evaluation: folders of class folders, or split files.

Layout (the reference's, e.g. FaceForensics++ after frame extraction):
``<root>/{train,val,test}/<class folder>/<video>_frame_<i>.png``, or one folder per video below the
class folder (``<class folder>/<video>/<frame>.png``).

Labels are binary and fake = 1 is the positive class (SPEC section 7). A class folder's label comes
from its name by rule, never from its position in alphabetical order: real names are ``real*``,
``*_real``, ``*-real``, ``youtube*`` and ``original*``; fake names are (``fake*``,
``*_fake``, the FaceForensics++ methods, Celeb-DF's ``*synthesis*``, ...; ``data/samples.py``). Any other folder is an
error that names it, unless the user maps it (``--class_map NAME=real|fake``).

A video's frames are grouped by the file name before ``_frame_``, or by the folder holding them when
that folder lies below the class folder; the video key also names the class folder, because
FaceForensics++ gives a real video and its fakes the same file names.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..runtime.cli import UsageError
from .faces import sample_key
from . import deepfakebench
from .labels import FRAME_MARK, SPLITS
from .samples import LABEL_NAMES, Sample, folder_label, parse_label

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def video_of(path: Path, class_dir: Path | None) -> str:
    """The video an image belongs to: the name before ``_frame_``, else the folder holding it when that
    folder lies below ``class_dir``, else the image itself. Without a class folder (a split file's
    entry) the holding folder's path is kept, so equal names in different folders stay apart."""
    name = path.stem.rsplit(FRAME_MARK, 1)[0] if FRAME_MARK in path.stem else None
    if class_dir is None:
        return f"{path.parent.as_posix()}/{name or path.stem}"
    below = path.parent.relative_to(class_dir).as_posix()
    if name is not None:
        return name if below == "." else f"{below}/{name}"
    return path.stem if below == "." else below


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def scan_class_folders(folder: Path, class_map: dict[str, int] | None = None, prefix: str = "") -> list[Sample]:
    """Every image below the class folders of ``folder``, labelled by the folder-name rule."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"{folder} holds no class folders (expected e.g. {folder}/real and {folder}/fake)")
    samples = []
    for class_dir in classes:
        label = folder_label(class_dir.name, class_map, folder)
        for img in _images_below(class_dir):
            samples.append(Sample(str(img), label, f"{prefix}{class_dir.name}/{video_of(img, class_dir)}",
                                  class_dir.name))
    if not samples:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under the class folders of {folder}")
    return samples


def read_split_file(path: Path, class_map: dict[str, int] | None = None, base: Path | None = None,
                    delimiter: str | None = None) -> list[Sample]:
    """Lines ``<image path><delimiter><label>`` (label real/fake/0/1 or a class folder name); relative
    paths are taken from ``base`` (default: the split file's folder). Blank and ``#`` lines are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read split file {path}: {exc}") from None
    base = Path(base) if base is not None else path.parent
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(delimiter, 1) if delimiter else line.rsplit(None, 1)
        if len(parts) != 2 or not parts[0].strip():
            raise UsageError(f"{path}:{number}: expected '<image path> <label>', got {line!r}")
        image, label_text = Path(parts[0].strip()), parts[1].strip()
        try:
            label = parse_label(label_text, f"{path}:{number}")
        except UsageError:
            label = folder_label(label_text, class_map, f"{path}:{number}")
        image = image if image.is_absolute() else base / image
        samples.append(Sample(str(image), label, f"{LABEL_NAMES[label]}/{video_of(image, None)}", LABEL_NAMES[label]))
    if not samples:
        raise UsageError(f"split file {path} lists no images")
    return samples


def samples_from(spec: str, split: str, class_map: dict[str, int] | None = None) -> list[Sample]:
    """The images of ``spec``: one or more comma-separated paths, each a dataset root with a ``split``/
    folder, a folder of class folders, a split file, or a DeepfakeBench dataset JSON
    (``dfb:JSON[:SPLIT[:COMPRESSION[:METHODS[:ROOT]]]]``, ``data/deepfakebench.py``). Videos of different
    paths never merge."""
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if not paths:
        raise UsageError(f"empty dataset path {spec!r}")
    samples = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        prefix = f"{i}:" if len(paths) > 1 else ""
        if deepfakebench.is_spec(raw):
            part = deepfakebench.read_samples(raw, split, class_map)
            samples += [Sample(s.path, s.label, prefix + s.video, s.cls) for s in part]
        elif path.is_file():
            part = read_split_file(path, class_map)
            samples += [Sample(s.path, s.label, prefix + s.video, s.cls) for s in part]
        elif (path / split).is_dir():
            samples += scan_class_folders(path / split, class_map, prefix)
        elif any((path / other).is_dir() for other in SPLITS):
            raise UsageError(f"{path} has no {split}/ folder (it has "
                             f"{', '.join(o + '/' for o in SPLITS if (path / o).is_dir())})")
        elif path.is_dir():
            samples += scan_class_folders(path, class_map, prefix)
        else:
            raise UsageError(f"{path} does not exist")
    return samples


def count_labels(samples: list[Sample]) -> dict[str, int]:
    counts = np.bincount([s.label for s in samples], minlength=2)
    return {LABEL_NAMES[i]: int(c) for i, c in enumerate(counts)}


@contextmanager
def _seeded(key: tuple[int, ...]):
    """Seed Python's, NumPy's and torch's CPU random streams from ``key`` for the duration, then put
    them back: timm's transforms draw from all three, and the caller's streams must not move."""
    states = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(2)
    random.seed(int(words[0]))
    np.random.seed(int(words[1]))
    torch.random.default_generator.manual_seed(int(words[0]) << 32 | int(words[1]))
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.default_generator.set_state(states[2])


class LabelledImages(Dataset):
    """``dataset[i]`` or ``dataset[(i, epoch)]`` -> dict(image, label, index, ok, path, reason).

    With ``seed`` set, the random transform of sample i in epoch e draws from streams seeded by
    (seed, e, i): the same augmentation whichever worker or rank loads it, and after a resume.
    An image that cannot be decoded comes back with ``ok=False`` and the reason, never an exception.
    """

    def __init__(self, samples: list[Sample], transform, seed: int | None = None):
        if not samples:
            raise ValueError("LabelledImages needs at least one sample")
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def __getitem__(self, key) -> dict:
        index, epoch = sample_key(key, len(self))
        sample = self.samples[index]
        try:
            with Image.open(sample.path) as im:
                image = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001  any decoder failure marks the sample, never the run
            return {"ok": False, "index": index, "label": sample.label, "path": sample.path,
                    "reason": f"unreadable image ({type(exc).__name__}: {exc})"}
        if self.seed is None:
            tensor = self.transform(image)
        else:
            with _seeded((self.seed, epoch, index)):
                tensor = self.transform(image)
        return {"ok": True, "image": tensor, "index": index, "label": sample.label, "path": sample.path,
                "reason": ""}


def collate_labelled(items: list[dict]) -> dict:
    """Stack the readable samples; name the others. -> images [B,3,H,W], labels [B], index [B],
    n_skipped, skipped [(path, reason)]. B may be 0."""
    kept = [x for x in items if x["ok"]]
    skipped = [(x["path"], x["reason"]) for x in items if not x["ok"]]
    images = torch.stack([x["image"] for x in kept]) if kept else torch.zeros(0, 3, 1, 1)
    return {"images": images, "labels": torch.tensor([x["label"] for x in kept], dtype=torch.long),
            "index": torch.tensor([x["index"] for x in kept], dtype=torch.long),
            "n_skipped": len(skipped), "skipped": skipped}
