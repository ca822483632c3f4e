"""A trained detector from its checkpoint, whichever of the two formats: a whole detector
(``DETECTOR_FORMAT``) or an FS-Adapter's trained parts on a frozen encoder (``ADAPTER_FORMAT``,
``models.adapter``)."""
from __future__ import annotations

import os

import torch
from timm.models.vision_transformer import VisionTransformer

from fsfm_fast.formats import ADAPTER_FORMAT, DETECTOR_FORMAT, CheckpointError, load_state_dict_strict, safe_load
from fsfm_fast.models.adapter import load_adapter_detector
from fsfm_fast.models.detector import DetectorConfig, detector_config


def load_detector(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                  encoder: str | os.PathLike | None = None) -> tuple[VisionTransformer, DetectorConfig, dict]:
    """(model with its trained weights, its config, the whole checkpoint) from a detector checkpoint:
    a whole detector (``DETECTOR_FORMAT``), or an FS-Adapter's trained parts (``ADAPTER_FORMAT``), whose
    frozen encoder is read from the file it references (or from ``encoder``, when that file moved) and
    checked against the recorded checksum (``models.adapter.load_adapter_detector``)."""
    ckpt = safe_load(path, map_location=map_location)
    model, config = detector_from_checkpoint(ckpt, path, encoder)
    return model, config, ckpt


def detector_from_checkpoint(ckpt: dict, path: str | os.PathLike, encoder: str | os.PathLike | None = None
                             ) -> tuple[VisionTransformer, DetectorConfig]:
    """The detector and its config from an already loaded detector checkpoint (``path`` names it in errors)."""
    if ckpt.get("format") == ADAPTER_FORMAT:
        model, config, _ = load_adapter_detector(path, ckpt, encoder)
        return model, config
    if ckpt.get("format") != DETECTOR_FORMAT or "detector" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a fsfm_fast detector checkpoint (format {ckpt.get('format')!r}); "
                              "make one with python -m fsfm_fast.finetune")
    config = detector_config(ckpt, path)
    model = config.build()
    load_state_dict_strict(model, ckpt["model"], path, "detector")
    return model, config
