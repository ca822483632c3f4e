"""Frozen features: each image through an encoder once, batched, under inference mode and autocast (bf16
on a GPU), shared among ``torchrun`` processes, and kept on disk so that further probes of the same
encoder and images cost nothing.

The feature of an image is the encoder's pooled token: ``avg``, the mean of the patch tokens, or ``cls``,
the class token (DINO's and MAE's probes), both after the encoder's final norm (timm's ``pool`` then the
model's ``fc_norm``; a detector pooled by average has its ``fc_norm`` in place of the final norm).

A cache file is named by a hash of everything the features depend on: the weights' content hash, the
input size, mean/std and resize, the pooling, the autocast precision and device type, and each image's
path, size and modification time. Another checkpoint, another image list or a touched image is another
file; nothing is ever read back for inputs it was not made from.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data import create_transform
from timm.models.vision_transformer import VisionTransformer

from ..data.labelled import LabelledImages
from ..data.samples import Sample
from ..evaluate import score_dataset
from ..runtime.distributed import DistInfo
from .encoders import Encoder
from .args import POOLS

CACHE_VERSION = 1


def probe_transform(img_size: int, mean, std, resize: str = "plain"):
    """``plain``: the whole image resized to img_size (aligned face crops); ``crop``: the shorter side to
    img_size / 0.875 and the centre cut (fine-tuning's evaluation). Bicubic, then mean/std."""
    crop_pct, crop_mode = (1.0, "squash") if resize == "plain" else (0.875, "center")
    return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=crop_pct,
                            crop_mode=crop_mode, mean=tuple(mean), std=tuple(std))


def pooled_features(model: torch.nn.Module, images: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, D] features of a timm model: a ViT's tokens pooled by ``pool``; any other model's own pre-logits."""
    tokens = model.forward_features(images)
    if isinstance(model, VisionTransformer):
        return model.fc_norm(model.pool(tokens, POOLS[pool]))
    return model.forward_head(tokens, pre_logits=True)


@dataclass
class Features:
    """The features of a list of samples; rows whose image could not be read are absent."""
    index: np.ndarray  # [N] int64, increasing: positions in the sample list
    values: np.ndarray  # [N, D] float32
    skipped: list[tuple[str, str]]
    from_cache: bool = False


class PooledFeatures(torch.nn.Module):
    """An encoder as a scorer whose outputs are its pooled features, so that evaluation's whole-set scoring
    (disjoint shares per rank, gathered, unreadable images named) serves the probe unchanged."""

    def __init__(self, model: torch.nn.Module, pool: str):
        super().__init__()
        self.model, self.pool = model, pool
        self.num_classes = getattr(model, "head_hidden_size", None) or model.num_features  # the output width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.model, images, self.pool)


def extract(model: torch.nn.Module, dataset: LabelledImages, *, pool: str, batch_size: int, num_workers: int,
            device: torch.device, amp_dtype: torch.dtype | None, info: DistInfo = DistInfo()) -> Features:
    """Features of every sample; rank r reads samples r, r + world, ... (no padding), all ranks get all rows."""
    scores = score_dataset(PooledFeatures(model, pool), dataset, batch_size=batch_size, num_workers=num_workers,
                           device=device, amp_dtype=amp_dtype, info=info)
    return Features(scores.index, scores.logits, scores.skipped)


# ----------------------------------------------------------------------------------------------
# the cache


def data_signature(samples: list[Sample]) -> list[list]:
    """Each image's path, size and modification time (a missing file is listed as such)."""
    out = []
    for s in samples:
        try:
            st = os.stat(s.path)
            out.append([s.path, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([s.path, -1, -1])
    return out


def cache_key(encoder: Encoder, samples: list[Sample], *, pool: str, resize: str, amp_dtype, device: torch.device) -> str:
    record = {"version": CACHE_VERSION, "weights": encoder.fingerprint, "img_size": encoder.img_size,
              "mean": list(encoder.mean), "std": list(encoder.std), "pool": pool, "resize": resize,
              "precision": str(amp_dtype), "device": device.type, "data": data_signature(samples)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def read_cache(path: Path) -> Features | None:
    """The features a cache file holds, or None when it is absent or unreadable (then recomputed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        with open(path.with_suffix(".json"), encoding="utf-8") as f:
            skipped = [tuple(x) for x in json.load(f)["skipped"]]
    except (SafetensorError, OSError, ValueError, KeyError):
        return None
    return Features(tensors["index"].numpy(), tensors["features"].numpy(), skipped, from_cache=True)


def write_cache(path: Path, feats: Features, encoder: Encoder) -> None:
    """Written atomically: the side file first, then the features, each through a temporary name."""
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    side, tmp = path.with_suffix(".json"), path.with_name(path.name + ".tmp")
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps({"encoder": encoder.source, "kind": encoder.kind, "skipped": feats.skipped}) + "\n",
                        encoding="utf-8")
    os.replace(side_tmp, side)
    save_file({"index": torch.from_numpy(feats.index), "features": torch.from_numpy(feats.values)}, str(tmp),
              metadata={"encoder": encoder.source, "weights": encoder.fingerprint})
    os.replace(tmp, path)


def features_of(encoder: Encoder, samples: list[Sample], *, pool: str, resize: str, batch_size: int, num_workers: int,
                device: torch.device, amp_dtype, info: DistInfo = DistInfo(), cache_dir: Path | None = None) -> Features:
    """The features of ``samples`` under ``encoder``: read from ``cache_dir`` when computed before, else
    extracted (by every rank) and cached (by the main process)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(encoder, samples, pool=pool, resize=resize, amp_dtype=amp_dtype, device=device)}.safetensors"
        cached = read_cache(path)
        if cached is not None:
            return cached
    dataset = LabelledImages(samples, probe_transform(encoder.img_size, encoder.mean, encoder.std, resize))
    feats = extract(encoder.model.to(device), dataset, pool=pool, batch_size=batch_size, num_workers=num_workers,
                    device=device, amp_dtype=amp_dtype, info=info)
    if path is not None and info.is_main:
        write_cache(path, feats, encoder)
    return feats


def trunk_features(trunk: torch.nn.Module, images: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, D] features of a pretraining network (``models.FSFMTrunk``) on whole, unmasked images: its
    encoder's tokens after the final norm, pooled as ``pooled_features`` pools a timm encoder's, so the
    monitor of a run and a later probe of its checkpoint measure the same feature."""
    tokens = trunk.encode(images)
    return tokens[:, 1:].mean(dim=1) if pool == "avg" else tokens[:, 0]
