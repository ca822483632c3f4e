"""What a prepare run works on: the input files, their output names, and the split of the work.

An input is a video or an image found under a folder (recursively, sorted, hidden files left out, and
the bookkeeping files a prepare stage writes at the top of its output); any other file is still an
input, so that it is listed in ``skipped.tsv`` rather than ignored. Its
``stem`` is its path relative to the folder, without extension, with ``/`` turned into ``__``, so that
a flat output folder keeps the folder structure readable and a frame's video id (the name before
``_frame_``) names one video.

That rule alone can give two inputs one name (``a/face.png`` and ``a/face.jpg``; ``a/face.png`` and
``a__face.png``; an image ``v_frame_3.png`` beside a video ``v.mp4``), and then one would overwrite the
other's outputs and be taken for done in the journal. Inputs whose names would clash each get
``~`` and 8 hex digits of a hash of their relative path appended: unique, and the same on every run
over the same files, so that a rerun resumes. A clash that remains (names that already end in such a
tag, or one file name in two folders that feed one class) is an error naming both inputs (``check_unique``,
which the runner calls before any work).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from ..data.labels import FRAME_MARK
from .video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# what a prepare stage leaves beside its outputs (RunLog's log.jsonl too): not inputs of the next stage
MANIFEST, SKIPPED = "dataset.json", "skipped.tsv"
BOOKKEEPING = (MANIFEST, SKIPPED, "log.jsonl")
VIDEO, IMAGE, OTHER = "video", "image", "other"
TAG_MARK = "~"


class NameClash(ValueError):
    """Two inputs whose outputs would have one name; the message names both files."""


@dataclass(frozen=True)
class Input:
    path: Path
    stem: str
    kind: str
    label: str = ""   # class folder of the fine-tuning layout
    split: str = ""   # train / val / test

    @property
    def key(self) -> str:
        """Unique across classes: what the journal records as done."""
        return f"{self.label}/{self.stem}" if self.label else self.stem


def kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    return VIDEO if suffix in VIDEO_EXTENSIONS else IMAGE if suffix in IMAGE_EXTENSIONS else OTHER


def scan(folder, label: str = "", kinds: tuple[str, ...] = (VIDEO, IMAGE, OTHER)) -> list[Input]:
    """Every file under ``folder`` as an Input, in a stable order; a file path is one input."""
    folder = Path(folder)
    if folder.is_file():
        return [Input(folder, folder.stem, kind_of(folder), label)]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such file or folder")
    found, tags = [], {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if len(rel.parts) == 1 and rel.name in BOOKKEEPING:
            continue
        kind = kind_of(path)
        if kind in kinds:
            found.append(Input(path, "__".join(rel.with_suffix("").parts), kind, label))
            tags[path] = hashlib.sha1(rel.as_posix().encode("utf-8")).hexdigest()[:8]
    clashing = {x.path for pair in clashes(found) for x in pair}
    return [replace(x, stem=f"{x.stem}{TAG_MARK}{tags[x.path]}") if x.path in clashing else x for x in found]


def clashes(inputs: list[Input]) -> list[tuple[Input, Input]]:
    """Pairs of inputs whose outputs would share a name: the same key, or an image named like a frame
    (``<video>_frame_<i>``) of a video of the same class."""
    first: dict[str, Input] = {}
    videos = {x.key: x for x in inputs if x.kind == VIDEO}
    pairs = []
    for x in inputs:
        if first.setdefault(x.key, x).path != x.path:  # one file given twice is still one input
            pairs.append((first[x.key], x))
        if x.kind == VIDEO or FRAME_MARK not in x.stem:
            continue
        head, _, index = x.stem.rpartition(FRAME_MARK)
        video = videos.get(f"{x.label}/{head}" if x.label else head)
        if index.isdigit() and video is not None:
            pairs.append((video, x))
    return pairs


def check_unique(inputs: list[Input]) -> None:
    """Raise NameClash naming the first two inputs whose outputs would share a name."""
    for a, b in clashes(inputs):
        where = f"class {a.label}: " if a.label else ""
        raise NameClash(f"{where}{a.path} and {b.path} would write the same outputs ({a.stem} / {b.stem}); "
                        "rename one of them")


def shard_of(key: str, num_shards: int) -> int:
    """The shard an input belongs to: a hash of its key, so that adding inputs moves no other input
    and every machine of an array computes the same assignment from the same listing."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % num_shards


def select_shard(inputs: list[Input], num_shards: int, shard_index: int) -> list[Input]:
    return [x for x in inputs if shard_of(x.key, num_shards) == shard_index]
