"""Face images with parsing maps: the synthetic generator, the reference-layout loader, sampling.

Shards (``make_shards``, ``shards``), DALI (``dali``) and the loader builder (``loaders``) are
submodules imported where used, so importing this package stays light."""

from fsfm_fast.runtime.lazy import lazy_names

# imported on first use (PEP 562): most of these need torch, and ``python -m fsfm_fast.data.make_shards -h``
# or a verb's parser must not pay for it
_HOMES = {
    "faces": ("FaceTransform", "augment_params", "collate_faces", "parsing_map_problem"),
    "folder": ("FaceParsingFolder", "compute_mean_std"),
    "labels": ("FLIP_LABELS", "NUM_LABELS"),
    "sampler": ("EpochSampler", "batches_per_epoch"),
    "synthetic": ("render_face", "write_synthetic_dataset"),
}
__getattr__, __all__ = lazy_names(globals(), _HOMES)

