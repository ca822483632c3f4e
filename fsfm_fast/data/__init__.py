"""Face images with parsing maps: the synthetic generator, the reference-layout loader, sampling.

Shards (``make_shards``, ``shards``), DALI (``dali``) and the loader builder (``loaders``) are
submodules imported where used, so importing this package stays light."""

import importlib

# imported on first use (PEP 562): most of these need torch, and ``python -m fsfm_fast.data.make_shards -h``
# or a verb's parser must not pay for it
_HOMES = {
    "faces": ("FaceTransform", "augment_params", "collate_faces", "parsing_map_problem"),
    "folder": ("FaceParsingFolder", "compute_mean_std"),
    "labels": ("FLIP_LABELS", "NUM_LABELS"),
    "sampler": ("EpochSampler", "batches_per_epoch"),
    "synthetic": ("render_face", "write_synthetic_dataset"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME_OF[name]}", __name__), name)
    globals()[name] = value  # the next look-up is a plain one
    return value


__all__ = sorted(_HOME_OF)
