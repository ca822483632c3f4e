"""Detectors: the pretrained FSFM encoder with a classification head (SPEC section 7).

The detector is timm's own ``VisionTransformer``, so its state_dict keys are timm's and every timm tool
understands it. Its encoder keys (``patch_embed.*``, ``cls_token``, ``pos_embed``, ``blocks.*``,
``norm.*``) are the FSFM online encoder's, so pretrained weights load by name:

- ``global_pool="avg"`` (the recipe): mean of the patch tokens (cls excluded) -> ``fc_norm`` -> ``head``;
  timm then has no ``norm``, and the pretrained ``norm`` is ignored, as the reference does;
- ``global_pool="cls"``: the cls token after ``norm`` -> ``head``.

The head is a linear layer (the recipe), the reference's anti-spoofing head, or either behind the
FS-Adapter (``models.heads``). A detector checkpoint (``DETECTOR_FORMAT``) records everything needed to
rebuild and use the detector without the training flags: model name, input size, pooling, head,
classes and their names, the input mean/std, the evaluation resize, and the inference contract (the
positive class, the score's name, an honestly chosen threshold and its source; ``fsfm_fast.inference``)
(``DetectorConfig``). An
FS-Adapter checkpoint (``ADAPTER_FORMAT``, ``models.adapter``) holds only the trained parts and names
its frozen encoder file; ``load_detector`` reads both kinds.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
from timm.data import create_transform
from timm.models.vision_transformer import VisionTransformer

from fsfm_fast.formats import IMAGENET_MEAN, IMAGENET_STD, CheckpointError, find_mean_std, read_weights
from fsfm_fast.inference import Contract, check as check_contract, derive_positive, score_name
from fsfm_fast.models import timm_models  # noqa: F401  (registers the FSFM names with timm)
from fsfm_fast.models.configs import get_config
from fsfm_fast.models.encoder_weights import fit_weights, head_keys, refuse_misfit
from fsfm_fast.models.heads import ADAPTERS, HEADS, build_head, recorded_head

POOLINGS = {"avg": "avg", "cls": "token"}  # our name -> timm's
EVAL_RESIZES = ("crop", "plain")


def create_detector(name: str, num_classes: int = 2, img_size: int = 224, global_pool: str = "avg",
                    drop_path_rate: float = 0.1, head: str = "linear", adapter: str = "",
                    adapter_reduction: int = 4) -> VisionTransformer:
    """A timm ViT of the FSFM size ``name`` (the timm model ``name`` registered by ``timm_models``, so
    ``timm.create_model`` builds the same network) with a fresh head: ``head`` "linear" (weights
    ~ N(0, 2e-5), bias 0) or "fas" (the reference's anti-spoofing head), behind the FS-Adapter when
    ``adapter="fs"`` (``models.heads``)."""
    config = get_config(name)
    if global_pool not in POOLINGS:
        raise ValueError(f"global_pool must be one of {list(POOLINGS)}, got {global_pool!r}")
    if int(img_size) != img_size or img_size <= 0 or img_size % config.patch_size:
        raise ValueError(f"img_size must be a positive multiple of the patch size {config.patch_size}, got {img_size}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    model = timm.create_model(name, num_classes=int(num_classes), img_size=int(img_size),
                              global_pool=POOLINGS[global_pool], drop_path_rate=drop_path_rate)
    model.head = build_head(config.embed_dim, int(num_classes), head, adapter, adapter_reduction)
    model.model_name = name
    return model


# ----------------------------------------------------------------------------------------------
# pretrained encoders


@dataclass
class PretrainedEncoder:
    """What ``load_pretrained_encoder`` found and loaded."""
    path: str
    kind: str  # "fsfm_fast pretraining", "reference", "fsfm_fast detector", "state_dict", "safetensors"
    loaded: list[str]
    ignored: list[str]
    missing: list[str]  # always exactly head_keys(model)
    pos_embed_resampled_from: tuple[int, int] | None = None
    mean_std: tuple[list[float], list[float]] | None = None
    mean_std_source: str | None = None
    pretrained_model: str | None = None  # the model name the checkpoint records, when it does


def _recorded_model(obj: dict) -> str | None:
    args = obj.get("args")
    value = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
    return value if isinstance(value, str) else None


def load_pretrained_encoder(model: VisionTransformer, path: str | os.PathLike) -> PretrainedEncoder:
    """Load the encoder weights of ``path`` into a ``create_detector`` model and say what was loaded.

    ``path``: one of our pretraining checkpoints, a reference release (``checkpoint-400.pth``, key
    ``model``; read with the safe loader), one of our detector checkpoints, a timm-style state_dict
    (``.pth``) or a ``.safetensors`` file. The position embedding is resampled when the input size
    differs. Keys that are not the detector's encoder (decoders, projector, predictor, mask token; the
    ``norm`` under avg pooling; a source head) are ignored. Every encoder key must be there with its
    shape, so the keys left missing are exactly the head (and ``fc_norm``); anything else is a
    CheckpointError listing the keys. The mean/std come from ``pretrain_ds_mean_std.txt`` beside the
    file, else from the checkpoint itself, else from the ``config.json`` of an export folder holding it.
    """
    path = Path(path)
    obj, state, kind = read_weights(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    recorded = _recorded_model(obj)
    target = model.state_dict()
    expected_missing = head_keys(model)
    encoder_keys = [k for k in target if k not in expected_missing]
    selected, absent, wrong, resampled = fit_weights(model, state, encoder_keys)
    name = getattr(model, "model_name", type(model).__name__)
    refuse_misfit(f"{path} ({kind}) does not fit the encoder of {name}"
                  + (f" (it was pretrained as {recorded})" if recorded else ""), absent, wrong)
    model.load_state_dict(selected, strict=False)  # refuse_misfit left exactly the head keys missing
    mean_std, source = find_mean_std(path, obj)
    return PretrainedEncoder(
        path=str(path), kind=kind, loaded=sorted(selected), ignored=sorted(k for k in state if k not in selected),
        missing=sorted(expected_missing), pos_embed_resampled_from=resampled, mean_std=mean_std,
        mean_std_source=source, pretrained_model=recorded,
    )


# ----------------------------------------------------------------------------------------------
# detector checkpoints


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a trained detector and feed it: stored in its checkpoints."""
    model: str
    img_size: int = 224
    global_pool: str = "avg"
    num_classes: int = 2
    drop_path_rate: float = 0.1
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_STD)
    labels: tuple[str, ...] = ("real", "fake")  # class index -> name; the score is P(labels[1])
    eval_resize: str = "crop"  # "crop": resize to img_size / crop_pct, centre crop; "plain": resize to img_size
    crop_pct: float = 0.875
    train_classes: tuple[str, ...] = ()  # class folders seen in training (evaluate marks the others unseen)
    mean_std_source: str = ""  # where mean/std came from (a pretrain_ds_mean_std.txt, ImageNet, ...)
    head: str = "linear"  # one of models.heads.HEADS
    adapter: str = ""  # "" or "fs": FS-Adapter on a frozen encoder (models.adapter)
    adapter_reduction: int = 4
    # the inference contract (fsfm_fast.inference): the score is P(positive_class); "" derives it from labels
    positive_class: str = ""
    threshold: float | None = None  # an honestly chosen decision threshold (score >= threshold), or None
    threshold_source: str = ""  # how it was chosen, e.g. "source-selected: ..."; never a test set

    def __post_init__(self):
        if not self.positive_class:
            object.__setattr__(self, "positive_class", derive_positive(self.labels))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", float(self.threshold))
        check_contract(self.labels, self.positive_class, self.threshold, self.threshold_source)
        get_config(self.model)
        if self.global_pool not in POOLINGS:
            raise ValueError(f"global_pool must be one of {list(POOLINGS)}, got {self.global_pool!r}")
        if self.eval_resize not in EVAL_RESIZES:
            raise ValueError(f"eval_resize must be one of {EVAL_RESIZES}, got {self.eval_resize!r}")
        if len(self.labels) != self.num_classes or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"inconsistent detector config: {self}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.head not in HEADS or self.adapter not in ADAPTERS:
            raise ValueError(f"head must be one of {HEADS} and adapter one of {ADAPTERS}, got {self.head!r}, "
                             f"{self.adapter!r}")

    def eval_crop(self, resize: str | None = None) -> tuple[float, str]:
        """timm's ``(crop_pct, crop_mode)`` of the evaluation resize (``resize``, default ``eval_resize``):
        "crop" resizes to img_size / crop_pct and cuts the centre; "plain" squashes the whole image."""
        return (self.crop_pct, "center") if (resize or self.eval_resize) == "crop" else (1.0, "squash")

    def build(self) -> VisionTransformer:
        return create_detector(self.model, self.num_classes, self.img_size, self.global_pool, self.drop_path_rate,
                               self.head, self.adapter, self.adapter_reduction)

    @property
    def contract(self) -> Contract:
        return Contract(self.labels, self.positive_class, self.threshold, self.threshold_source)

    def to_dict(self) -> dict[str, Any]:
        # "score" is derived from positive_class; it is written so that a reader of the record sees it
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
                "score": score_name(self.positive_class)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DetectorConfig:
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
                 if k in cls.__dataclass_fields__}
        if "head" in known:
            known["head"] = recorded_head(known["head"], values)
        return cls(**known)


def detector_config(ckpt: Mapping, path: str | os.PathLike) -> DetectorConfig:
    """The ``DetectorConfig`` a detector checkpoint records."""
    try:
        return DetectorConfig.from_dict(ckpt["detector"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path}: its detector record is not usable ({exc})") from None


def eval_transform(config: DetectorConfig, resize: str | None = None):
    """``crop``: resize the shorter side to img_size / crop_pct (256 for 224), centre crop img_size;
    ``plain``: resize the whole image to img_size x img_size. Bicubic, then the detector's mean/std."""
    crop_pct, crop_mode = config.eval_crop(resize)
    return create_transform(config.img_size, is_training=False, interpolation="bicubic", crop_pct=crop_pct,
                            crop_mode=crop_mode, mean=tuple(config.mean), std=tuple(config.std))
