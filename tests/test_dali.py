"""The DALI pipeline over shards, on the CPU (``device_id=None``); the GPU variant is marked ``cuda``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _shard_helpers import fingerprint, map_agreement, palette_faces, shard, tamper_label

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install -e '.[dali]')")

from fsfm_fast.pretrain.__main__ import main as pretrain_main  # noqa: E402
from fsfm_fast.data import write_synthetic_dataset  # noqa: E402
from fsfm_fast.data.dali import DaliLoader  # noqa: E402
from fsfm_fast.data.loaders import build_loader  # noqa: E402
from fsfm_fast.data.shards import ShardDataset, load_manifest  # noqa: E402
from fsfm_fast.engine.run_log import read_log  # noqa: E402

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), 48, size=64, seed=12)


@pytest.fixture(scope="module")
def jpg_shards(faces, tmp_path_factory) -> Path:
    return shard(faces, tmp_path_factory.mktemp("jpg") / "s", "--samples_per_shard", "10", "--workers", "2")


@pytest.fixture(scope="module")
def png_shards(faces, tmp_path_factory) -> Path:
    return shard(faces, tmp_path_factory.mktemp("png") / "s", "--png", "--samples_per_shard", "9", "--workers", "2")


def _dali(root, mean=ZERO, std=ONE, **kw) -> DaliLoader:
    options = dict(input_size=64, batch_size=4, num_threads=2, seed=1)
    options.update(kw)
    return DaliLoader([root], mean, std, **options)


def _epoch(loader, epoch: int, start_batch: int = 0) -> list[dict]:
    loader.set_epoch(epoch, start_index=start_batch * loader.batch_size)
    return list(loader)


def test_dali_output_labels_are_validated_on_the_host(png_shards, tmp_path):
    bad = tamper_label(png_shards, tmp_path / "tampered")
    batches = _epoch(_dali(tmp_path / "tampered", shuffle=False, drop_last=False), 0)
    skipped = [s for b in batches for s in b["skipped"]]
    assert sum(b["images"].shape[0] for b in batches) == 48 - 1
    assert all(b["images"].shape[0] == b["parsing"].shape[0] for b in batches)
    assert len(skipped) == 1 and sum(b["n_skipped"] for b in batches) == 1
    path, reason = skipped[0]
    assert path.endswith(":" + bad.replace(".parse.png", ".png")) and "shard-000000.tar" in path
    assert "0..10" in reason and "12" in reason


def test_dali_cpu_output_contract_and_exact_pixels(faces, png_shards):
    batches = _epoch(_dali(png_shards, shuffle=False, drop_last=False), 0)
    assert [b["images"].shape[0] for b in batches] == [4] * 12
    first = batches[0]
    assert first["images"].dtype == torch.float32 and first["images"].shape == (4, 3, 64, 64)
    assert first["parsing"].dtype == torch.uint8 and first["parsing"].shape == (4, 64, 64)
    assert first["n_skipped"] == 0 and first["skipped"] == []
    # lossless shards, no augmentation: DALI returns exactly what the torch reader returns
    ds = ShardDataset(png_shards, 64, ZERO, ONE)
    want = {fingerprint(ds[i]["parsing"]): ds[i]["image"] for i in range(len(ds))}
    for b in batches:
        for image, labels in zip(b["images"], b["parsing"]):
            torch.testing.assert_close(image, want[fingerprint(labels)], atol=1e-6, rtol=0)


def test_dali_flip_and_crop_keep_image_and_map_aligned(tmp_path):
    root = palette_faces(tmp_path / "faces", 8, 64)
    shards = shard(root, tmp_path / "shards", "--png", "--samples_per_shard", "3", "--workers", "1")
    loader = _dali(shards, augment=True, drop_last=False, batch_size=8)
    told = mirrored = 0
    for epoch in range(5):
        for b in _epoch(loader, epoch):
            worst, m, t = map_agreement(b["images"] * 255, b["parsing"])
            assert worst > 0.99, worst
            told, mirrored = told + t, mirrored + m
    assert told > 20 and 0 < mirrored < told


def test_dali_ranks_cover_every_sample_once(png_shards):
    prints = []
    for rank in range(2):
        loader = _dali(png_shards, batch_size=5, rank=rank, world_size=2, drop_last=False)
        batches = _epoch(loader, 3)
        assert [b["images"].shape[0] for b in batches] == [5, 5, 5, 5, 4]  # 24 each, the last one partial
        prints += [fingerprint(m) for b in batches for m in b["parsing"]]
    ds = ShardDataset(png_shards, 64, ZERO, ONE)
    assert sorted(prints) == sorted(fingerprint(ds[i]["parsing"]) for i in range(len(ds)))
    # training keeps every rank in step: the torch path's count of full batches
    assert len(_dali(png_shards, batch_size=5, rank=1, world_size=2)) == 48 // 10


def test_dali_epochs_are_seeded_and_resumable(jpg_shards):
    def run(epoch, start=0, seed=1):
        return _epoch(_dali(jpg_shards, augment=True, seed=seed), epoch, start)

    full = run(2)
    assert len(full) == 12
    again, tail = run(2), run(2, start=5)
    for a, b in zip(full, again):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["parsing"], b["parsing"])
    assert len(tail) == 7
    for a, b in zip(full[5:], tail):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["parsing"], b["parsing"])
    other_epoch, other_seed = run(3), run(2, seed=2)
    assert not torch.equal(full[0]["parsing"], other_epoch[0]["parsing"])
    assert not torch.equal(full[0]["images"], other_seed[0]["images"])


def _stats(batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.cat([b["images"] for b in batches]).double()
    labels = torch.cat([b["parsing"] for b in batches]).long()
    hist = torch.bincount(labels.flatten(), minlength=11).double()
    return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3)), hist / hist.sum()


@pytest.mark.parametrize("augment", [False, True])
def test_dali_and_torch_loaders_agree_on_statistics(jpg_shards, augment):
    manifest = load_manifest(jpg_shards)
    mean, std = manifest["mean"], manifest["std"]
    # at the stored size: a resize between sizes of ratio p/q puts output pixels exactly between two
    # source pixels, where DALI and PIL pick different neighbours for the map
    options = dict(input_size=64, batch_size=8, augment=augment, num_workers=2, seed=5)
    epochs = range(8 if augment else 1)
    dali = build_loader([jpg_shards], mean, std, loader="auto", **options)  # auto picks DALI for shards
    torch_ = build_loader([jpg_shards], mean, std, loader="torch", **options)
    assert dali.kind.startswith("dali (CPU") and dali.iters_per_epoch == torch_.iters_per_epoch == 6
    a = _stats([b for e in epochs for b in dali.batches(e)])
    b = _stats([b for e in epochs for b in torch_.batches(e)])
    if not augment:  # every sample once, normalised by the manifest's own statistics
        torch.testing.assert_close(a[0], torch.zeros(3, dtype=torch.float64), atol=1e-3, rtol=0)
        torch.testing.assert_close(a[1], torch.ones(3, dtype=torch.float64), atol=1e-2, rtol=0)
    tol = 0.05 if augment else 0.002  # independent random crops of 48 faces vs the decoders' rounding
    torch.testing.assert_close(a[0], b[0], atol=tol, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=tol, rtol=0)
    assert (a[2] - b[2]).abs().sum() < (0.05 if augment else 1e-9)


def test_pretraining_on_shards_with_dali_runs_and_resumes_exactly(tmp_path):
    faces = write_synthetic_dataset(tmp_path / "faces", 16, size=112, seed=2)
    shards = shard(faces, tmp_path / "shards", "--samples_per_shard", "6", "--workers", "2")

    def run(out: Path, steps: int, *extra: str) -> dict[int, float]:
        argv = ["--data_path", str(shards), "--output_dir", str(out), "--model", "fsfm_vit_tiny_patch16",
                "--input_size", "112", "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "0",
                "--max_steps", str(steps), "--save_every", "3", "--num_workers", "2", "--device", "cpu",
                "--loader", "dali", "--augment", "--log_every", "1", *extra]
        assert pretrain_main(argv) == 0
        return {r["step"]: r["loss"] for r in read_log(out / "log.jsonl")}

    full = run(tmp_path / "full", 6)
    assert sorted(full) == list(range(1, 7)) and all(np.isfinite(v) for v in full.values())
    run(tmp_path / "part", 3)
    resumed = run(tmp_path / "part", 6, "--resume", "auto")
    # 4 iterations per epoch: the resumed run replays DALI's first 3 batches of epoch 0, then crosses into epoch 1
    for step in (4, 5, 6):
        assert resumed[step] == full[step], (step, resumed[step], full[step])


@pytest.mark.cuda
def test_dali_gpu_pipeline_matches_the_cpu_one(jpg_shards):
    cpu = _epoch(_dali(jpg_shards, shuffle=False, drop_last=False), 0)
    gpu = _epoch(_dali(jpg_shards, shuffle=False, drop_last=False, device_id=0), 0)
    assert gpu[0]["images"].is_cuda and gpu[0]["parsing"].is_cuda
    for a, b in zip(cpu, gpu):
        assert torch.equal(a["parsing"], b["parsing"].cpu())
        # nvJPEG and the CPU decoder may differ by a grey level here and there
        assert (a["images"] - b["images"].cpu()).abs().mean() < 0.01
