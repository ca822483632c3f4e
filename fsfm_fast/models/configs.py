"""Network sizes by model name (SPEC §3), plus a tiny size for CPU runs and tests, and the names of the
choices the verbs' flags offer. Torch-free: the parsers import it before anything heavy."""
from __future__ import annotations

from dataclasses import dataclass

from fsfm_fast.runtime.cli import UsageError


REP_POS_EMBEDS = ("zeros", "sincos")  # the rep decoder's frozen position embedding (models/fsfm.py)
HEADS = ("linear", "fas", "fas_pooled")  # a detector's heads (models/heads.py)


@dataclass(frozen=True)
class ModelConfig:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    rep_dim: int
    rep_depth: int
    rep_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    proj_hidden: int = 4096
    proj_dim: int = 256
    mlp_ratio: float = 4.0


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "fsfm_vit_tiny_patch16": ModelConfig(16, 192, 6, 3, 192, 1, 3, 128, 2, 4, proj_hidden=1024),
    "fsfm_vit_small_patch16": ModelConfig(16, 384, 12, 12, 384, 2, 16, 512, 8, 16),
    "fsfm_vit_base_patch16": ModelConfig(16, 768, 12, 12, 768, 2, 16, 512, 8, 16),
    "fsfm_vit_large_patch16": ModelConfig(16, 1024, 24, 16, 1024, 2, 16, 512, 8, 16),
    "fsfm_vit_huge_patch14": ModelConfig(14, 1280, 32, 16, 1280, 2, 16, 512, 8, 16),
}


def list_models() -> list[str]:
    return list(MODEL_CONFIGS)


def get_config(name: str) -> ModelConfig:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_CONFIGS)}") from None


def check_input_size(model: str, input_size: int) -> None:
    """``--input_size`` a whole number of ``model``'s patches (the patch grid cannot hold a remainder)."""
    patch = get_config(model).patch_size
    if input_size < patch or input_size % patch:
        raise UsageError(f"--input_size {input_size} is not a multiple of {model}'s patch size {patch}")
