"""What a prepare run works on: the input files, their output names, and the split of the work.

An input is a video or an image found under a folder (recursively, sorted, hidden files left out, and
the bookkeeping files a prepare stage writes at the top of its output); any other file is still an
input, so that it is listed in ``skipped.tsv`` rather than ignored. Its
``stem`` is its path relative to the folder, without extension, with ``/`` turned into ``__``, so that
names stay unique in a flat output folder and a frame's video id (the name before ``_frame_``) names
one video.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# what a prepare stage leaves beside its outputs (RunLog's log.jsonl too): not inputs of the next stage
MANIFEST, SKIPPED = "dataset.json", "skipped.tsv"
BOOKKEEPING = (MANIFEST, SKIPPED, "log.jsonl")
VIDEO, IMAGE, OTHER = "video", "image", "other"


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
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if len(rel.parts) == 1 and rel.name in BOOKKEEPING:
            continue
        kind = kind_of(path)
        if kind in kinds:
            found.append(Input(path, "__".join(rel.with_suffix("").parts), kind, label))
    return found


def shard_of(key: str, num_shards: int) -> int:
    """The shard an input belongs to: a hash of its key, so that adding inputs moves no other input
    and every machine of an array computes the same assignment from the same listing."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % num_shards


def select_shard(inputs: list[Input], num_shards: int, shard_index: int) -> list[Input]:
    return [x for x in inputs if shard_of(x.key, num_shards) == shard_index]
