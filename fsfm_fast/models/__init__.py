"""FSFM-3C networks: the online (masked) branch and the EMA target branch; detectors built on the encoder.

The names below are imported on first use (PEP 562), so that ``fsfm_fast.models.configs``, which the
verbs' parsers read, does not bring torch and timm in with this package."""
from __future__ import annotations

import importlib

_HOMES = {
    "configs": ("MODEL_CONFIGS", "REP_POS_EMBEDS", "ModelConfig", "get_config", "list_models"),
    "detector": ("ADAPTER_FORMAT", "DETECTOR_FORMAT", "DetectorConfig", "PretrainedEncoder", "create_detector",
                 "load_detector", "load_pretrained_encoder"),
    "adapter": ("load_adapter_detector", "real_anchored_contrastive"),
    "fsfm": ("FSFMTrunk", "OnlineNetwork", "OnlineOutput", "ProjectionMLP", "TargetNetwork",
             "create_online", "create_target", "load_reference_weights"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME_OF[name]}", __name__), name)
    globals()[name] = value  # the next look-up is a plain one
    return value


__all__ = [
    "ADAPTER_FORMAT",
    "DETECTOR_FORMAT",
    "MODEL_CONFIGS",
    "REP_POS_EMBEDS",
    "DetectorConfig",
    "PretrainedEncoder",
    "create_detector",
    "load_adapter_detector",
    "load_detector",
    "load_pretrained_encoder",
    "FSFMTrunk",
    "ModelConfig",
    "OnlineNetwork",
    "OnlineOutput",
    "ProjectionMLP",
    "TargetNetwork",
    "create_online",
    "create_target",
    "get_config",
    "list_models",
    "load_reference_weights",
    "real_anchored_contrastive",
]
