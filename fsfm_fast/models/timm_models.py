"""The FSFM encoders as timm models: ``timm.create_model("fsfm_vit_base_patch16", ...)`` once fsfm_fast is imported.

Each size of ``configs.py`` (tiny, small, base, large, huge) is registered under its own name and built
as ``FSFMVisionTransformer``, timm's own ``VisionTransformer`` with the same keys (timm's and the FSFM
encoder's, SPEC section 7) and the same computation, except that it hands a head that reads tokens (the
reference's FAS head, ``models.heads``) every token instead of the pooled feature.
By default a name builds the encoder as it was pretrained, the way timm registers MAE encoders: no
head (``num_classes=0``) and cls-token pooling, which keeps the final ``norm``, so every encoder key
loads and ``forward_features`` is the FSFM encoder's output. ``num_classes=2, global_pool="avg"``
builds the detector of the fine-tuning recipe, exactly what ``create_detector`` builds.

No weights are bundled and nothing is downloaded: ``pretrained=True`` loads the file you name,

    timm.create_model("fsfm_vit_base_patch16", pretrained=True, pretrained_cfg_overlay=dict(file=PATH))

where PATH is an export's ``model.safetensors``, one of our pretraining or detector checkpoints, the
reference release's ``checkpoint-400.pth`` or a timm state_dict. fsfm_fast reads the file with its safe
loader (the release pickles an ``argparse.Namespace``, which timm's weights-only loader refuses) and the
encoder rules of ``load_pretrained_encoder`` apply: decoders, projector and predictor are ignored, the
position embedding is resampled to ``img_size``, and every encoder key must be there with its shape.
Unless the call says otherwise, the file also sets the classes (its head's, none without one), the
pooling (avg when it has ``fc_norm``) and the input size (its position grid), so a detector's file
builds that detector, head included; a head of another shape keeps its fresh initialisation, as timm
does. The model's ``pretrained_cfg`` then carries the file's FSFM normalisation and input size:
the mean/std of ``pretrain_ds_mean_std.txt`` beside it, else the one the checkpoint records, else the
one of an export's ``config.json`` beside it. An export folder loads whole with
``timm.create_model("local-dir:OUT", pretrained=True)``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg, load_pretrained, register_model
from timm.models.vision_transformer import VisionTransformer

from fsfm_fast.formats import IMAGENET_MEAN, IMAGENET_STD, find_mean_std, read_weights
from fsfm_fast.models.configs import MODEL_CONFIGS, get_config
from fsfm_fast.models.encoder_weights import fit_weights, head_keys, refuse_misfit
from fsfm_fast.models.heads import build_head

# Detector heads other than timm's linear one (models.heads): a registered name takes these arguments, so
# an export of a FAS-head or FS-Adapter detector loads with timm.create_model once fsfm_fast is imported.
HEAD_ARGS = ("head", "adapter", "adapter_reduction")

PAPER = "FSFM: A Generalizable Face Security Foundation Model via Self-Supervised Facial Representation Learning"
EVAL_CROP_PCT = 0.875  # the recipe's evaluation resize: 256 -> centre crop 224


def _cfg(name: str) -> dict[str, Any]:
    # The mean/std here are ImageNet's, timm's default: each FSFM model is normalised with the statistics
    # of its own pretraining set, which come with its weights (see the module docstring).
    return {"num_classes": 0, "input_size": (3, 224, 224), "fixed_input_size": True, "interpolation": "bicubic",
            "crop_pct": EVAL_CROP_PCT, "crop_mode": "center", "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "first_conv": "patch_embed.proj", "classifier": "head",
            "paper_name": PAPER, "paper_ids": "arXiv:2412.12032",
            "description": f"FSFM {name.split('_')[2]} encoder; weights come from a file you name (file=...)"}


default_cfgs = {name: _cfg(name) for name in MODEL_CONFIGS}
# timm's own ViT of each width: an export names it with the FSFM size in model_args, so plain timm loads it
TIMM_ARCHITECTURES = {"fsfm_vit_tiny_patch16": "vit_tiny_patch16_224", "fsfm_vit_small_patch16": "vit_small_patch16_224",
                      "fsfm_vit_base_patch16": "vit_base_patch16_224", "fsfm_vit_large_patch16": "vit_large_patch16_224",
                      "fsfm_vit_huge_patch14": "vit_huge_patch14_224"}


class FSFMVisionTransformer(VisionTransformer):
    """timm's ViT, whose head may read every token: when ``head.reads_tokens`` is set, the head gets the
    sequence the reference's FAS ``forward_features`` returns: slot 0 the pooled feature (``fc_norm`` of the
    average of the patch tokens under avg pooling; the normed cls token under cls pooling), then the patch
    tokens as the encoder left them (normed under cls pooling, raw under avg pooling, where timm's ViT has no
    final ``norm``). Any other head gets the pooled feature, as in timm's ViT."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not getattr(self.head, "reads_tokens", False):
            return super().forward_head(x, pre_logits)
        pooled = self.head_drop(self.fc_norm(self.pool(x)))
        if pre_logits:  # timm's meaning: the feature before the classifier, one vector per image
            return pooled
        return self.head(torch.cat([pooled[:, None], x[:, self.num_prefix_tokens:]], dim=1))


def architecture_args(name: str) -> dict[str, Any]:
    """The ``VisionTransformer`` arguments of FSFM size ``name`` (LayerNorm eps 1e-6 and qkv bias are timm's defaults)."""
    c = get_config(name)
    return {"patch_size": c.patch_size, "embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads,
            "mlp_ratio": c.mlp_ratio, "qkv_bias": True}


def _create(name: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    head_args = {k: kwargs.pop(k) for k in HEAD_ARGS if k in kwargs}
    own_head = head_args.get("head", "linear") != "linear" or bool(head_args.get("adapter"))
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    file = overlay.get("file") if pretrained and overlay.get("state_dict") is None else None
    state = None
    if pretrained and not file:
        cfg = kwargs.get("pretrained_cfg")
        if overlay.get("state_dict") is None and not (isinstance(cfg, dict) and (cfg.get("file") or cfg.get("state_dict"))):
            raise RuntimeError(f"fsfm_fast bundles no weights for {name}: pass pretrained_cfg_overlay=dict(file=PATH) "
                               "(a checkpoint or model.safetensors), or load an export folder with "
                               "timm.create_model('local-dir:PATH', pretrained=True)")
    if file:  # read here, safely, whatever the format; the weights' own defaults come before timm's
        found = read_pretrained_file(file)
        state = found.pop("state_dict")
        overlay = {**found, **overlay}
        kwargs.setdefault("global_pool", weights_pooling(state))
        grid = weights_grid(state)
        size = kwargs.get("img_size") or (grid * get_config(name).patch_size if grid else None)
        if size is not None:  # what this model will take; timm builds img_size from it by default
            overlay.setdefault("input_size", (3, *((size, size) if isinstance(size, int) else size)))
    model = build_model_with_cfg(FSFMVisionTransformer, name, pretrained and state is None and not own_head,
                                 pretrained_cfg_overlay=overlay, pretrained_filter_fn=fit_to_model,
                                 **{**architecture_args(name), **kwargs})
    if own_head:  # the FAS head or the FS-Adapter, which timm's ViT does not have: swapped in before loading
        if not model.num_classes:
            raise ValueError(f"head={head_args.get('head')!r} / adapter={head_args.get('adapter')!r} need num_classes > 0")
        model.head = build_head(model.embed_dim, model.num_classes, head_args.get("head", "linear"),
                                head_args.get("adapter", ""), head_args.get("adapter_reduction", 4))
        if pretrained and state is None:
            load_pretrained(model, pretrained_cfg=model.pretrained_cfg, num_classes=model.num_classes,
                            filter_fn=fit_to_model, strict=True)
    if state is not None:
        model.load_state_dict(fit_to_model(state, model), strict=True)
    return model


def read_pretrained_file(path: str | Path) -> dict[str, Any]:
    """``{"state_dict": ..., "num_classes": ..., "mean": ..., "std": ...}`` of a weights file: its
    weights and the pretrained cfg entries they imply (mean/std only when the file comes with them)."""
    path = Path(path)
    obj, state, _ = read_weights(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    head = state.get("head.weight")
    out: dict[str, Any] = {"state_dict": state, "num_classes": int(head.shape[0]) if hasattr(head, "shape") else 0}
    mean_std, _ = find_mean_std(path, obj)
    if mean_std is not None:
        out["mean"], out["std"] = tuple(mean_std[0]), tuple(mean_std[1])
    return out


def weights_pooling(state: dict[str, Any]) -> str:
    """The pooling a set of weights was trained with: ``fc_norm`` exists only under avg pooling."""
    return "avg" if "fc_norm.weight" in state else "token"


def weights_grid(state: dict[str, Any]) -> int | None:
    """The side of the square patch grid of the weights' position embedding (cls slot first), or None."""
    pos = state.get("pos_embed")
    side = math.isqrt(pos.shape[1] - 1) if getattr(pos, "ndim", 0) == 3 and pos.shape[1] > 1 else 0
    return side if side and side * side == pos.shape[1] - 1 else None


def fit_to_model(state: dict[str, Any], model: VisionTransformer) -> dict[str, Any]:
    """timm's ``pretrained_filter_fn``: the state_dict ``model`` loads strictly, by the encoder rules of
    ``load_pretrained_encoder``; raises a CheckpointError naming the encoder keys that are absent or misshapen."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    head = head_keys(model)
    selected, absent, wrong, _ = fit_weights(model, state, [k for k in own if k not in head])
    refuse_misfit(f"the weights do not fit the encoder of {model.pretrained_cfg.get('architecture', 'the model')}",
                  absent, wrong)
    for key in head:  # a head of the model's shape loads; any other keeps its initialisation
        value = state.get(key)
        selected[key] = value if getattr(value, "shape", None) == own[key].shape else own[key]
    return selected


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        return _create(name, pretrained, **kwargs)
    entrypoint.__name__ = entrypoint.__qualname__ = name  # timm registers an entrypoint under its __name__
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"The FSFM {name} encoder (a timm VisionTransformer); see fsfm_fast.models.timm_models."
    return entrypoint


for _name in MODEL_CONFIGS:
    globals()[_name] = register_model(_entrypoint(_name))

__all__ = [*MODEL_CONFIGS, "FSFMVisionTransformer", "TIMM_ARCHITECTURES", "architecture_args", "default_cfgs",
           "fit_to_model", "read_pretrained_file"]
del _name
