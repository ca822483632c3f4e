"""fsfm_fast: fast, faithful pretraining of the FSFM face security foundation model."""

__version__ = "0.1.0"

from fsfm_fast.timm_registration import register_models_with_timm  # noqa: E402

register_models_with_timm()  # timm.create_model("fsfm_vit_base_patch16", ...) works from here on
