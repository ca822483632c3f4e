"""DeepfakeBench's dataset JSONs as labelled data: ``dfb:JSON[:SPLIT[:COMPRESSION[:METHODS[:ROOT]]]]``.

DeepfakeBench (``SCLBD/DeepfakeBench``) describes each prepared dataset in one JSON file, written by its
``preprocessing/rearrange.py`` and read by ``training/dataset/abstract_dataset.py``::

    {DATASET: {METHOD: {SPLIT: {VIDEO: {"label": METHOD, "frames": [PATH, ...], "masks": [...]}}}}}

where the FaceForensics++ family (FaceForensics++, FF-DF, FF-F2F, FF-FS, FF-NT, FaceShifter,
DeepFakeDetection) has one more level, the compression, between SPLIT and VIDEO (``c23``, ``c40``,
``raw``). SPLIT is ``train``, ``val`` or ``test``; DeepfakeBench copies the test videos of Celeb-DF and
DFDCP into ``val``, so those ``val`` splits are test data. A video's label is a name that DeepfakeBench's
``label_dict`` (``training/config/train_config.yaml``) maps to 0 (real) or 1 (fake), the convention used
here too (fake = 1, SPEC section 7).

The spec fields, separated by ``:`` (any may be left empty):
- JSON: the dataset's JSON file (``.../dataset_json/FaceForensics++.json``);
- SPLIT: empty takes the split the verb reads (``finetune``: train and val; ``evaluate --test``: test;
  ``--target_domain_selection``: val). Naming one fixes it, which a training source may not do, since
  its train and val would then be the same videos;
- COMPRESSION: required for the FaceForensics++ family, absent for the other datasets;
- METHODS: a ``+``-separated subset of the JSON's methods (default: all), e.g. ``FF-real+FF-DF``;
- ROOT: the folder that relative frame paths start from (DeepfakeBench's ``rgb_dir``, e.g.
  ``DeepfakeBench/datasets/rgb``); default: the current folder. Absolute paths are used as they are;
  Windows separators in the JSON are read as ``/``.

A video keeps its id (``METHOD/VIDEO``: FaceForensics++ gives a video the same name in every method) and
its frames are sorted by frame number. Labels come from ``--class_map`` first, then DeepfakeBench's
label names, then the folder-name rule of ``data/labelled.py`` (``*_real``, ``*-real``, ``youtube*``, ...);
any other label is an error naming the JSON and the known names. Listed frames that are not on disk
are counted and named in one line here, then left to the loaders, which skip each and name it in
``skipped.tsv`` like any unreadable image; a JSON none of whose frames exist is an error (a wrong ROOT).
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..runtime.cli import UsageError
from .samples import FAKE, REAL, Sample, folder_label

PREFIX = "dfb:"
TRAIN = "train"

# DeepfakeBench's label names and their labels (training/config/train_config.yaml, label_dict).
LABELS = {
    "FF-real": REAL, "FF-DF": FAKE, "FF-F2F": FAKE, "FF-FS": FAKE, "FF-NT": FAKE, "FF-FH": FAKE, "FF-SH": FAKE,
    "DFD_real": REAL, "DFD_fake": FAKE,
    "CelebDFv1_real": REAL, "CelebDFv1_fake": FAKE, "CelebDFv2_real": REAL, "CelebDFv2_fake": FAKE,
    "DFDCP_Real": REAL, "DFDCP_FakeA": FAKE, "DFDCP_FakeB": FAKE,
    "DFDC_Real": REAL, "DFDC_Fake": FAKE,
    "DF_real": REAL, "DF_fake": FAKE,
    "UADFV_Real": REAL, "UADFV_Fake": FAKE,
    "roop_Real": REAL, "roop_Fake": FAKE,
}
# The JSON path ends at the first ".json" that is followed by a field separator or the end.
_SPEC = re.compile(r"^(?P<json>.+?\.json)(?=:|$):?(?P<rest>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Spec:
    json: Path
    split: str  # "" = the verb's split
    compression: str
    methods: tuple[str, ...]  # () = all
    root: Path

    def describe(self, split: str) -> str:
        parts = [split] + ([self.compression] if self.compression else []) + (["+".join(self.methods)] if self.methods else [])
        return f"{self.json.name} ({', '.join(parts)})"


def is_spec(text: str) -> bool:
    return text.startswith(PREFIX)


def parse_spec(text: str) -> Spec:
    """``dfb:JSON[:SPLIT[:COMPRESSION[:METHODS[:ROOT]]]]`` -> Spec; one-line errors otherwise."""
    match = _SPEC.match(text[len(PREFIX):])
    if match is None:
        raise UsageError(f"{text!r}: a DeepfakeBench source is dfb:JSON[:SPLIT[:COMPRESSION[:METHODS[:ROOT]]]] "
                         "with JSON a .json file, e.g. dfb:dataset_json/FaceForensics++.json::c23")
    fields = match["rest"].split(":", 3) if match["rest"] else []
    split, compression, methods, root = (fields + [""] * 4)[:4]
    return Spec(Path(match["json"]), split.strip(), compression.strip(),
                tuple(m.strip() for m in methods.split("+") if m.strip()), Path(root.strip() or "."))


def _read_json(path: Path) -> dict:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"DeepfakeBench JSON {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read DeepfakeBench JSON {path}: {exc}") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"{path} is not a DeepfakeBench dataset JSON ({{dataset: {{method: {{split: ...}}}}}})")
    return data


def _dataset(data: dict, path: Path) -> dict:
    """The one dataset of the file (DeepfakeBench names it after the file when there could be several)."""
    if len(data) == 1:
        return next(iter(data.values()))
    if path.stem in data:
        return data[path.stem]
    raise UsageError(f"{path} holds the datasets {', '.join(data)} and none is named {path.stem!r} like the file")


def _is_video(entry) -> bool:
    return isinstance(entry, dict) and "frames" in entry


def _videos(node, compression: str, where: str, path: Path) -> dict:
    """The videos of one method's split: ``node`` directly, or its ``compression`` level."""
    if _is_video(node):  # rearrange.py writes DFDC's val split as one video's entry
        raise UsageError(f"{path}: {where} is a single video entry, not a set of videos (DeepfakeBench writes DFDC's "
                         "val split this way): choose another split")
    if not isinstance(node, dict):
        raise UsageError(f"{path}: {where} is not a mapping of videos")
    return node.get(compression, {}) if compression else node


def _levels(nodes: list) -> set[str]:
    """The compression levels among split nodes: the keys of a node whose entries are not videos."""
    levels = set()
    for node in nodes:
        if isinstance(node, dict) and node and not _is_video(node) and not any(_is_video(v) for v in node.values()):
            levels.update(key for key, value in node.items() if isinstance(value, dict))
    return levels


def _label(name, video: str, where: str, path: Path, class_map: dict[str, int] | None) -> int:
    if not isinstance(name, str):
        raise UsageError(f"{path}: video {video!r} of {where} has no label name")
    if class_map and name.lower() in class_map:
        return class_map[name.lower()]
    if name in LABELS:
        return LABELS[name]
    try:
        return folder_label(name)
    except UsageError:
        raise UsageError(f"{path}: label {name!r} (video {video!r} of {where}) is none of DeepfakeBench's labels "
                         f"({', '.join(LABELS)}) nor a real/fake name: map it with --class_map {name}=real or "
                         f"--class_map {name}=fake") from None


def _frame_key(path: str) -> tuple:
    """Frames in frame order: by the number in the name where it is one (DeepfakeBench's ``000.png``)."""
    stem = Path(path).stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _resolve(frame, root: Path, where: str, path: Path) -> str:
    if not isinstance(frame, str) or not frame:
        raise UsageError(f"{path}: {where} lists a frame that is not a path: {frame!r}")
    frame = frame.replace("\\", "/")
    return frame if os.path.isabs(frame) else str(root / frame)


def _choose(value: str, valid: list[str], what: str, path: Path) -> None:
    if value not in valid:
        raise UsageError(f"{path}: unknown {what} {value!r}; its {what}s are {', '.join(valid)}")


def read_samples(text: str, split: str, class_map: dict[str, int] | None = None) -> list[Sample]:
    """The frames of a ``dfb:`` source for the verb's ``split``, labelled fake = 1."""
    spec = parse_spec(text)
    if spec.split and split == TRAIN:
        raise UsageError(f"{text}: a training source may not fix its split (its train and val would be the same "
                         f"videos): leave SPLIT empty, e.g. dfb:{spec.json}::{spec.compression}")
    split = spec.split or split
    path = spec.json
    methods = _dataset(_read_json(path), path)
    for method in spec.methods:
        _choose(method, list(methods), "method", path)
    chosen = {m: methods[m] for m in (spec.methods or methods)}
    bad = [m for m, node in chosen.items() if not isinstance(node, dict)]
    if bad:
        raise UsageError(f"{path}: method {bad[0]!r} is not a mapping of splits")
    splits = sorted({s for node in chosen.values() for s in node})
    _choose(split, splits, "split", path)
    nodes = {m: node.get(split, {}) for m, node in chosen.items()}
    levels = sorted(_levels([n for node in chosen.values() for n in node.values()]))  # the dataset's, all splits
    if levels and not spec.compression:
        raise UsageError(f"{path}: name a compression level, one of {', '.join(levels)} "
                         f"(e.g. dfb:{path}:{spec.split}:{levels[0]})")
    if spec.compression:
        if not levels:
            raise UsageError(f"{path} has no compression levels (only the FaceForensics++ family has them): "
                             f"leave COMPRESSION empty, not {spec.compression!r}")
        _choose(spec.compression, levels, "compression level", path)
    samples = []
    for method, node in nodes.items():
        where = f"{method}/{split}" + (f"/{spec.compression}" if spec.compression else "")
        for video, entry in _videos(node, spec.compression, where, path).items():
            if not _is_video(entry) or not isinstance(entry["frames"], list):
                raise UsageError(f"{path}: {where}/{video} is not a video entry ({{'label': ..., 'frames': [...]}})")
            label = _label(entry.get("label"), video, where, path, class_map)
            frames = sorted((_resolve(f, spec.root, f"{where}/{video}", path) for f in entry["frames"]), key=_frame_key)
            samples += [Sample(frame, label, f"{method}/{video}", method) for frame in frames]
    if not samples:
        raise UsageError(f"{spec.describe(split)} lists no frames")
    _report_missing(samples, spec, split)
    return samples


def _report_missing(samples: list[Sample], spec: Spec, split: str) -> None:
    """One line for frames the JSON lists that are not on disk; an error when none is."""
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if not missing:
        return
    where = f"relative paths start from ROOT {spec.root}" + (" (the current folder)" if str(spec.root) == "." else "")
    if len(missing) == len(samples):
        raise UsageError(f"none of the {len(samples)} frames that {spec.describe(split)} lists exists "
                         f"(first: {missing[0]}); {where}, the last field of dfb:JSON:SPLIT:COMPRESSION:METHODS:ROOT")
    print(f"{spec.describe(split)}: {len(missing)} of {len(samples)} listed frames are missing ({where}); first: "
          f"{', '.join(missing[:3])}; they are skipped and named in skipped.tsv", file=sys.stderr, flush=True)
