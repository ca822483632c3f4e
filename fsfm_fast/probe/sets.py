"""The labelled sets a probe reads, with fine-tuning's readers (``data/labelled.py``): a root with
``train/`` and ``test/`` class folders, or a train and a test spec (folders of class folders, split files).

Two kinds of classes:

- ``binary``: real = 0 and fake = 1 by the folder-name rule (or ``--class_map``), as fine-tuning labels
  them; several fake folders are one class;
- ``classes``: one class per class folder (identities): class ``i`` is the ``i``-th name, in sorted
  order, of the train split's class folders; a test folder absent from train is an error.

``auto`` is ``binary`` when the folder-name rule names every class folder, ``classes`` otherwise.
Split files carry real/fake labels only, so they are always ``binary``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.labelled import samples_from
from ..data.samples import LABEL_NAMES, Sample, folder_label
from ..runtime.cli import UsageError



@dataclass
class ProbeSet:
    name: str
    train: list[Sample]
    test: list[Sample]
    classes: tuple[str, ...]  # class index -> name
    train_y: np.ndarray  # [len(train)] int64
    test_y: np.ndarray


def class_folders(spec: str, split: str) -> list[str] | None:
    """The class folder names a spec's ``split`` holds, or None when a path of it is a split file."""
    names = []
    for raw in filter(None, (p.strip() for p in spec.split(","))):
        path = Path(raw)
        if path.is_file():
            return None
        folder = path / split if (path / split).is_dir() else path
        if folder.is_dir():
            names += [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(set(names))


def _named_by_rule(names: list[str], class_map: dict | None) -> bool:
    try:
        for n in names:
            folder_label(n, class_map)
    except UsageError:
        return False
    return True


def read_probe_set(name: str, train_spec: str, test_spec: str, labelling: str = "auto",
                   class_map: dict | None = None) -> ProbeSet:
    """The train and test samples of a set and their class indices (see the module docstring)."""
    folders = [class_folders(train_spec, "train"), class_folders(test_spec, "test")]
    if labelling == "auto":
        labelling = "binary" if None in folders or _named_by_rule(folders[0] + folders[1], class_map) else "classes"
    if labelling == "binary":
        train, test = samples_from(train_spec, "train", class_map), samples_from(test_spec, "test", class_map)
        train_y = np.array([s.label for s in train], dtype=np.int64)
        test_y = np.array([s.label for s in test], dtype=np.int64)
        return ProbeSet(name, train, test, LABEL_NAMES, train_y, test_y)
    if None in folders:
        raise UsageError(f"{name}: a split file carries real/fake labels only; a multi-class probe needs class folders")
    # every folder is its own class: the reader's real/fake label is not used, so map each name to one
    any_label = {n.lower(): 0 for n in folders[0] + folders[1]}
    train, test = samples_from(train_spec, "train", any_label), samples_from(test_spec, "test", any_label)
    classes = tuple(sorted({s.cls for s in train}))
    unknown = sorted({s.cls for s in test} - set(classes))
    if unknown:
        raise UsageError(f"{name}: test class folders with no train images: {', '.join(unknown[:5])}")
    if len(classes) < 2:
        raise UsageError(f"{name}: a probe needs at least two classes, found {list(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    return ProbeSet(name, train, test, classes, np.array([index[s.cls] for s in train], dtype=np.int64),
                    np.array([index[s.cls] for s in test], dtype=np.int64))

