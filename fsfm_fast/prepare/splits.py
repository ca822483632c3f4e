"""Train/val/test assignment, always by video: frames of one video never land in two splits.

With FaceForensics++'s official split files (``train.json``, ``val.json``, ``test.json``: lists of
``[target, source]`` id pairs), a real video ``071`` and the fakes ``071_054`` / ``054_071`` go to the
split that lists the pair (71, 54), which keeps both identities of a swap on one side. Otherwise each
class's videos are shuffled with a seed and cut by the val/test fractions (at least one video per
non-empty fraction when the class has enough videos).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..data.labels import FRAME_MARK, SPLITS


def video_id(stem: str) -> str:
    """The video a frame file comes from: its name before ``_frame_`` (the whole name otherwise)."""
    return stem.split(FRAME_MARK, 1)[0] if FRAME_MARK in stem else stem


def read_ffpp_splits(folder) -> dict[str, str]:
    """``{video id: split}`` from FaceForensics++'s ``{train,val,test}.json`` in ``folder``."""
    folder = Path(folder)
    ids: dict[str, str] = {}
    for split in SPLITS:
        path = folder / f"{split}.json"
        try:
            pairs = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable FaceForensics++ split file ({exc})") from None
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError(f"{path}: expected a JSON list of [target, source] id pairs")
        for a, b in pairs:
            for vid in (str(a), str(b), f"{a}_{b}", f"{b}_{a}"):
                if ids.setdefault(vid, split) != split:
                    raise ValueError(f"{path}: video {vid} is also listed in {ids[vid]}.json")
    return ids


def official_split(stem: str, table: dict[str, str]) -> str | None:
    """The split of a video (or frame) name from ``read_ffpp_splits``; None when it is not listed.
    Names may carry a prefix or suffix around the FF++ id (``071_054``, ``071``)."""
    vid = video_id(stem)
    if vid in table:
        return table[vid]
    match = re.search(r"(\d{3})(?:_(\d{3}))?", vid)
    return table.get(match.group(0)) if match else None


def random_split(video_ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """``{video id: split}`` for one class: a seeded shuffle cut by the fractions."""
    if not 0 <= val_fraction <= 1 or not 0 <= test_fraction <= 1 or val_fraction + test_fraction > 1:
        raise ValueError(f"val/test fractions must be in [0, 1] and sum to at most 1, got {val_fraction}, {test_fraction}")
    ids = sorted(set(video_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n = len(ids)

    def count(fraction: float) -> int:
        return 0 if fraction == 0 else max(int(round(fraction * n)), 1 if n >= 3 else 0)

    n_test = count(test_fraction)
    n_val = min(count(val_fraction), n - n_test)
    split = {}
    for rank, k in enumerate(order):
        split[ids[k]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split
