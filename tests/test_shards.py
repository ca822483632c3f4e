"""Shards: make_shards (round trip, validation, resume), the shard readers, and the loader builder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _shard_helpers import fingerprint, map_agreement, palette_faces, shard
from PIL import Image

from fsfm_fast.data import FLIP_LABELS, make_shards, render_face, write_synthetic_dataset
from fsfm_fast.data.loaders import build_loader, dataset_mean_std, detect_layout, face_dataset
from fsfm_fast.data.shards import (
    DeviceDecoder,
    ShardDataset,
    collate_raw,
    crop_flip_resize,
    format_index,
    load_manifest,
    read_index,
)
from fsfm_fast.engine.run_log import read_log
from fsfm_fast.formats import MEAN_STD_FILE
from fsfm_fast.pretrain.__main__ import main as pretrain_main
from fsfm_fast.runtime.cli import UsageError

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), 24, size=64, seed=8)


@pytest.fixture(scope="module")
def jpg_shards(faces, tmp_path_factory) -> Path:
    return shard(faces, tmp_path_factory.mktemp("jpg") / "s", "--samples_per_shard", "7", "--workers", "2")


@pytest.fixture(scope="module")
def png_shards(faces, tmp_path_factory) -> Path:
    return shard(faces, tmp_path_factory.mktemp("png") / "s", "--png", "--samples_per_shard", "10", "--workers", "1")


@pytest.fixture(scope="module")
def palette_shards(tmp_path_factory) -> Path:
    root = palette_faces(tmp_path_factory.mktemp("palette") / "faces", 6, 64)
    return shard(root, root.parent / "shards", "--png", "--samples_per_shard", "4", "--workers", "1")


def _source(faces: Path, member: str) -> tuple[np.ndarray, np.ndarray]:
    """Source image and map of a shard member ``<tar>:<root>_<stem>.<ext>``."""
    stem = member.rsplit(":", 1)[1].split(".", 1)[0].split("_", 1)[1]
    with Image.open(faces / "images" / f"{stem}.png") as im:
        image = np.asarray(im.convert("RGB"))
    return image, np.load(faces / "parsing_maps" / f"{stem}.npy")


# ------------------------------------------------------------------------------------ conversion


def test_png_shards_round_trip_exactly(faces, png_shards):
    manifest = load_manifest(png_shards)
    assert manifest["count"] == 24 and manifest["image_size"] == [64, 64] and manifest["image_ext"] == "png"
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 4]
    ds = ShardDataset(png_shards, 64, ZERO, ONE)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["ok"], item["reason"]
        image, labels = _source(faces, item["path"])
        np.testing.assert_array_equal((item["image"].numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0), image)
        np.testing.assert_array_equal(item["parsing"].numpy(), labels)
        seen.add(item["path"].rsplit(":", 1)[1])
    assert len(seen) == 24


def test_jpeg_shards_keep_labels_exact_and_pixels_close(faces, jpg_shards):
    ds = ShardDataset(jpg_shards, 64, ZERO, ONE)
    assert len(ds) == 24
    errors = []
    for i in range(len(ds)):
        item = ds[i]
        image, labels = _source(faces, item["path"])
        np.testing.assert_array_equal(item["parsing"].numpy(), labels)
        errors.append(np.abs(item["image"].numpy().transpose(1, 2, 0) * 255 - image).mean())
    # quality 95 with 4:2:0 on textured synthetic faces: a few grey levels on average
    assert max(errors) < 6.0, errors


def test_manifest_statistics_are_exact(faces, jpg_shards):
    manifest = load_manifest(jpg_shards)
    images = [np.asarray(Image.open(p).convert("RGB"), np.float64) / 255 for p in sorted((faces / "images").iterdir())]
    maps = [np.load(p) for p in sorted((faces / "parsing_maps").iterdir())]
    pixels = np.concatenate([x.reshape(-1, 3) for x in images])
    np.testing.assert_allclose(manifest["mean"], pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(manifest["std"], pixels.std(0), rtol=1e-9)
    assert manifest["label_histogram"] == np.bincount(np.concatenate([m.ravel() for m in maps]), minlength=11).tolist()
    assert dataset_mean_std([jpg_shards], 64) == (manifest["mean"], manifest["std"])


def test_mean_std_over_mixed_layouts(faces, png_shards):
    # the same 24 faces twice, once per layout: the statistics of one copy
    mean, std = dataset_mean_std([faces, png_shards], 64)
    manifest = load_manifest(png_shards)
    np.testing.assert_allclose(mean, manifest["mean"], atol=1e-6)
    np.testing.assert_allclose(std, manifest["std"], atol=1e-6)


def test_index_is_what_dalis_wds2idx_writes(jpg_shards, tmp_path):
    # DALI ships wds2idx as a command-line tool next to the interpreter; with DALI installed it
    # must be found and run, never skipped
    pytest.importorskip("nvidia.dali", reason="DALI's wds2idx tool comes with nvidia-dali")
    tool = shutil.which("wds2idx", path=str(Path(sys.executable).parent)) or shutil.which("wds2idx")
    assert tool, "nvidia-dali is installed but its wds2idx command is not on PATH"
    for entry in load_manifest(jpg_shards)["shards"]:
        ours = jpg_shards / entry["index"]
        theirs = tmp_path / entry["index"]
        run = subprocess.run([tool, str(jpg_shards / entry["tar"]), str(theirs)], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        assert ours.read_bytes() == theirs.read_bytes()


def test_index_format_round_trips(tmp_path):
    samples = [[("jpg", 512, 100, "k0.jpg"), ("parse.png", 1536, 9, "k0.parse.png")]]
    path = tmp_path / "a.idx"
    path.write_text(format_index(samples))
    assert path.read_text() == "v1.2 1\njpg 512 100 k0.jpg parse.png 1536 9 k0.parse.png\n"
    assert read_index(path) == [{"jpg": (512, 100), "parse.png": (1536, 9)}]
    path.write_text("v1.2 2\njpg 512 100 k0.jpg\n")
    with pytest.raises(ValueError, match="announces 2"):
        read_index(path)


def _broken_root(tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    (root / "images").mkdir(parents=True)
    (root / "parsing_maps").mkdir()
    for i, stem in enumerate(["a_good", "b_good", "c_truncated", "d_text", "e_label_12", "f_shape", "g_no_map",
                              "h_bad_npy", "i_big", "j.dotted name"]):
        image, labels = render_face(np.random.default_rng([3, i]), 48 if stem != "i_big" else 56)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        np.save(root / "parsing_maps" / f"{stem}.npy", labels)
    png = root / "images" / "c_truncated.png"
    png.write_bytes(png.read_bytes()[:300])
    (root / "images" / "d_text.png").write_text("not a picture")
    bad = np.load(root / "parsing_maps" / "e_label_12.npy")
    bad[3, 3] = 12
    np.save(root / "parsing_maps" / "e_label_12.npy", bad)
    np.save(root / "parsing_maps" / "f_shape.npy", np.zeros((48, 47), np.uint8))
    (root / "parsing_maps" / "g_no_map.npy").unlink()
    (root / "parsing_maps" / "h_bad_npy.npy").write_bytes(b"\x00garbage")
    return root


def test_corrupt_inputs_are_skipped_counted_and_reported(tmp_path):
    out = shard(_broken_root(tmp_path), tmp_path / "out", "--samples_per_shard", "3", "--workers", "2")
    manifest = load_manifest(out)
    assert manifest["count"] == 3 and manifest["skipped"] == 7
    lines = (out / "skipped.tsv").read_text().splitlines()[1:]
    reasons = {Path(line.split("\t")[0]).stem: line.split("\t")[1] for line in lines}
    assert set(reasons) == {"c_truncated", "d_text", "e_label_12", "f_shape", "g_no_map", "h_bad_npy", "i_big"}
    assert "unreadable image" in reasons["c_truncated"] and "unreadable image" in reasons["d_text"]
    assert "0..10" in reasons["e_label_12"] and "shape" in reasons["f_shape"]
    assert "no parsing map" in reasons["g_no_map"] and "unreadable parsing map" in reasons["h_bad_npy"]
    assert "56x56" in reasons["i_big"] and "48x48" in reasons["i_big"]
    ds = ShardDataset(out, 48, ZERO, ONE)
    assert all(ds[i]["ok"] for i in range(len(ds)))
    assert any(ds[i]["path"].endswith(":0_j_dotted_name.jpg") for i in range(len(ds)))  # a key without dots


def test_damaged_shard_bytes_are_skipped_by_the_reader(jpg_shards, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in jpg_shards.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    entry = load_manifest(copy)["shards"][0]
    first = read_index(copy / entry["index"])[0]
    second = read_index(copy / entry["index"])[1]
    tar = bytearray((copy / entry["tar"]).read_bytes())
    offset, size = first["jpg"]
    tar[offset:offset + size] = b"\xff" * size  # not a JPEG at all
    offset, size = second["jpg"]
    tar[offset + 700:offset + size] = b"\0" * (size - 700)  # a valid header, then nothing
    (copy / entry["tar"]).write_bytes(bytes(tar))
    ds = ShardDataset(copy, 32, ZERO, ONE)
    item = ds[0]
    assert not item["ok"] and "unreadable image" in item["reason"] and entry["tar"] in item["path"]
    assert ds[1]["ok"]  # PIL decodes a JPEG cut short with a warning only; libjpeg-turbo via torchvision refuses
    # the raw path finds the first at the header, the second only when the batch is decoded
    raw = collate_raw([ds.raw_item(i) for i in range(4)])
    assert raw["n_skipped"] == 1 and len(raw["image"]) == 3 and "unreadable" in raw["skipped"][0][1]
    batch = DeviceDecoder(32, ZERO, ONE)(raw)
    assert batch["images"].shape == (2, 3, 32, 32) and batch["parsing"].shape == (2, 32, 32)
    assert batch["n_skipped"] == 2 and len(batch["skipped"]) == 2
    assert batch["skipped_paths"][1].endswith(".jpg") and "unreadable image" in batch["skipped"][1][1]


def test_truncated_tar_names_the_shard_and_the_offset(jpg_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(jpg_shards, copy)
    entry = load_manifest(copy)["shards"][0]
    tar = copy / entry["tar"]
    offsets = [sample["jpg"][0] for sample in read_index(copy / entry["index"])]
    tar.write_bytes(tar.read_bytes()[:offsets[3] - 700])  # cut inside sample 2, before sample 3's header
    ds = ShardDataset(copy, 32, ZERO, ONE)
    for index in (3, entry["count"] - 1):
        item = ds[index]
        assert not item["ok"] and "shorter than its index" in item["reason"]
        assert item["path"] == f"{tar}:<sample {index} at byte {offsets[index]}>"
    assert ds[0]["ok"] and ds[0]["path"].endswith(".jpg")


def test_make_shards_errors_are_one_line(faces, tmp_path, capsys):
    from fsfm_fast.runtime import cli
    run = lambda *argv: cli.run(make_shards.main, "fsfm_fast.data.make_shards", list(argv))  # noqa: E731
    assert run(str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")) == 2
    assert capsys.readouterr().err == f"fsfm_fast.data.make_shards: error: source folder {tmp_path / 'nowhere'} does not exist\n"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, why in ((a_file, "is a file, not a folder"), (Path("/proc/fsfm_shards"), "cannot be written")):
        assert run(str(faces), "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {out}" in err and why in err, err
    assert not (tmp_path / "out").exists()


def test_make_shards_resumes_and_leaves_finished_shards_alone(faces, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = make_shards.write_shard
    calls = []

    def dies_on_third(job):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(job[1])
        return real(job)

    monkeypatch.setattr(make_shards, "write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        make_shards.main([str(faces), "--out", str(out), "--samples_per_shard", "5", "--workers", "1"])
    monkeypatch.setattr(make_shards, "write_shard", real)
    assert not (out / "dataset.json").exists()
    done = sorted(out.glob("shard-*.tar"))
    assert len(done) == 2
    for f in done:
        os.utime(f, ns=(1, 1))
    (out / "shard-000002.tar.tmp").write_bytes(b"half a shard")

    assert make_shards.main([str(faces), "--out", str(out), "--samples_per_shard", "5", "--workers", "2"]) == 0
    assert all(f.stat().st_mtime_ns == 1 for f in done)  # finished shards untouched
    assert not list(out.glob("*.tmp")) and load_manifest(out)["count"] == 24
    clean = shard(faces, tmp_path / "clean", "--samples_per_shard", "5", "--workers", "1")
    for f in sorted(clean.glob("shard-*")):
        assert f.read_bytes() == (out / f.name).read_bytes(), f.name  # deterministic assignment and bytes

    with pytest.raises(UsageError, match="other sources or settings"):
        make_shards.main([str(faces), "--out", str(out), "--samples_per_shard", "5", "--quality", "80"])


def test_shard_size_target_sets_samples_per_shard(faces, tmp_path):
    out = shard(faces, tmp_path / "out", "--shard_size_mb", "0.02", "--workers", "2")
    manifest = load_manifest(out)
    sizes = [(out / s["tar"]).stat().st_size for s in manifest["shards"]]
    assert len(sizes) > 2 and max(sizes[:-1]) < 1.5 * 0.02 * 2**20


# ---------------------------------------------------------------------------------------- readers


def test_augmentation_keeps_image_and_map_aligned_on_shards(palette_shards):
    ds = ShardDataset(palette_shards, 64, ZERO, ONE, augment=True, seed=4)
    told = mirrored = 0
    for epoch in range(6):
        items = [ds[(i, epoch)] for i in range(len(ds))]
        images, maps = torch.stack([x["image"] for x in items]), torch.stack([x["parsing"] for x in items])
        worst, m, t = map_agreement(images * 255, maps)
        assert worst > 0.995
        told, mirrored = told + t, mirrored + m
    assert 0 < mirrored < told


def test_device_decoder_matches_the_worker_path(palette_shards, jpg_shards):
    for root, size in ((palette_shards, 64), (jpg_shards, 48)):
        ds = ShardDataset(root, size, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), augment=True, seed=2)
        decoder = DeviceDecoder(size, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
        keys = [(i % len(ds), 3 + i // len(ds)) for i in range(8)]
        batch = decoder(collate_raw([ds.raw_item(k) for k in keys]))
        want = [ds[k] for k in keys]
        assert batch["images"].shape == (8, 3, size, size) and batch["parsing"].dtype == torch.uint8
        # same crops and flips; grid_sample's bicubic kernel differs a little from PIL's
        diff = (batch["images"] - torch.stack([w["image"] for w in want])).abs().mean().item()
        assert diff < 0.06, diff
        agree = (batch["parsing"] == torch.stack([w["parsing"] for w in want])).float().mean().item()
        assert agree > 0.98, agree
    raw = collate_raw([ShardDataset(palette_shards, 64, ZERO, ONE, augment=True, seed=5).raw_item((i, e))
                       for i in range(6) for e in range(4)])
    out = DeviceDecoder(64, ZERO, ONE)(raw)
    worst, mirrored, told = map_agreement(out["images"] * 255, out["parsing"])
    assert worst > 0.99 and 0 < mirrored < told


def test_crop_flip_resize_follows_pil_sampling():
    # a ramp image: the sampled value is the sampling position, so positions can be read back
    w = h = 16
    ramp = torch.arange(w, dtype=torch.float64).repeat(h, 1)[None, None].repeat(1, 3, 1, 1)
    labels = torch.arange(w, dtype=torch.uint8).repeat(h, 1)[None]
    out, lab = crop_flip_resize(ramp, labels, torch.tensor([[4.0, 0.0, 12.0, 16.0]]), torch.tensor([False]), 16)
    centres = 4 + (torch.arange(16) + 0.5) * 8 / 16 - 0.5  # PIL: left + (i + 0.5) * width / size, in pixel index
    # PIL's cubic kernel (a = -0.5) reproduces a ramp exactly; an off-by-half-pixel would be 0.25. At the
    # crop's border the kernel meets the edge of the crop (PIL reads the pixels beyond it instead).
    torch.testing.assert_close(out[0, 0, 5, 3:13], centres[3:13].double(), atol=1e-6, rtol=0)
    assert (out[0, 0, 5] - centres).abs().max() < 0.2
    assert lab[0, 5].tolist() == torch.floor(4 + (torch.arange(16) + 0.5) * 0.5).to(torch.uint8).tolist()
    flipped, flipped_lab = crop_flip_resize(ramp, labels, torch.tensor([[4.0, 0.0, 12.0, 16.0]]),
                                            torch.tensor([True]), 16)
    torch.testing.assert_close(flipped[0, 0, 5], out[0, 0, 5].flip(0), atol=0, rtol=0)
    assert flipped_lab[0, 5].tolist() == FLIP_LABELS[lab[0, 5].flip(0).numpy()].tolist()  # mirrored, 4 <-> 5


def test_crop_is_cut_before_the_resize():
    # a fine checkerboard: a small crop magnified to the output size must still show it; shrinking the
    # whole image to the output size first (then cutting the crop out of that) would average it away
    h = w = 128
    board = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2).double() * 255
    images = board[None, None].repeat(2, 3, 1, 1)
    maps = torch.zeros(2, h, w, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10.0, 42.0, 42.0], [0.0, 0.0, 128.0, 128.0]])
    out, _ = crop_flip_resize(images, maps, boxes, torch.tensor([False, False]), 64)
    assert out[0].std() > 60, out[0].std()  # the 32x32 crop doubled: squares of 2x2 output pixels
    assert out[1].std() < 30, out[1].std()  # the whole board halved: antialiased to grey, as PIL does


# ---------------------------------------------------------------------------------------- loaders


def test_layout_detection(faces, jpg_shards, tmp_path):
    assert detect_layout(faces) == "folder" and detect_layout(jpg_shards) == "shards"
    with pytest.raises(FileNotFoundError, match="neither"):
        detect_layout(tmp_path)
    both = face_dataset([faces, jpg_shards], 32, ZERO, ONE)
    assert len(both) == 48 and both[(30, 1)]["ok"] and ".jpg" in both[30]["path"]


def _epoch(data, epoch: int, start: int = 0) -> list[dict]:
    return list(data.batches(epoch, start))


def test_torch_shard_loader_covers_each_sample_once_across_ranks(png_shards):
    prints = []
    for rank in range(2):
        data = build_loader([png_shards], ZERO, ONE, input_size=64, batch_size=4, loader="torch", rank=rank,
                            world_size=2, num_workers=0, seed=3)
        assert data.iters_per_epoch == 3
        prints += [fingerprint(m) for b in _epoch(data, 1) for m in b["parsing"]]
    ds = ShardDataset(png_shards, 64, ZERO, ONE)
    assert sorted(prints) == sorted(fingerprint(ds[i]["parsing"]) for i in range(len(ds)))


def test_torch_shard_loader_resumes_exactly(jpg_shards):
    def make():
        return build_loader([jpg_shards], (0.5,) * 3, (0.2,) * 3, input_size=32, batch_size=4, augment=True,
                            loader="torch", num_workers=2, seed=9)

    full = _epoch(make(), 2)
    tail = _epoch(make(), 2, start=3)
    assert len(full) == 6 and len(tail) == 3
    for a, b in zip(full[3:], tail):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["parsing"], b["parsing"])
    assert not torch.equal(full[0]["images"], _epoch(make(), 3)[0]["images"])


def test_loader_choice(faces, jpg_shards, monkeypatch):
    data = build_loader([faces], ZERO, ONE, input_size=32, batch_size=4, loader="auto", num_workers=0)
    assert data.kind.startswith("torch (reference folders")
    with pytest.raises(ValueError, match="shard folders only"):
        build_loader([faces, jpg_shards], ZERO, ONE, input_size=32, batch_size=4, loader="dali")
    import fsfm_fast.data.dali as dali

    monkeypatch.setattr(dali, "dali_available", lambda: (False, "no DALI here"))
    with pytest.raises(RuntimeError, match="no DALI here"):
        build_loader([jpg_shards], ZERO, ONE, input_size=32, batch_size=4, loader="dali")
    auto = build_loader([jpg_shards], ZERO, ONE, input_size=32, batch_size=4, loader="auto", num_workers=0)
    assert auto.kind.startswith("torch (shards")
    device = build_loader([jpg_shards], ZERO, ONE, input_size=32, batch_size=4, loader="torch", num_workers=0,
                          decode="device")
    batch = next(iter(device.loader))
    assert batch["images"].shape == (4, 3, 32, 32) and batch["parsing"].shape == (4, 32, 32)


def test_pretraining_runs_on_shards(tmp_path):
    faces = write_synthetic_dataset(tmp_path / "faces", 16, size=112, seed=2)
    shards = shard(faces, tmp_path / "shards", "--samples_per_shard", "6", "--workers", "2")
    out = tmp_path / "run"
    argv = ["--data_path", str(shards), "--output_dir", str(out), "--model", "fsfm_vit_tiny_patch16",
            "--input_size", "112", "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0", "--max_steps", "3",
            "--num_workers", "0", "--device", "cpu", "--loader", "torch", "--augment", "--log_every", "1"]
    assert pretrain_main(argv) == 0
    rows = read_log(out / "log.jsonl")
    assert rows[-1]["step"] == 3 and all(np.isfinite(r["loss"]) for r in rows)
    stats = json.loads((out / MEAN_STD_FILE).read_text().splitlines()[0])
    assert stats["mean"] == load_manifest(shards)["mean"]


@pytest.mark.cuda
def test_nvjpeg_decoder_matches_the_cpu_decoder(jpg_shards):
    ds = ShardDataset(jpg_shards, 48, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), augment=True, seed=2)
    raw = collate_raw([ds.raw_item((i, 1)) for i in range(8)])
    cpu = DeviceDecoder(48, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), device="cpu")(raw)
    gpu = DeviceDecoder(48, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), device="cuda")(raw)
    assert gpu["images"].is_cuda and gpu["parsing"].is_cuda
    # nvJPEG and libjpeg-turbo may round the IDCT and upsampling differently by a grey level or two
    assert (gpu["images"].cpu() - cpu["images"]).abs().mean().item() < 0.03
    assert (gpu["parsing"].cpu() == cpu["parsing"]).float().mean().item() > 0.999


@pytest.mark.cuda
def test_torch_loader_decodes_on_the_gpu(jpg_shards):
    data = build_loader([jpg_shards], (0.5,) * 3, (0.2,) * 3, input_size=64, batch_size=4, augment=True,
                        loader="torch", num_workers=2, device="cuda")
    assert "nvJPEG" in data.kind
    batch = next(data.batches(0))
    assert batch["images"].is_cuda and batch["images"].shape == (4, 3, 64, 64) and batch["parsing"].is_cuda
