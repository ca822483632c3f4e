"""Synthetic faces, the reference-layout loader and the epoch sampler."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from _maps import interior
from fsfm_fast.data import (FLIP_LABELS, EpochSampler, FaceParsingFolder, augment_params, batches_per_epoch,
                            collate_faces, compute_mean_std, render_face, synthetic, write_synthetic_dataset)

GROUPS = {"brows": {2, 3}, "eyes": {4, 5}, "nose": {6}, "mouth": {7, 8, 9}, "hair": {10}, "skin": {1},
          "background": {0}}
MEAN, STD = (0.45, 0.40, 0.35), (0.25, 0.20, 0.22)


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), 12, size=64, seed=5)


def _patch_labels(parsing: np.ndarray, p: int) -> np.ndarray:
    """bool [L, 11]: which labels occur in each p x p patch."""
    h, w = parsing.shape
    patches = parsing.reshape(h // p, p, w // p, p).transpose(0, 2, 1, 3).reshape(-1, p * p)
    return np.stack([(patches == k).any(axis=1) for k in range(11)], axis=1)


# ---------------------------------------------------------------------------------------- synthetic


def test_faces_hold_every_label_and_every_group():
    n = 50
    present = np.zeros(11, int)
    for i in range(n):
        image, parsing = render_face(np.random.default_rng([11, i]), 224)
        assert image.shape == (224, 224, 3) and image.dtype == np.uint8
        assert parsing.shape == (224, 224) and parsing.dtype == np.uint8
        assert parsing.max() <= 10
        present += np.bincount(parsing.ravel(), minlength=11)[:11] > 0
        patches = _patch_labels(parsing, 16)
        for name, labels in GROUPS.items():
            assert patches[:, sorted(labels)].any(), f"face {i} has no {name} patch"
        boundary = patches[:, 1] & (patches[:, 0] | patches[:, 10])
        assert boundary.any(), f"face {i} has no boundary patch"
    assert (present >= 0.9 * n).all(), f"labels present in too few faces: {present.tolist()}"


def test_faces_vary_and_are_textured():
    faces = [render_face(np.random.default_rng([2, i]), 224) for i in range(8)]
    skins = []
    for image, parsing in faces:
        skin = image[parsing == 1].astype(float)
        assert skin.std(axis=0).mean() > 2.0  # shading and noise, not a flat fill
        skins.append(skin.mean(axis=0))
        assert len({tuple(c) for c in image.reshape(-1, 3)[::7]}) > 500
    assert np.ptp(np.array(skins), axis=0).max() > 30  # skin tones differ between faces
    areas = [(parsing == 10).mean() for _, parsing in faces]
    assert max(areas) > 1.5 * min(areas)  # hair styles differ


def test_render_face_is_deterministic_per_generator_state():
    a = render_face(np.random.default_rng([4, 7]), 96)
    b = render_face(np.random.default_rng([4, 7]), 96)
    c = render_face(np.random.default_rng([4, 8]), 96)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_render_face_rejects_bad_arguments():
    with pytest.raises(TypeError, match="rng"):
        render_face(3)
    with pytest.raises(ValueError, match="size"):
        render_face(np.random.default_rng(0), 8)


def test_written_face_depends_only_on_seed_and_index(tmp_path):
    # 64 faces go through the process pool, 5 are written serially: the shared faces must agree
    big = write_synthetic_dataset(tmp_path / "big", 64, size=48, seed=9, workers=2)
    small = write_synthetic_dataset(tmp_path / "small", 5, size=48, seed=9, workers=1)
    other = write_synthetic_dataset(tmp_path / "other", 5, size=48, seed=10, workers=1)
    assert len(list((big / "images").glob("*.png"))) == 64
    for f in sorted((small / "images").iterdir()):
        assert f.read_bytes() == (big / "images" / f.name).read_bytes()
        m = f"parsing_maps/{f.stem}.npy"
        assert np.array_equal(np.load(small / m), np.load(big / m))
        assert not np.array_equal(np.load(small / m), np.load(other / m))


def test_written_layout_reads_back_exactly(tmp_path):
    root = write_synthetic_dataset(tmp_path / "faces", 4, size=64, seed=1)
    stems = sorted(f.stem for f in (root / "images").iterdir())
    assert stems == sorted(f.stem for f in (root / "parsing_maps").iterdir()) and len(stems) == 4
    for i, stem in enumerate(stems):
        image, parsing = render_face(np.random.default_rng([1, i]), 64)
        with Image.open(root / "images" / f"{stem}.png") as im:
            assert im.mode == "RGB" and im.format == "PNG"
            assert np.array_equal(np.asarray(im), image)
        stored = np.load(root / "parsing_maps" / f"{stem}.npy", allow_pickle=False)
        assert stored.dtype == np.uint8 and np.array_equal(stored, parsing)
    manifest = json.loads((root / "synthetic_manifest.json").read_text())
    assert (manifest["num_images"], manifest["size"], manifest["seed"]) == (4, 64, 1)


def test_writer_is_idempotent(tmp_path):
    root = write_synthetic_dataset(tmp_path / "faces", 6, size=48, seed=2)
    files = sorted((root / "images").iterdir()) + sorted((root / "parsing_maps").iterdir())
    for f in files:
        os.utime(f, ns=(1, 1))
    assert write_synthetic_dataset(root, 6, size=48, seed=2) == root
    assert all(f.stat().st_mtime_ns == 1 for f in files)  # nothing rewritten

    # a smaller request drops the faces beyond it and keeps the others
    write_synthetic_dataset(root, 3, size=48, seed=2)
    assert sorted(f.name for f in (root / "images").iterdir()) == [f.name for f in files[:3]]
    assert all(f.stat().st_mtime_ns == 1 for f in files[:3])
    with pytest.raises(ValueError, match="different synthetic dataset"):
        write_synthetic_dataset(root, 3, size=48, seed=3)
    foreign = tmp_path / "real"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "person.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="not synthetic"):
        write_synthetic_dataset(foreign, 2, size=48)


def test_writer_completes_an_interrupted_run(tmp_path, monkeypatch):
    root = tmp_path / "faces"
    real_write = synthetic._write_one
    written = []

    def dies_after_four(job):
        if len(written) == 4:
            raise KeyboardInterrupt
        written.append(real_write(job))

    monkeypatch.setattr(synthetic, "_write_one", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(root, 8, size=48, seed=4, workers=1)
    monkeypatch.setattr(synthetic, "_write_one", real_write)
    assert not (root / "synthetic_manifest.json").exists()
    done = sorted((root / "images").iterdir())
    assert len(done) == 4
    for f in done:
        os.utime(f, ns=(1, 1))
    (root / "images" / "synth_0000005.png.tmp").write_bytes(b"half a file")

    write_synthetic_dataset(root, 8, size=48, seed=4, workers=1)
    assert all(f.stat().st_mtime_ns == 1 for f in done)  # the finished faces were kept
    assert len(list((root / "images").iterdir())) == 8 and not list(root.rglob("*.tmp"))
    assert json.loads((root / "synthetic_manifest.json").read_text())["num_images"] == 8
    reference = write_synthetic_dataset(tmp_path / "reference", 8, size=48, seed=4, workers=1)
    for f in (reference / "images").iterdir():
        assert f.read_bytes() == (root / "images" / f.name).read_bytes()

    # an interrupted run with another seed leaves faces that must not be reused
    monkeypatch.setattr(synthetic, "_write_one", dies_after_four)
    written.clear()
    (root / "synthetic_manifest.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(root, 8, size=48, seed=5, workers=1)
    monkeypatch.setattr(synthetic, "_write_one", real_write)
    write_synthetic_dataset(root, 8, size=48, seed=4, workers=1)
    for f in (reference / "images").iterdir():
        assert f.read_bytes() == (root / "images" / f.name).read_bytes()


# ------------------------------------------------------------------------------------------- loader


def test_loader_shapes_dtypes_and_normalisation(faces_root):
    ds = FaceParsingFolder(faces_root, 64, MEAN, STD)
    assert len(ds) == 12 and ds.missing_maps == 0
    item = ds[3]
    assert item["ok"] and item["reason"] == "" and item["path"].endswith(".png")
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 64)
    assert item["parsing"].dtype == torch.uint8 and item["parsing"].shape == (64, 64)
    with Image.open(item["path"]) as im:
        raw = np.asarray(im, np.float32) / 255.0
    expected = (raw - np.float32(MEAN)) / np.float32(STD)
    np.testing.assert_allclose(item["image"].numpy(), expected.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    stem = Path(item["path"]).stem
    assert np.array_equal(item["parsing"].numpy(), np.load(faces_root / "parsing_maps" / f"{stem}.npy"))
    # an (index, epoch) key without augmentation is the same sample
    assert torch.equal(ds[(3, 5)]["image"], item["image"])


def test_loader_resizes_image_bicubic_and_map_nearest(faces_root):
    ds = FaceParsingFolder([str(faces_root)], 40, (0, 0, 0), (1, 1, 1))
    item = ds[0]
    assert item["image"].shape == (3, 40, 40) and item["parsing"].shape == (40, 40)
    with Image.open(item["path"]) as im:
        want = np.asarray(im.resize((40, 40), Image.BICUBIC), np.float32) / 255.0
    np.testing.assert_allclose(item["image"].numpy().transpose(1, 2, 0), want, atol=1e-6)
    stem = Path(item["path"]).stem
    labels = np.load(faces_root / "parsing_maps" / f"{stem}.npy")
    assert np.array_equal(item["parsing"].numpy(), np.asarray(Image.fromarray(labels).resize((40, 40), Image.NEAREST)))


PALETTE = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
                    [255, 0, 255], [0, 255, 255], [128, 0, 0], [0, 128, 0], [0, 0, 128]], np.uint8)


@pytest.fixture(scope="module")
def palette_root(tmp_path_factory) -> Path:
    """Faces whose pixel colour is the palette colour of their label."""
    root = tmp_path_factory.mktemp("palette")
    (root / "images").mkdir()
    (root / "parsing_maps").mkdir()
    for i in range(4):
        _, parsing = render_face(np.random.default_rng([21, i]), 128)
        Image.fromarray(PALETTE[parsing]).save(root / "images" / f"face{i}.png")
        np.save(root / "parsing_maps" / f"face{i}.npy", parsing)
    return root


def test_augmentation_moves_image_and_map_together(palette_root):
    ds = FaceParsingFolder(palette_root, 96, (0, 0, 0), (1, 1, 1), augment=True, seed=3)
    flips, boxes = set(), set()
    for index in range(len(ds)):
        for epoch in range(6):
            item = ds[(index, epoch)]
            assert item["ok"]
            box, flip = augment_params(3, epoch, index, 128, 128)
            flips.add(flip)
            boxes.add(box)
            rgb = item["image"].numpy().transpose(1, 2, 0) * 255.0
            colour_label = np.argmin(((rgb[:, :, None, :] - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1), -1)
            labels = item["parsing"].numpy()
            inside = interior(labels)
            assert inside.mean() > 0.5
            # the image shows the source labels mirrored; the map carries them swapped when flipped
            expected = FLIP_LABELS[labels] if flip else labels
            agree = (colour_label == expected)[inside].mean()
            assert agree > 0.999, f"sample {index} epoch {epoch}: image and map agree on {agree:.4f}"
    assert flips == {True, False} and len(boxes) > 10


def test_flip_keeps_left_labels_on_the_subjects_left(palette_root):
    # the generator puts the subject's left eye/brow (4/2) on the image's right; a mirrored face
    # must still carry 4/2 on its image right, or the convention would flip with the augmentation
    ds = FaceParsingFolder(palette_root, 128, (0, 0, 0), (1, 1, 1), augment=True, seed=0)
    checked = {True: 0, False: 0}
    for index in range(len(ds)):
        for epoch in range(12):
            _, flip = augment_params(0, epoch, index, 128, 128)
            labels = ds[(index, epoch)]["parsing"].numpy()
            cols = np.arange(labels.shape[1])[None, :].repeat(labels.shape[0], 0)
            for left, right in ((4, 5), (2, 3)):
                if (labels == left).sum() > 4 and (labels == right).sum() > 4:
                    assert cols[labels == left].mean() > cols[labels == right].mean()
                    checked[flip] += 1
    assert checked[True] > 5 and checked[False] > 5


def test_augmentation_is_deterministic_per_seed_epoch_index(palette_root):
    a = FaceParsingFolder(palette_root, 64, MEAN, STD, augment=True, seed=1)
    b = FaceParsingFolder(palette_root, 64, MEAN, STD, augment=True, seed=1)
    c = FaceParsingFolder(palette_root, 64, MEAN, STD, augment=True, seed=2)
    assert torch.equal(a[(2, 4)]["image"], b[(2, 4)]["image"])
    assert torch.equal(a[(2, 4)]["parsing"], b[(2, 4)]["parsing"])
    assert not torch.equal(a[(2, 4)]["image"], a[(2, 5)]["image"])
    assert not torch.equal(a[(2, 4)]["image"], c[(2, 4)]["image"])


def test_batches_do_not_depend_on_the_worker_count(palette_root):
    ds = FaceParsingFolder(palette_root, 48, MEAN, STD, augment=True, seed=7)

    def batches(workers: int) -> list[dict]:
        sampler = EpochSampler(len(ds), seed=7, batch_size=2)
        sampler.set_epoch(3)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate_faces)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 2
    for x, y in zip(serial, parallel):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["parsing"], y["parsing"])


def _good_sample(root: Path, stem: str, seed: int, size: int = 32, map_dtype=np.uint8) -> None:
    image, parsing = render_face(np.random.default_rng(seed), size)
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    np.save(root / "parsing_maps" / f"{stem}.npy", parsing.astype(map_dtype))


@pytest.fixture()
def broken_root(tmp_path) -> Path:
    root = tmp_path / "broken"
    (root / "images").mkdir(parents=True)
    (root / "parsing_maps").mkdir()
    _good_sample(root, "a_good", 0)
    _good_sample(root, "b_good_int16", 1, map_dtype=np.int16)  # another integer dtype whose values fit
    _good_sample(root, "c_truncated", 2)
    png = root / "images" / "c_truncated.png"
    png.write_bytes(png.read_bytes()[:200])
    _good_sample(root, "d_not_an_image", 3)
    (root / "images" / "d_not_an_image.png").write_text("this is not a picture")
    _good_sample(root, "e_label_12", 4)
    bad = np.load(root / "parsing_maps" / "e_label_12.npy")
    bad[5, 5] = 12
    np.save(root / "parsing_maps" / "e_label_12.npy", bad)
    _good_sample(root, "f_wrong_shape", 5)
    np.save(root / "parsing_maps" / "f_wrong_shape.npy", np.zeros((32, 31), np.uint8))
    _good_sample(root, "g_no_map", 6)
    (root / "parsing_maps" / "g_no_map.npy").unlink()
    _good_sample(root, "h_map_not_npy", 7)
    (root / "parsing_maps" / "h_map_not_npy.npy").write_bytes(b"\x00garbage")
    return root


def test_corrupt_samples_are_skipped_counted_and_named(broken_root):
    with pytest.warns(UserWarning, match=r"1 image\(s\) have no parsing map.*g_no_map"):
        ds = FaceParsingFolder(broken_root, 32, MEAN, STD)
    assert ds.missing_maps == 1 and len(ds) == 7
    items = [ds[i] for i in range(len(ds))]
    assert [x["ok"] for x in items] == [True, True, False, False, False, False, False]
    for x in items:
        assert x["image"].shape == (3, 32, 32) and x["parsing"].shape == (32, 32)
    reasons = {Path(x["path"]).stem: x["reason"] for x in items if not x["ok"]}
    assert "unreadable image" in reasons["c_truncated"] and "unreadable image" in reasons["d_not_an_image"]
    assert "0..10" in reasons["e_label_12"] and "shape" in reasons["f_wrong_shape"]
    assert "unreadable parsing map" in reasons["h_map_not_npy"]

    batch = collate_faces(items)
    assert batch["images"].shape == (2, 3, 32, 32) and batch["parsing"].dtype == torch.uint8
    assert batch["n_skipped"] == 5 and len(batch["skipped"]) == 5
    for stem in ("c_truncated", "d_not_an_image", "e_label_12", "f_wrong_shape", "h_map_not_npy"):
        assert any(stem in path and reason for path, reason in batch["skipped"]), stem
    assert sorted(Path(p).stem for p in batch["skipped_paths"]) == sorted(reasons)

    empty = collate_faces(items[2:4])
    assert empty["images"].shape == (0, 3, 32, 32) and empty["parsing"].shape == (0, 32, 32)
    assert empty["n_skipped"] == 2

    loader = DataLoader(ds, batch_size=4, collate_fn=collate_faces)
    assert sum(b["images"].shape[0] for b in loader) == 2
    assert sum(b["n_skipped"] for b in loader) == 5


def test_loader_rejects_bad_configuration(tmp_path, faces_root):
    with pytest.raises(ValueError, match="images/"):
        FaceParsingFolder(tmp_path, 32, MEAN, STD)
    with pytest.raises(ValueError, match="std"):
        FaceParsingFolder(faces_root, 32, MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="3 values"):
        FaceParsingFolder(faces_root, 32, (0.5, 0.5), STD)
    ds = FaceParsingFolder(faces_root, 32, MEAN, STD)
    with pytest.raises(IndexError):
        ds[len(ds)]


def _numpy_stats(paths: list[Path], size: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            pixels.append(np.asarray(im, np.float64).reshape(-1, 3) / 255.0)
    x = np.concatenate(pixels)
    return x.mean(0), x.std(0)


def test_compute_mean_std_matches_numpy(broken_root, faces_root):
    good = [broken_root / "images" / "a_good.png", broken_root / "images" / "b_good_int16.png"]
    with pytest.warns(UserWarning):
        mean, std = compute_mean_std(broken_root, 32, batch_size=3)
    want_mean, want_std = _numpy_stats(good, 32)
    np.testing.assert_allclose(mean, want_mean, atol=1e-6)
    np.testing.assert_allclose(std, want_std, atol=1e-6)

    # two roots, resized, several batches
    images = sorted((faces_root / "images").iterdir())
    with pytest.warns(UserWarning):
        mean, std = compute_mean_std([faces_root, broken_root], 24, batch_size=5)
    want_mean, want_std = _numpy_stats(images + good, 24)
    np.testing.assert_allclose(mean, want_mean, atol=1e-5)
    np.testing.assert_allclose(std, want_std, atol=1e-5)

    sub_a = compute_mean_std(faces_root, 24, max_samples=4, seed=1)
    sub_b = compute_mean_std(faces_root, 24, max_samples=4, seed=1)
    full = compute_mean_std(faces_root, 24)
    assert sub_a == sub_b and sub_a != full
    np.testing.assert_allclose(compute_mean_std(faces_root, 24, max_samples=len(images)), full)


# ------------------------------------------------------------------------------------------ sampler


def test_sampler_covers_every_index_once_across_ranks():
    n = 40
    ranks = [EpochSampler(n, num_replicas=2, rank=r, seed=5) for r in range(2)]
    keys = [list(s) for s in ranks]
    assert all(len(k) == len(s) == 20 for k, s in zip(keys, ranks))
    indices = [i for k in keys for i, _ in k]
    assert sorted(indices) == list(range(n))
    assert {e for k in keys for _, e in k} == {0}
    # the same split DistributedSampler makes
    for r in range(2):
        ref = DistributedSampler(list(range(n)), num_replicas=2, rank=r, seed=5, drop_last=True)
        ref.set_epoch(0)
        assert [i for i, _ in keys[r]] == list(ref)


def test_sampler_drop_last_gives_every_rank_the_same_full_batches():
    n, batch, world = 103, 5, 2
    shares = [list(EpochSampler(n, world, r, seed=1, batch_size=batch)) for r in range(world)]
    assert [len(s) for s in shares] == [50, 50]
    flat = [i for s in shares for i, _ in s]
    assert len(set(flat)) == 100
    assert batches_per_epoch(n, batch, world) == 10 == len(shares[0]) // batch
    padded = [list(EpochSampler(n, world, r, seed=1, drop_last=False)) for r in range(world)]
    assert [len(s) for s in padded] == [52, 52] and {i for s in padded for i, _ in s} == set(range(n))
    with pytest.raises(ValueError, match="cannot give"):
        EpochSampler(9, 2, 0, batch_size=5)


def test_sampler_order_changes_with_the_epoch_and_not_with_the_rank_count():
    s = EpochSampler(64, seed=0)
    s.set_epoch(0)
    first = [i for i, _ in s]
    s.set_epoch(1)
    second = list(s)
    assert {e for _, e in second} == {1}
    assert [i for i, _ in second] != first and sorted(i for i, _ in second) == sorted(first)
    s.set_epoch(0)
    assert [i for i, _ in s] == first
    unshuffled = EpochSampler(10, shuffle=False)
    assert [i for i, _ in unshuffled] == list(range(10))


def test_sampler_start_index_resumes_the_tail_of_the_same_order():
    for rank in range(2):
        s = EpochSampler(50, num_replicas=2, rank=rank, seed=3, batch_size=4)
        s.set_epoch(7)
        full = list(s)
        assert len(full) == 24
        s.set_epoch(7, start_index=8)
        assert len(s) == 16 and list(s) == full[8:]
        s.set_epoch(7, start_index=24)
        assert len(s) == 0 and list(s) == []
        with pytest.raises(ValueError, match="start_index"):
            s.set_epoch(7, start_index=25)
