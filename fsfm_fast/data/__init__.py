"""Face images with parsing maps: the synthetic generator, the reference-layout loader, sampling.

Shards (``make_shards``, ``shards``), DALI (``dali``) and the loader builder (``loaders``) are
submodules imported where used, so importing this package stays light."""

from .folder import FLIP_LABELS, FaceParsingFolder, augment_params, collate_faces, compute_mean_std
from .sampler import EpochSampler, batches_per_epoch
from .synthetic import render_face, write_synthetic_dataset

__all__ = ["FLIP_LABELS", "EpochSampler", "FaceParsingFolder", "augment_params", "batches_per_epoch",
           "collate_faces", "compute_mean_std", "render_face", "write_synthetic_dataset"]
