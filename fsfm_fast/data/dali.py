"""NVIDIA DALI input pipeline over shard folders (``fsfm_fast.data.shards`` layout).

One pipeline per epoch: ``fn.readers.webdataset`` over the epoch's shard order (a permutation of the
tars drawn from (seed, epoch), the same on every rank), split into ``world_size`` contiguous parts by
DALI and shuffled within a buffer; the image is decoded on the GPU (``mixed``: nvJPEG, with the
hardware decoder where the GPU has one) or on the CPU (``device_id=None``), the map always on the
CPU (PNG, and an 8-bit map is cheap to crop there). The crop window and the flip are drawn once per
sample and applied to both: cubic antialiased resize for the image, nearest for the map, and the
map's left/right labels swapped on a flip, as the torch path does.

Rebuilding per epoch is what makes epochs reproducible from (seed, epoch) alone, so a run can be
resumed at an epoch: DALI's reader cannot start inside an epoch, so a mid-epoch resume replays the
epoch's first batches and drops them. The replayed batches are the same ones (the pipeline is seeded),
but their order is not the torch path's: the two loaders draw different augmentations and orders.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from .faces import CROP_AREA, CROP_RATIO, rgb_triple
from .labels import FLIP_LABELS, NUM_LABELS
from .shards import MAP_EXT, load_manifest

READER = "reader"


def dali_available() -> tuple[bool, str]:
    """(importable, why not)."""
    try:
        importlib.import_module("nvidia.dali.plugin.pytorch")  # the torch bridge imports DALI itself
    except Exception as exc:  # noqa: BLE001  a broken install is as unusable as a missing one
        return False, f"NVIDIA DALI is not importable ({type(exc).__name__}: {exc}); pip install nvidia-dali-cuda130"
    return True, ""


def _seed(*parts: int) -> int:
    """A pipeline seed in DALI's range from (seed, epoch, rank)."""
    return int(np.random.default_rng([int(p) for p in parts]).integers(0, 2**31 - 1))


def _labels_lut(labels, flip, fn, types):
    """The map with left/right labels swapped where ``flip`` is 1: a lookup table, then a per-sample
    select by arithmetic (DALI has no per-sample branch without conditionals)."""
    swapped = fn.lookup_table(labels, keys=list(range(NUM_LABELS)), values=FLIP_LABELS[:NUM_LABELS].tolist(),
                              dtype=types.UINT8)
    return fn.cast(swapped * flip + labels * (1 - flip), dtype=types.UINT8)


def face_pipeline(tars: list[str], indexes: list[str], *, batch_size: int, input_size: int, image_size, mean, std,
                  augment: bool, shard_id: int, num_shards: int, seed: int, shuffle: bool, device_id, num_threads: int,
                  half: bool = False):
    """The DALI pipeline (not built): outputs images [B,3,S,S] float (fp16 with ``half``), maps [B,S,S]
    uint8, and on the CPU each source map's largest label and the sample's origin (``<tar>:<offset>:<member>``,
    zero-padded bytes): the labels are validated on the host, where they are decoded, never read back
    from the GPU."""
    from nvidia.dali import fn, pipeline_def, types

    s = int(input_size)
    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2)
    def pipeline():
        encoded, labels = fn.readers.webdataset(
            paths=tars, index_paths=indexes, ext=["jpg;png", MAP_EXT], name=READER, shard_id=shard_id,
            num_shards=num_shards, random_shuffle=shuffle, seed=seed, pad_last_batch=True,
            missing_component_behavior="error")
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        labels = fn.decoders.image(labels, device="cpu", output_type=types.GRAY)
        label_max = fn.reductions.max(labels)
        source = fn.pad(fn.get_property(encoded, key="source_info"), axes=[0])
        flip, roi = 0, {}
        if augment:
            anchor, extent = fn.random_crop_generator(fn.peek_image_shape(encoded), random_area=list(CROP_AREA),
                                                      random_aspect_ratio=list(CROP_RATIO))
            start = fn.cast(anchor, dtype=types.FLOAT)
            roi = {"roi_start": start, "roi_end": start + fn.cast(extent, dtype=types.FLOAT)}
            flip = fn.random.coin_flip(probability=0.5, dtype=types.INT32)
        if augment or tuple(image_size) != (s, s):
            images = fn.resize(images, size=[s, s], interp_type=types.INTERP_CUBIC, antialias=True, **roi)
            labels = fn.resize(labels, size=[s, s], interp_type=types.INTERP_NN, **roi)
        images = fn.crop_mirror_normalize(images, mirror=flip, mean=[255.0 * m for m in mean],
                                          std=[255.0 * v for v in std], output_layout="CHW",
                                          dtype=types.FLOAT16 if half else types.FLOAT)
        if augment:
            labels = _labels_lut(fn.flip(labels, horizontal=flip), flip, fn, types)
        labels = fn.reshape(labels, shape=[s, s], layout="HW")
        return images, labels.gpu() if gpu else labels, label_max, source

    return pipeline()


class DaliLoader:
    """Training batches from shard folders through DALI, with the torch path's loop interface:
    ``set_epoch(epoch, start_index)``, then iterate over dicts ``images`` [B,3,S,S], ``parsing``
    [B,S,S] uint8 (on ``cuda:device_id``, or the CPU when ``device_id`` is None), ``n_skipped`` and
    ``skipped``: make_shards validated every sample, but a shard changed since (or written by another
    tool) can hold labels above 10; such a sample is dropped from its batch and named.

    With ``drop_last`` every rank yields ``count // (batch_size * world_size)`` full batches, the number
    the torch path gives, so DDP ranks stay in step; without it a rank yields its whole share, the
    last batch shorter.
    """

    def __init__(self, roots, mean, std, *, input_size: int, batch_size: int, augment: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device_id: int | None = None, num_threads: int = 4,
                 drop_last: bool = True, shuffle: bool = True, dtype: torch.dtype = torch.float32):
        ok, why = dali_available()
        if not ok:
            raise RuntimeError(why)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        manifests = [(root, load_manifest(root)) for root in roots]
        sizes = {tuple(m["image_size"]) for _, m in manifests}
        if len(sizes) != 1:
            raise ValueError(f"shard folders with different image sizes {sorted(sizes)} cannot share one DALI pipeline")
        self.image_size = sizes.pop()
        self.tars = [str(root / s["tar"]) for root, m in manifests for s in m["shards"]]
        self.indexes = [str(root / s["index"]) for root, m in manifests for s in m["shards"]]
        self.num_samples = sum(m["count"] for _, m in manifests)
        self.mean, self.std = rgb_triple(mean, "mean"), rgb_triple(std, "std")
        self.input_size, self.batch_size, self.augment, self.seed = int(input_size), int(batch_size), augment, int(seed)
        self.rank, self.world_size, self.device_id = int(rank), int(world_size), device_id
        self.num_threads, self.drop_last, self.shuffle, self.dtype = max(1, num_threads), drop_last, shuffle, dtype
        if self.num_samples < self.world_size or (drop_last and self.full_batches() == 0):
            raise ValueError(f"{self.num_samples} samples cannot give each of {world_size} rank(s) "
                             f"a batch of {batch_size}")
        self.sampler = self  # the training loop calls sampler.set_epoch(...), then iterates the loader
        self.epoch, self.start_batch = 0, 0

    def full_batches(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def rank_share(self) -> int:
        """Samples DALI's reader gives this rank: [N * r // W, N * (r + 1) // W)."""
        n, r, w = self.num_samples, self.rank, self.world_size
        return n * (r + 1) // w - n * r // w

    def epoch_batches(self) -> int:
        return self.full_batches() if self.drop_last else -(-self.rank_share() // self.batch_size)

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        if start_index % self.batch_size or not 0 <= start_index // self.batch_size <= self.epoch_batches():
            raise ValueError(f"start_index must be a multiple of the batch size {self.batch_size} within the epoch, "
                             f"got {start_index}")
        self.epoch, self.start_batch = int(epoch), start_index // self.batch_size

    def __len__(self) -> int:
        return self.epoch_batches() - self.start_batch

    def pipeline(self, epoch: int):
        """This rank's pipeline for ``epoch``, built: the tars in the epoch's order (shared by all ranks,
        so the ranks' parts do not overlap), the shuffle buffer and augmentation seeded from (seed, epoch, rank)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.tars)) if self.shuffle \
            else np.arange(len(self.tars))
        pipe = face_pipeline([self.tars[i] for i in order], [self.indexes[i] for i in order],
                             batch_size=self.batch_size, input_size=self.input_size, image_size=self.image_size,
                             mean=self.mean, std=self.std, augment=self.augment, shard_id=self.rank,
                             num_shards=self.world_size, seed=_seed(self.seed, epoch, self.rank),
                             shuffle=self.shuffle, device_id=self.device_id, num_threads=self.num_threads,
                             half=self.dtype == torch.float16)
        pipe.build()
        return pipe

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        pipe = self.pipeline(self.epoch)
        batches = DALIGenericIterator([pipe], ["images", "parsing", "label_max", "source"], reader_name=READER,
                                      auto_reset=False, last_batch_policy=LastBatchPolicy.PARTIAL)
        try:
            for number, out in enumerate(batches):
                if number >= self.epoch_batches():
                    break
                if number >= self.start_batch:
                    yield self._batch(out[0])
        finally:
            del batches, pipe  # frees the pipeline's threads and buffers before the next epoch's

    def _batch(self, out: dict) -> dict:
        images, parsing = out["images"], out["parsing"]
        if images.dtype != self.dtype:
            images = images.to(self.dtype)
        top = out["label_max"].reshape(-1)  # on the CPU: checking it costs no device sync
        bad = (top >= NUM_LABELS).nonzero().flatten().tolist()
        skipped = []
        if bad:
            keep = torch.tensor([i for i in range(len(top)) if i not in bad], device=images.device)
            images, parsing = images[keep], parsing[keep]
            for i in bad:
                source = out["source"][i].numpy().tobytes().rstrip(b"\0").decode("utf-8", "replace")
                skipped.append((source, f"parsing map labels must lie in 0..{NUM_LABELS - 1}, found {int(top[i])}"))
        return {"images": images, "parsing": parsing, "n_skipped": len(skipped), "skipped": skipped,
                "skipped_paths": [path for path, _ in skipped]}
