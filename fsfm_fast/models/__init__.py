"""FSFM-3C networks: the online (masked) branch and the EMA target branch; detectors built on the encoder.

The names below are imported on first use (PEP 562), so that ``fsfm_fast.models.configs``, which the
verbs' parsers read, does not bring torch and timm in with this package."""
from __future__ import annotations

from fsfm_fast.runtime.lazy import lazy_names

_HOMES = {
    "configs": ("MODEL_CONFIGS", "REP_POS_EMBEDS", "ModelConfig", "get_config", "list_models"),
    "detector": ("DetectorConfig", "PretrainedEncoder", "create_detector", "load_pretrained_encoder"),
    "loading": ("load_detector",),
    "adapter": ("load_adapter_detector", "real_anchored_contrastive"),
    "fsfm": ("FSFMTrunk", "OnlineNetwork", "OnlineOutput", "ProjectionMLP", "TargetNetwork",
             "create_online", "create_target", "load_reference_weights"),
}
__getattr__, __all__ = lazy_names(globals(), _HOMES)

