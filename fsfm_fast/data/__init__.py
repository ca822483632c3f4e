"""Face images with parsing maps: the synthetic generator, the reference-layout loader, sampling.

Shards (``make_shards``, ``shards``), DALI (``dali``) and the loader builder (``loaders``) are
submodules imported where used, so importing this package stays light."""

from .faces import FaceTransform, augment_params, collate_faces, parsing_map_problem
from .folder import FaceParsingFolder, compute_mean_std
from .labels import FLIP_LABELS, NUM_LABELS
from .sampler import EpochSampler, batches_per_epoch
from .synthetic import render_face, write_synthetic_dataset

__all__ = ["FLIP_LABELS", "NUM_LABELS", "EpochSampler", "FaceParsingFolder", "FaceTransform", "augment_params",
           "batches_per_epoch", "collate_faces", "compute_mean_std", "parsing_map_problem", "render_face",
           "write_synthetic_dataset"]
