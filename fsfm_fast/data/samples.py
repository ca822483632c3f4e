"""What a labelled face sample is, and how a class name becomes its label (SPEC section 7).

Labels are binary and fake = 1 is the positive class. A class folder's label comes from its name by
rule, never from its position in alphabetical order; any other name is an error that names it, unless
the user maps it (``--class_map NAME=real|fake``). Every reader of labelled data (folders and split
files in ``data/labelled.py``, DeepfakeBench JSONs in ``data/deepfakebench.py``) labels with these.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from ..runtime.cli import UsageError

REAL, FAKE = 0, 1
LABEL_NAMES = ("real", "fake")
REAL_PATTERNS = ("real*", "*_real", "*-real", "youtube*", "original*")
FAKE_PATTERNS = ("fake*", "*_fake", "*-fake", "deepfakes", "deepfakedetection", "face2face", "faceswap",
                 "neuraltextures", "faceshifter", "*synthesis*", "manipulated*", "spoof*", "attack*")


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # 0 real, 1 fake
    video: str  # "<class folder>/<video>", unique within a dataset
    cls: str  # the class folder's name (or the label's name for split files)


def parse_label(value: str, what: str) -> int:
    """``real``/``fake``/``0``/``1`` -> 0/1."""
    v = value.strip().lower()
    if v in ("real", "0"):
        return REAL
    if v in ("fake", "1"):
        return FAKE
    raise UsageError(f"{what}: label must be real, fake, 0 or 1, got {value!r}")


def parse_class_map(items: list[str] | None) -> dict[str, int]:
    """``["fake_four=fake,pristine=real", ...]`` -> {folder name (lower case): label}."""
    mapping = {}
    for item in items or []:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            name, sep, label = pair.partition("=")
            if not sep or not name.strip():
                raise UsageError(f"--class_map takes NAME=real or NAME=fake pairs, got {pair!r}")
            mapping[name.strip().lower()] = parse_label(label, f"--class_map {pair}")
    return mapping


def folder_label(name: str, class_map: dict[str, int] | None = None, where: str | Path = "") -> int:
    """The label of a class folder by the naming rule; an explicit ``class_map`` entry wins."""
    key = name.lower()
    if class_map and key in class_map:
        return class_map[key]
    if any(fnmatch.fnmatchcase(key, p) for p in REAL_PATTERNS):
        return REAL
    if any(fnmatch.fnmatchcase(key, p) for p in FAKE_PATTERNS):
        return FAKE
    place = f" in {where}" if where else ""
    raise UsageError(
        f"class folder {name!r}{place} is neither a real name ({', '.join(REAL_PATTERNS)}) nor a known fake "
        f"name ({', '.join(FAKE_PATTERNS)}): label it with --class_map {name}=real or --class_map {name}=fake")
