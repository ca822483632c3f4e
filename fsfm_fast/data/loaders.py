"""The training batch iterator for any mix of data folders: ``build_loader`` / ``build_train_data``.

A ``--data_path`` is either a reference-layout folder (``images/`` + ``parsing_maps/``) or a shard folder
(``dataset.json``, from ``python -m fsfm_fast.data.make_shards``). Loaders:

- ``dali``: DALI over shard folders (``fsfm_fast.data.dali``); GPU decode on CUDA, CPU pipeline otherwise.
- ``torch``: a DataLoader over the folders and/or shards with ``EpochSampler`` (exact mid-epoch resume,
  the same batches whatever the worker count). On CUDA, JPEG shards are read raw by the workers and
  decoded on the GPU with nvJPEG (``DeviceDecoder``); otherwise the workers decode with PIL.
- ``auto``: ``dali`` when every path is a shard folder and DALI imports; else ``torch``.

Every loader yields dicts ``images`` [B,3,S,S] (normalised), ``parsing`` [B,S,S] uint8, ``n_skipped``,
``skipped``, ``skipped_paths``, and is driven as the training loop drives it: ``sampler.set_epoch(epoch,
start_index)`` then ``iter(loader)``, sharded by (rank, world_size), seeded by ``seed``.
"""

from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..formats import mean_std_record, write_mean_std
from ..runtime.cli import UsageError
from ..runtime.flags import LOADERS
from ..runtime.signals import ignore_stop_signals
from . import dali  # the module imports DALI itself, only when asked whether it is there or to build a pipeline
from .faces import collate_faces, sample_key
from .folder import FaceParsingFolder, compute_mean_std, pixel_mean_std
from .labelled import collate_labelled
from .sampler import BalancedBatchSampler, EpochSampler, batches_per_epoch
from .shards import DeviceDecoder, RawShards, ShardDataset, collate_raw, combined_mean_std, is_shard_folder

FOLDER, SHARDS = "folder", "shards"


def detect_layout(path) -> str:
    """``"shards"`` for a folder with dataset.json, ``"folder"`` for the reference layout."""
    path = Path(path)
    if is_shard_folder(path):
        return SHARDS
    if (path / "images").is_dir() and (path / "parsing_maps").is_dir():
        return FOLDER
    raise FileNotFoundError(f"{path} is neither a reference-layout dataset (images/ and parsing_maps/ inside) "
                            "nor a shard folder (dataset.json from python -m fsfm_fast.data.make_shards)")


def _split(paths) -> tuple[list[Path], list[Path]]:
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ValueError("no data path given")
    layouts = [detect_layout(p) for p in paths]
    return ([p for p, k in zip(paths, layouts) if k == FOLDER], [p for p, k in zip(paths, layouts) if k == SHARDS])


class ConcatFaces(Dataset):
    """Several face datasets as one index space, passing ``(index, epoch)`` keys through (torch's
    ConcatDataset only takes plain indices)."""

    def __init__(self, parts: list[Dataset]):
        self.parts = parts
        self.ends = np.cumsum([len(p) for p in parts]).tolist()

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, key):
        index, epoch = sample_key(key, len(self))
        part = bisect.bisect_right(self.ends, index)
        local = index - (self.ends[part - 1] if part else 0)
        return self.parts[part][(local, epoch)]


def face_dataset(paths, input_size: int, mean, std, augment: bool = False, seed: int = 0) -> Dataset:
    """Per-sample access to all the paths (folders first, then shards, each in the given order)."""
    folders, shards = _split(paths)
    parts = []
    if folders:
        parts.append(FaceParsingFolder(folders, input_size, mean, std, augment=augment, seed=seed))
    if shards:
        parts.append(ShardDataset(shards, input_size, mean, std, augment=augment, seed=seed))
    return parts[0] if len(parts) == 1 else ConcatFaces(parts)


def dataset_mean_std(paths, input_size: int, max_samples: int = 0, num_workers: int = 0,
                     seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel pixel mean/std in [0, 1]. Reference folders: ``compute_mean_std`` (pixels after the
    resize to ``input_size``). Shard folders: their manifests, exact over every stored pixel, free.
    A mix: one pass over everything, as ``compute_mean_std`` does."""
    folders, shards = _split(paths)
    if not shards:
        return compute_mean_std(folders, input_size, max_samples=max_samples, num_workers=num_workers, seed=seed)
    if not folders:
        return combined_mean_std(shards)
    dataset = face_dataset(folders + shards, input_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return pixel_mean_std(dataset, max_samples, num_workers=num_workers, seed=seed)


def cached_mean_std(path, paths, input_size: int, max_samples: int = 0, num_workers: int = 0, seed: int = 0,
                    say=print, reuse_only: bool = False) -> tuple[list[float], list[float]]:
    """``dataset_mean_std``, kept in ``path`` (one JSON line: mean, std and what they were computed
    from). A file computed from other data paths, input size or sample count is recomputed, and
    ``say`` tells so; ``reuse_only`` reads the file without computing (ranks other than the main one)."""
    path = Path(path)
    source = {"data_paths": [str(Path(p).resolve()) for p in paths], "input_size": int(input_size),
              "mean_std_samples": int(max_samples)}
    cached = mean_std_record(path)
    if reuse_only or (isinstance(cached, dict) and {k: cached.get(k) for k in source} == source):
        return cached["mean"], cached["std"]
    if isinstance(cached, dict):
        say(f"{path} was computed for {({k: cached.get(k) for k in source})}; recomputing for this run's data")
    mean, std = dataset_mean_std(paths, input_size, max_samples=max_samples, num_workers=num_workers, seed=seed)
    write_mean_std(path, mean, std, **source)
    return mean, std


class DeviceBatches:
    """A DataLoader of raw batches, each finished by ``DeviceDecoder`` on the device.

    On CUDA the decode runs on a side stream one batch ahead: batch i+1 is decoded (nvJPEG, crop,
    resize) while the training step of batch i runs on the compute stream, which waits for a batch
    only when it takes it.
    """

    def __init__(self, loader: DataLoader, decoder: DeviceDecoder):
        self.loader, self.decoder = loader, decoder

    def __len__(self) -> int:
        return len(self.loader)

    def _start(self, raw, stream):
        if raw is None:
            return None
        if stream is None:
            return self.decoder(raw)
        with torch.cuda.stream(stream):
            return self.decoder(raw)

    @staticmethod
    def _hand_over(batch: dict, stream) -> dict:
        if stream is not None:
            current = torch.cuda.current_stream(stream.device)
            current.wait_stream(stream)
            for key in ("images", "parsing"):
                batch[key].record_stream(current)  # the allocator must not reuse them too early
        return batch

    def __iter__(self):
        # the DataLoader's iterator (and so its workers) is made now, not at the first batch
        return self._decoded(iter(self.loader))

    def _decoded(self, raws):
        device = self.decoder.device
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        pending = self._start(next(raws, None), stream)
        while pending is not None:
            following = self._start(next(raws, None), stream)
            yield self._hand_over(pending, stream)
            pending = following


@dataclass
class TrainData:
    """What the training loop needs: ``dataset`` for per-sample access (pictures, length), the
    ``sampler`` it positions (``set_epoch(epoch, start_index)``) and the ``loader`` it iterates."""
    dataset: Dataset
    sampler: object
    loader: object
    kind: str
    iters_per_epoch: int
    batch_size: int

    def batches(self, epoch: int, start_batch: int = 0):
        """The batches of ``epoch`` from batch ``start_batch`` on (a resumed run's position)."""
        self.sampler.set_epoch(epoch, start_index=start_batch * self.batch_size)
        return iter(self.loader)

    def close(self) -> None:
        """Shut persistent data workers down now, while the run still handles signals, rather than
        whenever the garbage collector gets to them."""
        loader = getattr(self.loader, "loader", self.loader)  # DeviceBatches wraps a DataLoader
        workers = getattr(loader, "_iterator", None)  # a DataLoader's persistent iterator
        if workers is not None and hasattr(workers, "_shutdown_workers"):
            workers._shutdown_workers()
            loader._iterator = None


def _choose(loader: str, folders: list[Path], shards: list[Path]) -> str:
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    if loader == "torch" or (loader == "auto" and (folders or not shards)):
        return "torch"  # decided without importing DALI, which alone takes about 2 s
    ok, why = dali.dali_available()
    if loader == "dali":
        if folders:
            raise ValueError(f"--loader dali reads shard folders only; {[str(f) for f in folders]} are "
                             "reference-layout folders: convert them with python -m fsfm_fast.data.make_shards, "
                             "or use --loader torch")
        if not ok:
            raise RuntimeError(why)
        return "dali"
    # DALI was the faster loader where measured (CPU, benchmarks/RESULTS.md); on a GPU it also decodes there
    return "dali" if ok else "torch"


def _nvjpeg_ready(dataset: Dataset, device: torch.device) -> bool:
    """Whether the raw path applies: shards only, one image size, and a CUDA device to decode on."""
    return (device.type == "cuda" and isinstance(dataset, ShardDataset) and len(dataset.index.image_sizes) == 1)


def build_loader(paths, mean, std, *, input_size: int, batch_size: int, augment: bool = False, seed: int = 0,
                 loader: str = "auto", rank: int = 0, world_size: int = 1, device="cpu", num_workers: int = 8,
                 drop_last: bool = True, shuffle: bool = True, decode: str = "auto",
                 dtype: torch.dtype = torch.float32) -> TrainData:
    """The batch iterator over ``paths`` (reference folders and/or shard folders) for this rank.

    ``decode`` (torch loader on shards): ``workers`` decodes with PIL in the DataLoader workers,
    ``device`` reads raw bytes there and decodes on ``device`` (nvJPEG on CUDA), ``auto`` picks
    ``device`` on CUDA.
    """
    device = torch.device(device)
    folders, shards = _split(paths)
    chosen = _choose(loader, folders, shards)
    dataset = face_dataset(folders + shards, input_size, mean, std, augment=augment, seed=seed)
    if chosen == "dali":
        device_id = (device.index or 0) if device.type == "cuda" else None
        pipeline = dali.DaliLoader(shards, mean, std, input_size=input_size, batch_size=batch_size, augment=augment,
                                   seed=seed, rank=rank, world_size=world_size, device_id=device_id,
                                   num_threads=max(num_workers, 1), drop_last=drop_last, shuffle=shuffle, dtype=dtype)
        where = f"GPU decode on {device}" if device.type == "cuda" else "CPU pipeline"
        return TrainData(dataset, pipeline, pipeline, f"dali ({where}, {pipeline.num_threads} threads)",
                         pipeline.full_batches() if drop_last else pipeline.epoch_batches(), batch_size)
    sampler = EpochSampler(len(dataset), num_replicas=world_size, rank=rank, seed=seed, shuffle=shuffle,
                           drop_last=drop_last, batch_size=batch_size if drop_last else None)
    on_device = decode == "device" or (decode == "auto" and _nvjpeg_ready(dataset, device))
    if on_device and not isinstance(dataset, ShardDataset):
        warnings.warn("decode='device' needs shard folders only; decoding in the workers instead", stacklevel=2)
        on_device = False
    torch_loader = DataLoader(RawShards(dataset) if on_device else dataset, batch_size=batch_size, sampler=sampler,
                              drop_last=drop_last, num_workers=num_workers,
                              collate_fn=collate_raw if on_device else collate_faces,
                              pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None,
                              persistent_workers=num_workers > 0, worker_init_fn=ignore_stop_signals)
    if on_device:
        decoder = DeviceDecoder(input_size, mean, std, device=device, dtype=dtype)
        codec = "nvJPEG" if device.type == "cuda" else "libjpeg"
        kind = f"torch ({codec} decode on {device}, {num_workers} reader workers)"
        return TrainData(dataset, sampler, DeviceBatches(torch_loader, decoder), kind, len(torch_loader), batch_size)
    what = " + ".join(n for n, p in (("reference folders", folders), ("shards", shards)) if p)
    kind = f"torch ({what}, PIL decode in {num_workers} workers)"
    return TrainData(dataset, sampler, torch_loader, kind, len(torch_loader), batch_size)


def labelled_train_data(dataset: Dataset, *, batch_size: int, num_workers: int, seed: int, rank: int = 0,
                        world_size: int = 1, device="cpu", groups: list[list[int]] | None = None,
                        iters_per_epoch: int = 0) -> TrainData:
    """The training batches of labelled images (``data.labelled``) for this rank. Without ``groups``:
    shuffled batches of ``batch_size`` over the whole set, an epoch being one pass. With ``groups``
    (lists of sample indices, such as FAS's (domain, class) groups): ``batch_size`` samples of each group
    per batch (``BalancedBatchSampler``), ``iters_per_epoch`` batches an epoch."""
    device = torch.device(device)
    if groups is None:
        iters_per_epoch = batches_per_epoch(len(dataset), batch_size, world_size)
        if iters_per_epoch < 1:
            raise UsageError(f"{len(dataset)} training images cannot fill one batch of {batch_size} on each "
                             f"of {world_size} processes")
        sampler = EpochSampler(len(dataset), num_replicas=world_size, rank=rank, seed=seed, shuffle=True,
                               drop_last=True, batch_size=batch_size)
        batching, kind = {"batch_size": batch_size, "sampler": sampler, "drop_last": True}, "labelled images"
    else:
        sampler = BalancedBatchSampler(groups, batch_size, iters_per_epoch, num_replicas=world_size, rank=rank,
                                       seed=seed)
        batching, kind, batch_size = {"batch_sampler": sampler}, "balanced (domain, class) batches", sampler.batch_size
    # Its own generator: starting an epoch must not draw from the global stream that drop path uses,
    # or a resumed run would diverge. The samples are augmented from per-sample seeds.
    loader = DataLoader(dataset, **batching, num_workers=num_workers, collate_fn=collate_labelled,
                        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                        worker_init_fn=ignore_stop_signals, generator=torch.Generator())
    return TrainData(dataset, sampler, loader, kind, iters_per_epoch, batch_size)
