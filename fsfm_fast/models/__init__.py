"""FSFM-3C networks: the online (masked) branch and the EMA target branch; detectors built on the encoder."""
from fsfm_fast.models.configs import MODEL_CONFIGS, ModelConfig, get_config, list_models
from fsfm_fast.formats import ADAPTER_FORMAT, DETECTOR_FORMAT
from fsfm_fast.models.detector import DetectorConfig, PretrainedEncoder, create_detector, load_pretrained_encoder
from fsfm_fast.models.loading import load_detector
from fsfm_fast.models.adapter import load_adapter_detector, real_anchored_contrastive
from fsfm_fast.models.fsfm import (
    REP_POS_EMBEDS,
    FSFMTrunk,
    OnlineNetwork,
    OnlineOutput,
    ProjectionMLP,
    TargetNetwork,
    create_online,
    create_target,
    load_reference_weights,
)

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
