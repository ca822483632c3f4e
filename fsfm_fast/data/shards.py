"""WebDataset shards of faces and parsing maps: their index files, their manifest, and torch readers.

A shard folder (written by ``python -m fsfm_fast.data.make_shards``) holds:

    dataset.json          manifest: count, image size, label histogram, mean/std, the shard list
    shard-000000.tar      per sample <key>.jpg (or <key>.png) then <key>.parse.png (8-bit L labels)
    shard-000000.idx      the tar's index in DALI's webdataset format (v1.2)
    skipped.tsv           the source samples left out, with the reason

Samples are numbered globally in manifest order: shard 0's members first, each shard in index order.
``ShardDataset`` reads sample ``i`` with one ``pread`` per component through the index, so it needs
no scan of the tars and works with ``EpochSampler`` exactly like the folder dataset (same
augmentation draws per (seed, epoch, index), same failure handling, same output contract).
``ShardDataset.raw_item`` + ``collate_raw`` + ``DeviceDecoder`` split the work instead: workers only
read bytes, and the JPEG decode (nvJPEG on a GPU), crop, flip and normalisation run batched on the
training device.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .faces import FaceTransform, parsing_map_problem, rgb_triple, sample_key
from .labels import FLIP_LABELS

MANIFEST_NAME = "dataset.json"
FORMAT = "fsfm_fast.shards/1"
MAP_EXT = "parse.png"
INDEX_VERSION = "v1.2"
_TAR_BLOCK = 512


# ------------------------------------------------------------------------------------ index files


def format_index(samples: list[list[tuple[str, int, int, str]]]) -> str:
    """DALI's webdataset index (v1.2, as its ``wds2idx`` writes it): a header ``v1.2 <samples>``,
    then one line per sample listing ``<ext> <data offset> <size> <member name>`` per component."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for components in samples:
        lines.append(" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in components))
    return "\n".join(lines) + "\n"


def read_index(path) -> list[dict[str, tuple[int, int]]]:
    """Per sample, ``{ext: (data offset, size)}`` from an index file (v1.2, or v1.1 without names)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty index file")
    header = lines[0].split()
    if len(header) != 2 or header[0] not in ("v1.1", "v1.2") or not header[1].isdigit():
        raise ValueError(f"{path}: not a webdataset index (header {lines[0]!r})")
    width = 4 if header[0] == "v1.2" else 3
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) % width:
            raise ValueError(f"{path}:{number}: expected groups of {width} fields, got {len(tokens)}")
        samples.append({tokens[k]: (int(tokens[k + 1]), int(tokens[k + 2])) for k in range(0, len(tokens), width)})
    if len(samples) != int(header[1]):
        raise ValueError(f"{path}: header announces {header[1]} samples, found {len(samples)}")
    return samples


# --------------------------------------------------------------------------------------- manifest


def is_shard_folder(path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def load_manifest(root) -> dict:
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable shard manifest ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}; "
                         "rebuild the shards with python -m fsfm_fast.data.make_shards")
    return manifest


def combined_mean_std(roots) -> tuple[list[float], list[float]]:
    """Pixel mean/std in [0, 1] over several shard folders, exact: each manifest keeps its pixel sums."""
    count, total, total_sq = 0, np.zeros(3), np.zeros(3)
    for root in roots:
        pixels = load_manifest(root)["pixel_stats"]
        count += pixels["count"]
        total += np.asarray(pixels["sum"], np.float64)
        total_sq += np.asarray(pixels["sum_sq"], np.float64)
    if count == 0:
        raise ValueError(f"no pixels in {[str(r) for r in roots]}: every sample was skipped")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return (mean / 255.0).tolist(), (std / 255.0).tolist()


class ShardIndex:
    """Where every sample of one or more shard folders lies: global index -> (tar, offsets, sizes)."""

    def __init__(self, roots):
        roots = [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]
        if not roots:
            raise ValueError("roots is empty: give at least one shard folder")
        self.roots = roots
        self.tars: list[Path] = []
        self.image_sizes = set()
        columns = []  # per shard: [shard id, image offset, image size, map offset, map size] x samples
        for root in roots:
            manifest = load_manifest(root)
            self.image_sizes.add(tuple(manifest["image_size"]))
            for entry in manifest["shards"]:
                columns.append(self._add_shard(root, entry, manifest["image_ext"]))
        table = np.concatenate(columns) if columns else np.zeros((0, 5), np.int64)
        if len(table) == 0:
            raise ValueError(f"no sample in the shard folders {[str(r) for r in roots]}")
        self.shard_of = table[:, 0].astype(np.int32)
        self.image_at, self.map_at = table[:, 1:3].copy(), table[:, 3:5].copy()

    def _add_shard(self, root: Path, entry: dict, image_ext: str) -> np.ndarray:
        tar, idx = root / entry["tar"], root / entry["index"]
        samples = read_index(idx)
        if len(samples) != entry["count"]:
            raise ValueError(f"{idx}: {len(samples)} samples, the manifest says {entry['count']}")
        shard = len(self.tars)
        self.tars.append(tar)
        rows = np.empty((len(samples), 5), np.int64)
        for row, components in enumerate(samples):
            if image_ext not in components or MAP_EXT not in components:
                raise ValueError(f"{idx}: sample {row} lacks .{image_ext} or .{MAP_EXT}")
            rows[row] = (shard, *components[image_ext], *components[MAP_EXT])
        return rows

    def __len__(self) -> int:
        return len(self.shard_of)


def _member_name(fd: int, data_offset: int) -> str:
    """The tar member name stored in the header block right before a member's data: names are not
    kept in memory (millions of strings per worker), one extra 512-byte read gets one when needed.
    Empty when that header is not there (a tar cut before it)."""
    header = os.pread(fd, _TAR_BLOCK, data_offset - _TAR_BLOCK)
    if len(header) < _TAR_BLOCK:
        return ""
    return header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------- dataset


class ShardDataset(Dataset):
    """Faces and parsing maps from shard folders, with ``FaceParsingFolder``'s contract.

    ``dataset[i]`` or ``dataset[(i, epoch)]`` -> dict(image float32 [3,S,S] normalised, parsing uint8
    [S,S], ok, path "<tar>:<member>", reason). The same ``FaceTransform`` as the folder dataset (PIL
    bicubic for the image, nearest for the map, flip with the left/right label swap), so both
    layouts augment a sample the same way.
    """

    def __init__(self, roots, input_size: int, mean, std, augment: bool = False, seed: int = 0):
        self.transform = FaceTransform(input_size, mean, std, augment, seed)
        self.index = ShardIndex(roots)
        self.roots = self.index.roots
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        # descriptors do not travel to spawned workers; each process opens its own
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except Exception:  # noqa: BLE001  at interpreter exit even `os` may be gone; the OS closes them then
                pass

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.index.tars[shard], os.O_RDONLY)
        return fd

    def _read(self, index: int) -> tuple[bytes, bytes]:
        """The encoded image and map."""
        fd = self._fd(int(self.index.shard_of[index]))
        (image_at, image_size), (map_at, map_size) = self.index.image_at[index], self.index.map_at[index]
        image, parsing = os.pread(fd, int(image_size), int(image_at)), os.pread(fd, int(map_size), int(map_at))
        if len(image) != image_size or len(parsing) != map_size:
            raise OSError(f"short read: the tar is shorter than its index says ({len(image)}/{image_size} bytes)")
        return image, parsing

    def path(self, index: int) -> str:
        """``<tar>:<member name>`` of sample ``index``'s image, read from its tar header; where the
        header cannot be read (a truncated tar), the sample's byte offset in the tar instead."""
        shard = int(self.index.shard_of[index])
        offset = int(self.index.image_at[index][0])
        try:
            name = _member_name(self._fd(shard), offset)
        except OSError:
            name = ""
        return f"{self.index.tars[shard]}:{name or f'<sample {index} at byte {offset}>'}"

    def _load(self, index: int):
        """(PIL image, uint8 map) or a failure record."""
        try:
            image_bytes, map_bytes = self._read(index)
            with Image.open(io.BytesIO(image_bytes)) as im:
                image = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001  any read or decode failure marks the sample, never the run
            return self.transform.failed(self.path(index), f"unreadable image ({type(exc).__name__}: {exc})")
        try:
            with Image.open(io.BytesIO(map_bytes)) as im:
                parsing = np.array(im)
        except Exception as exc:  # noqa: BLE001
            return self.transform.failed(self.path(index), f"unreadable parsing map ({type(exc).__name__}: {exc})")
        problem = parsing_map_problem(parsing, image.size)
        return self.transform.failed(self.path(index), problem) if problem else (image, parsing)

    def __getitem__(self, key) -> dict:
        index, epoch = sample_key(key, len(self))
        loaded = self._load(index)
        if isinstance(loaded, dict):
            return loaded
        return self.transform.sample(*loaded, index, epoch, self.path(index))

    def raw_item(self, key) -> dict:
        """What a worker hands to ``DeviceDecoder``: the JPEG bytes undecoded (PNG images decoded
        here, nvJPEG cannot), the map at full size, and the sample's crop box and flip."""
        index, epoch = sample_key(key, len(self))
        try:
            image_bytes, map_bytes = self._read(index)
            with Image.open(io.BytesIO(image_bytes)) as im:
                jpeg, size = im.format == "JPEG", im.size  # the header only: the pixels stay encoded
                pixels = None if jpeg else np.asarray(im.convert("RGB"))
            with Image.open(io.BytesIO(map_bytes)) as im:
                parsing = np.array(im)
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "path": self.path(index), "reason": f"unreadable sample ({type(exc).__name__}: {exc})"}
        problem = parsing_map_problem(parsing, size)
        if problem:
            return {"ok": False, "path": self.path(index), "reason": problem}
        box, flip = self.transform.box_and_flip(index, epoch, *size)
        image = (torch.frombuffer(bytearray(image_bytes), dtype=torch.uint8) if jpeg
                 else torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
        return {"ok": True, "path": self.path(index), "image": image, "jpeg": jpeg,
                "parsing": torch.from_numpy(parsing.astype(np.uint8)), "box": box, "flip": flip}


class RawShards(Dataset):
    """``ShardDataset.raw_item`` as a dataset, for a DataLoader feeding ``DeviceDecoder``."""

    def __init__(self, shards: ShardDataset):
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, key) -> dict:
        return self.shards.raw_item(key)


def collate_raw(samples: list[dict]) -> dict:
    """Usable raw samples: encoded images in a list (their sizes differ), maps stacked (one image size
    per run of the raw path), boxes and flips as tensors; the others counted and named."""
    good = [x for x in samples if x["ok"]]
    bad = [x for x in samples if not x["ok"]]
    return {"image": [x["image"] for x in good], "jpeg": [x["jpeg"] for x in good],
            "path": [x["path"] for x in good],
            "parsing": torch.stack([x["parsing"] for x in good]) if good else torch.zeros(0, 0, 0, dtype=torch.uint8),
            "box": torch.tensor([x["box"] for x in good], dtype=torch.float64).reshape(-1, 4),
            "flip": torch.tensor([x["flip"] for x in good], dtype=torch.bool),
            "n_skipped": len(bad), "skipped": [(x["path"], x["reason"]) for x in bad],
            "skipped_paths": [x["path"] for x in bad]}


# --------------------------------------------------------------------------------- device decode


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if mode == "bicubic":
        return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(x, size=(size, size), mode="nearest-exact")


def crop_flip_resize(images: torch.Tensor, parsing: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                     size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, cut its crop box (left, top, right, bottom, whole pixels as ``augment_params`` draws
    them) out of the full-resolution float image [B,3,H,W] and uint8 map [B,H,W], resize both to
    ``size``, and mirror where ``flips`` says (the map's left/right labels swapped).

    The crop comes first, so a small crop is magnified from the source pixels (resizing the whole
    image first would throw away the detail the crop magnifies). The image is resized bicubic with
    PIL's kernel (a = -0.5, antialiased when shrinking); the map by nearest neighbour at PIL's
    positions (output pixel i reads ``left + floor((i + 0.5) * width / size)``), so both move
    together. Crops of one size share one resize call: without augmentation, the whole batch.
    """
    b = images.shape[0]
    out = images.new_empty((b, images.shape[1], size, size))
    labels = parsing.new_empty((b, size, size))
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, box in enumerate(boxes.round().long().tolist()):
        groups.setdefault(tuple(box), []).append(i)
    for (left, top, right, bottom), members in groups.items():
        if len(members) == b:
            rows = slice(None)
        elif len(members) == 1:
            rows = slice(members[0], members[0] + 1)
        else:
            rows = torch.tensor(members, device=images.device)
        out[rows] = _resize(images[rows, :, top:bottom, left:right], size, "bicubic")
        labels[rows] = _resize(parsing[rows, None, top:bottom, left:right], size, "nearest")[:, 0]
    if bool(flips.any()):
        mirror = flips.to(images.device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
        lut = torch.from_numpy(FLIP_LABELS).to(labels.device)
        labels = torch.where(mirror[:, None, None], lut[labels.flip(-1).long()], labels)
    return out, labels


class DeviceDecoder:
    """The second half of the raw path: decode, augment and normalise a ``collate_raw`` batch on ``device``.

    On CUDA, ``torchvision.io.decode_jpeg(..., device='cuda')`` decodes the whole batch with nvJPEG;
    elsewhere the same call decodes on the CPU (libjpeg-turbo), which keeps this path testable.
    """

    def __init__(self, input_size: int, mean, std, device="cpu", dtype=torch.float32):
        self.input_size = int(input_size)
        self.device = torch.device(device)
        self.dtype = dtype
        self.mean = torch.tensor(rgb_triple(mean, "mean"), device=self.device).view(1, 3, 1, 1) * 255.0
        self.scale = 1.0 / (torch.tensor(rgb_triple(std, "std"), device=self.device).view(1, 3, 1, 1) * 255.0)

    def _decode(self, raw: dict) -> list:
        """Each sample's RGB uint8 [3,H,W] on the device, or the reason it could not be decoded."""
        from torchvision.io import ImageReadMode, decode_jpeg

        encoded = [x for x, jpeg in zip(raw["image"], raw["jpeg"]) if jpeg]
        with warnings.catch_warnings():
            # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; this one is still
            # the batched nvJPEG path torch ships with, and the warning would repeat in every run's log
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
            try:
                decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device) if encoded else []
            except RuntimeError:  # one bad JPEG fails the batched call: find it, keep the others
                decoded = [self._decode_one(x, decode_jpeg, ImageReadMode.RGB) for x in encoded]
        decoded = iter(decoded)
        return [next(decoded) if jpeg else x.to(self.device, non_blocking=True)
                for x, jpeg in zip(raw["image"], raw["jpeg"])]

    def _decode_one(self, data: torch.Tensor, decode_jpeg, mode):
        try:
            return decode_jpeg(data, mode=mode, device=self.device)
        except RuntimeError as exc:
            return f"unreadable image ({exc})"

    def __call__(self, raw: dict) -> dict:
        s = self.input_size
        pixels = self._decode(raw) if raw["image"] else []
        failed = [(path, why) for path, why in zip(raw["path"], pixels) if isinstance(why, str)]
        batch = {"n_skipped": raw["n_skipped"] + len(failed),
                 "skipped": raw["skipped"] + list(failed),
                 "skipped_paths": raw["skipped_paths"] + [path for path, _ in failed]}
        keep = [i for i, x in enumerate(pixels) if not isinstance(x, str)]
        if not keep:
            batch.update(images=torch.zeros(0, 3, s, s, device=self.device, dtype=self.dtype),
                         parsing=torch.zeros(0, s, s, device=self.device, dtype=torch.uint8))
            return batch
        images = torch.stack([pixels[i] for i in keep]).float()
        parsing, boxes, flips = raw["parsing"], raw["box"], raw["flip"]
        if failed:
            parsing, boxes, flips = parsing[keep], boxes[keep], flips[keep]
        parsing = parsing.to(self.device, non_blocking=True)
        out, labels = crop_flip_resize(images, parsing, boxes, flips, s)
        batch["images"] = ((out.clamp_(0.0, 255.0) - self.mean) * self.scale).to(self.dtype)
        batch["parsing"] = labels
        return batch
