"""Small properties that the rest of the suite left unchecked, so that a plausible one-line bug in each
would have passed: the checkpoint write order, the fine-tuning label rules, the face box a stored crop
implies, and the EMA momentum schedule."""
import math
import os
import stat

import pytest
import torch

from fsfm_fast.engine import checkpoint
from fsfm_fast.data.samples import FAKE, REAL, folder_label
from fsfm_fast.prepare.faces import Box, box_in_crop, crop_region, implied_box
from fsfm_fast.engine.schedules import ema_momentum

# ------------------------------------------------------------------------------ checkpoint


def _serialize_without_flushing(obj, f):
    f.write(b"\x00" * 1000)  # stays in the file object's buffer until someone flushes it


@pytest.mark.parametrize("serializer", ["torch.save", "one that does not flush"])
def test_checkpoint_bytes_reach_the_disk_before_the_rename(tmp_path, monkeypatch, serializer):
    """The temporary file is complete in the OS (flushed) and fsynced before it replaces the checkpoint:
    a crash right after the rename must not leave a name pointing at missing bytes. torch.save happens
    to flush its file; save_atomic must not rely on that."""
    if serializer != "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", _serialize_without_flushing)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", stat.S_ISREG(info.st_mode), info.st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.getsize(src), None))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "checkpoint.pth"
    checkpoint.save_atomic({"weights": torch.arange(5000, dtype=torch.float32)}, path)
    size = path.stat().st_size
    file_syncs = [i for i, e in enumerate(events) if e[0] == "fsync" and e[1]]
    replaces = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert len(replaces) == 1 and file_syncs and file_syncs[0] < replaces[0], events
    assert events[file_syncs[0]][2] == size  # every byte was flushed out of Python's buffer by then
    assert events[replaces[0]][1] == size


# ------------------------------------------------------------------------------ fine-tuning labels


@pytest.mark.parametrize("name, mapped", [("fake_b", REAL), ("Celeb-real", FAKE), ("youtube", FAKE)])
def test_class_map_wins_over_a_matching_naming_rule(name, mapped):
    by_rule = folder_label(name)
    assert by_rule != mapped  # the rule alone says the opposite ...
    assert folder_label(name, {name.lower(): mapped}) == mapped  # ... and the explicit map wins
    assert folder_label(name, {"some_other_folder": mapped}) == by_rule  # an unrelated entry changes nothing


@pytest.mark.parametrize("name, label", [("Celeb-fake", FAKE), ("Celeb-synthesis-fake", FAKE), ("celeb-fake", FAKE),
                                         ("Celeb-real", REAL), ("YouTube-real", REAL)])
def test_dash_suffixed_folder_names(name, label):
    """Celeb-DF's folder names: ``x-fake`` and ``x-real``, in any case."""
    assert folder_label(name) == label


# ------------------------------------------------------------------------------ crops


@pytest.mark.parametrize("size, scale", [(224, 1.3), (260, 1.3), (256, 1.0), (112, 2.0)])
def test_implied_box_is_the_face_box_of_an_unclipped_crop(size, scale):
    """A face well inside its image, cropped the reference way: its box in the crop is the implied box."""
    face = Box(4000.0, 3000.0, 5000.0, 4000.0)  # the crop corners are whole pixels: no rounding
    region = crop_region(face, 20000, 20000, scale)
    assert region[2] - region[0] == pytest.approx(scale * face.width)  # not clipped
    expected = box_in_crop(face, region, size)
    box = implied_box(size, scale)
    assert box.as_list() == pytest.approx(expected.as_list())
    assert box.width == pytest.approx(size / scale) and (box.x0 + box.x1) / 2 == pytest.approx(size / 2)


def test_implied_box_values():
    assert implied_box(260, 1.3).as_list() == pytest.approx([30.0, 30.0, 230.0, 230.0])
    assert implied_box(224, 1.0).as_list() == pytest.approx([0.0, 0.0, 224.0, 224.0])


# ------------------------------------------------------------------------------ EMA momentum


@pytest.mark.parametrize("base, total", [(0.996, 100), (0.5, 7), (0.99, 1)])
def test_ema_momentum_rises_from_its_base_to_one(base, total):
    values = [ema_momentum(i, base_momentum=base, total_iters=total) for i in range(total + 1)]
    assert values[0] == pytest.approx(base, abs=1e-12)
    assert values[-1] == 1.0
    assert all(a < b for a, b in zip(values, values[1:])), values  # strictly rising in between
    if total > 2:  # the cosine shape: half-way between base and 1 at the middle step
        assert ema_momentum(total / 2, base_momentum=base, total_iters=total) == pytest.approx((base + 1) / 2)
    assert not any(math.isnan(v) for v in values)
