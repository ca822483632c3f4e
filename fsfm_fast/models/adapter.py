"""FS-Adapter: efficient tuning of a frozen FSFM encoder (the authors' later variant; SPEC section 7).

The detector is ``create_detector(..., adapter="fs")``: the pretrained encoder and ``fc_norm`` stay as
loaded and never change (``fc_norm`` keeps its identity initialisation; the authors freeze it too), and
only the head trains: the adapter, its projector and the classifier (``models.heads.FSAdapterHead``).
Training adds ``weight_cl`` x ``real_anchored_contrastive`` of the projections to the classification loss.

The checkpoint of such a detector (``ADAPTER_FORMAT``, "fsfm_fast.adapter/1") is a dict saved with
``torch.save``, readable with ``weights_only=True``:

- ``"format"``: ``"fsfm_fast.adapter/1"``;
- ``"detector"``: the ``DetectorConfig`` as a dict (``adapter`` "fs", ``head``, input size, mean/std, ...);
- ``"model"``: the trained parts only, under the detector's own key names (``head.adapter.*``,
  ``head.projector.*``, ``head.classifier.*``): merged with the encoder's weights they give the whole
  detector's state_dict;
- ``"encoder"``: the frozen encoder by reference: ``{"path", "sha256", "bytes", "kind"}``, the absolute
  path of the pretrained file given at training, its SHA-256, its size, and what kind of file it was;
- what training adds (``"iteration"``, ``"args"``, ``"selection"``; resume checkpoints also hold the
  optimizer state of the trained parts).

``load_adapter_detector(path)`` rebuilds the detector from it (``models.load_detector`` does the same for
either kind of checkpoint): it reads the encoder file named there (or ``encoder``, where the file moved),
refuses one whose SHA-256 differs, loads it as any pretrained encoder, then loads the trained parts strictly.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fsfm_fast.formats import ADAPTER_FORMAT, CheckpointError, load_state_dict_strict, safe_load
from fsfm_fast.models.detector import DetectorConfig, PretrainedEncoder, detector_config, load_pretrained_encoder

TRAINED_PREFIX = "head."  # everything the adapter variant trains lives under the detector's head
BASE_TEMPERATURE = 0.07  # supervised-contrastive convention: the loss is scaled by temperature / 0.07


def freeze_encoder(model: nn.Module) -> int:
    """Freeze everything but the head (adapter, projector, classifier); returns the trainable count."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(TRAINED_PREFIX))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What an adapter checkpoint keeps: the head's tensors, under the detector's key names."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(TRAINED_PREFIX)}


def load_trained_state(model: VisionTransformer, state: dict, path: str | os.PathLike) -> None:
    """Load ``trained_state`` back, strictly: the head's keys, all of them, and nothing else."""
    other = [k for k in state if not k.startswith(TRAINED_PREFIX)]
    if other:
        raise CheckpointError(f"checkpoint {path}: an adapter checkpoint holds only {TRAINED_PREFIX}* weights, "
                              f"this one also {other[:4]}")
    load_state_dict_strict(model.head, {k[len(TRAINED_PREFIX):]: v for k, v in state.items()}, path, "adapter")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def encoder_reference(encoder: PretrainedEncoder) -> dict:
    """How an adapter checkpoint names its frozen encoder."""
    path = Path(encoder.path).resolve()
    return {"path": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size, "kind": encoder.kind}


def load_adapter_detector(path: str | os.PathLike, ckpt: dict | None = None,
                          encoder: str | os.PathLike | None = None
                          ) -> tuple[VisionTransformer, DetectorConfig, dict]:
    """(model, config, checkpoint) of an ``ADAPTER_FORMAT`` checkpoint: the frozen encoder read from the
    file it names (or ``encoder``), checked against its SHA-256, and the trained parts on top."""
    ckpt = safe_load(path) if ckpt is None else ckpt
    ref = ckpt.get("encoder")
    if ckpt.get("format") != ADAPTER_FORMAT or not isinstance(ref, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an FS-Adapter checkpoint (format {ckpt.get('format')!r})")
    config = detector_config(ckpt, path)
    source = Path(encoder) if encoder is not None else Path(str(ref.get("path", "")))
    if not source.is_file():
        raise CheckpointError(f"{path}: its frozen encoder {source} is not there; pass the file it was trained "
                              f"with (SHA-256 {ref.get('sha256')}) as encoder=...")
    found = file_sha256(source)
    if found != ref.get("sha256"):
        raise CheckpointError(f"{path}: the encoder file {source} has SHA-256 {found}, but the adapter was trained "
                              f"on {ref.get('sha256')} ({ref.get('path')}): not the same weights")
    model = config.build()
    load_pretrained_encoder(model, source)
    load_trained_state(model, ckpt["model"], path)
    return model, config, ckpt


LOG_EPSILON = 1e-6  # the reference adds it to the denominator before the log (avoids log(0))


def real_anchored_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                              real_label: int = 0) -> torch.Tensor:
    """The authors' real-anchored supervised contrastive loss over the pairs of a batch, as the reference
    computes it (``RealAnchorConLoss`` over ``SupConLoss``, one view per sample).

    ``features`` [B, D] are L2-normalised projections. Anchor i scores every sample j by
    ``s_ij = <z_i, z_j> / temperature``, shifted by the row's maximum m_i (taken over all j, itself
    included; no gradient through it); its log-probability of j is
    ``s_ij - m_i - log(sum_{a != i} exp(s_ia - m_i) + 1e-6)``, the 1e-6 being the reference's (so the
    shift is part of the value, not only of its stability). Its loss is minus the mean of that over its
    positives. Only real samples have positives (the other real samples), so real faces are pulled
    together and pushed away from attacks, while attack-attack pairs never count. The result is the mean
    over all B anchors (those without positives add 0), scaled by ``temperature / 0.07``. A batch without a
    real sample gives 1e-6, as the reference's does; every batch's value is a function of ``features``, so
    every parameter gets a gradient (of zero when nothing pairs).
    """
    n = features.shape[0]
    z = features.float()
    real = labels.reshape(-1) == real_label
    sim = z @ z.T / temperature
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()
    self_pair = torch.eye(n, dtype=torch.bool, device=z.device)
    denominator = sim.exp().masked_fill(self_pair, 0.0).sum(1, keepdim=True) + LOG_EPSILON
    log_prob = sim - denominator.log()
    positive = real[:, None] & real[None, :] & ~self_pair
    per_anchor = -torch.where(positive, log_prob, 0.0).sum(1) / positive.sum(1).clamp(min=1)
    # no real sample: the reference's constant 1e-6, chosen on the device (no host read in the step)
    return per_anchor.mean() * (temperature / BASE_TEMPERATURE) + (~real.any()).float() * LOG_EPSILON
