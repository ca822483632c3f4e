"""FSFM-3C networks: the online (masked) branch and the EMA target branch."""
from fsfm_fast.models.configs import MODEL_CONFIGS, ModelConfig, get_config, list_models
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
    "MODEL_CONFIGS",
    "REP_POS_EMBEDS",
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
]
