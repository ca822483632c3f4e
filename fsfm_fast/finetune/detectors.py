"""What every fine-tuning task shares: the detector's pretrained encoder and its input statistics, the
FS-Adapter's flags, the detection loss, validation over whole held-out splits, and what a checkpoint
keeps of a detector. The deepfake task (``deepfake``) and the anti-spoofing task (``fas``) build on it."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from .. import demo
from ..data.labelled import LabelledImages
from ..engine import run_folder
from ..engine.checkpoint import CheckpointManager
from ..evaluate import score_dataset
from ..formats import ADAPTER_FORMAT, DETECTOR_FORMAT, CheckpointError, choose_mean_std, load_state_dict_strict
from ..metrics import SingleClassWarning, frame_metrics
from ..models.adapter import (encoder_reference, freeze_encoder, load_trained_state, real_anchored_contrastive,
                              trained_state)
from ..models.detector import DetectorConfig, PretrainedEncoder, detector_config, load_pretrained_encoder
from ..runtime import cli
from ..runtime.devices import autocast_dtype, resolve_device
from ..runtime.distributed import DistInfo, barrier
from .args import mixup_active


def resolve_pretrained(args, say=print) -> str:
    if args.finetune != "auto":
        return args.finetune
    latest = CheckpointManager(demo.PRETRAIN_DIR).latest()
    if latest is None:
        say(f"no pretraining checkpoint in {demo.PRETRAIN_DIR}/ (python -m fsfm_fast.pretrain makes one): "
                    "fine-tuning from scratch")
        return ""
    return str(latest)


def normalisation(args, encoder) -> tuple[list[float], list[float], str]:
    """(mean, std, where they come from): ImageNet's on request, else the pretraining set's (SPEC section 5)."""
    found = None if encoder is None else (encoder.mean_std, encoder.mean_std_source or f"--finetune {encoder.path}")
    return choose_mean_std(args.normalize_from_IMN, args.mean_std, found)


class DetectionLoss:
    """Mixup/CutMix of the batch (their label smoothing included) and soft-target cross-entropy, as the
    recipe; without mixup, label-smoothed cross-entropy. With the FS-Adapter, plus ``weight_cl`` x the
    real-anchored contrastive loss of its projections, with the batch's own labels (mixed or not, as
    the authors do). ``plain`` (FAS): cross-entropy, plus the adapter's loss when ``weight_cl``."""

    def __init__(self, criterion: torch.nn.Module, mixup: Mixup | None = None, weight_cl: float = 0.0,
                 temperature: float = 0.07):
        self.criterion, self.mixup, self.weight_cl, self.temperature = criterion, mixup, weight_cl, temperature

    @classmethod
    def from_args(cls, args) -> DetectionLoss:
        """The deepfake recipe of ``python -m fsfm_fast.finetune``'s flags."""
        adapter = {"weight_cl": args.weight_cl if args.adapter == "fs" else 0.0, "temperature": args.temperature}
        if mixup_active(args):
            mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                          prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                          label_smoothing=args.smoothing, num_classes=2)
            return cls(SoftTargetCrossEntropy(), mixup, **adapter)
        if args.smoothing > 0:
            return cls(LabelSmoothingCrossEntropy(smoothing=args.smoothing), **adapter)
        return cls.plain(**adapter)

    @classmethod
    def plain(cls, weight_cl: float = 0.0, temperature: float = 0.07) -> DetectionLoss:
        return cls(torch.nn.CrossEntropyLoss(), weight_cl=weight_cl, temperature=temperature)

    def __call__(self, model, batch: dict) -> torch.Tensor | None:
        images, targets = batch["images"], batch["labels"]
        labels = targets
        if self.mixup is not None:
            keep = images.shape[0] - images.shape[0] % 2  # mixup pairs samples; a skipped image can leave one over
            if keep == 0:
                return None
            labels = labels[:keep]
            images, targets = self.mixup(images[:keep], targets[:keep])
        out = model(images)
        logits, projection = out if isinstance(out, tuple) else (out, None)  # the adapter's head gives both
        loss = self.criterion(logits, targets)
        if projection is not None and self.weight_cl:
            loss = loss + self.weight_cl * real_anchored_contrastive(projection, labels, self.temperature)
        return loss



def validator(sets: dict[str, LabelledImages], *, batch_size: int, num_workers: int, device, amp_dtype,
              info: DistInfo, metrics=None):
    """``validate(model)``: cross-entropy (no smoothing) and ``metrics(dataset, scores)`` (default: frame
    metrics) over each whole split, and the samples that could not be read, ``(path, why)``, for the
    engine to name (a validation set that silently shrinks changes the selection unseen)."""
    def validate(model) -> tuple[dict[str, dict[str, float]], list[tuple[str, str]]]:
        results, skipped = {}, []
        for name, dataset in sets.items():
            scores = score_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device,
                                   amp_dtype=amp_dtype, info=info)
            skipped += [(path, f"left out of validation split '{name}': {reason}") for path, reason in scores.skipped]
            labels = dataset.labels[scores.index]
            loss = F.cross_entropy(torch.from_numpy(scores.logits).float(), torch.from_numpy(labels)).item()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SingleClassWarning)
                found = metrics(dataset, scores) if metrics else frame_metrics(labels, scores.positive_prob)
                results[name] = {"loss": loss, **found, "images": int(labels.size)}
        return results, skipped
    return validate



def run_place(args, info: DistInfo) -> tuple[torch.device, torch.dtype | None, Path]:
    """This process's device and autocast dtype, and ``--output_dir``, proved writable by the main process
    and free of another run's results (``engine.run_folder``)."""
    device = resolve_device(args.device, info)
    out_dir = Path(args.output_dir)
    if info.is_main:
        cli.ensure_writable_dir(out_dir)
        run_folder.claim([out_dir], resume=args.resume, overwrite=args.overwrite)
    barrier(info)  # no rank reads the folder while the main process clears it
    return device, autocast_dtype(args.precision, device), out_dir



def load_encoder(model, config: DetectorConfig, args, info: DistInfo) -> PretrainedEncoder | None:
    """The pretrained encoder of ``--finetune`` loaded into ``model`` (None: from scratch); with the
    FS-Adapter, which needs one, the encoder is then frozen."""
    pretrained = resolve_pretrained(args, print if info.is_main else (lambda *a: None))
    if config.adapter and not pretrained:
        raise cli.UsageError("--adapter fs trains on a frozen pretrained encoder: give --finetune CKPT (or run "
                             "python -m fsfm_fast.pretrain first for the demo)")
    encoder = load_pretrained_encoder(model, pretrained) if pretrained else None
    if config.adapter and info.is_main:
        total = sum(p.numel() for p in model.parameters())
        print(f"FS-Adapter: the encoder is frozen; {freeze_encoder(model):,} of {total:,} parameters train "
              "(adapter, projector, head)", flush=True)
    elif config.adapter:
        freeze_encoder(model)
    return encoder


def detector_checkpointing(model, config: DetectorConfig, encoder: PretrainedEncoder | None):
    """``(record, restore)`` for the engine: what a checkpoint keeps of the detector, and how a resume
    puts it back. The whole detector (``DETECTOR_FORMAT``), or for the FS-Adapter only its trained parts
    and the frozen encoder by path and checksum (``ADAPTER_FORMAT``, ``models/adapter.py``)."""
    pretrained = None if encoder is None else {"path": encoder.path, "kind": encoder.kind,
                                               "mean_std_source": config.mean_std_source}
    fmt = ADAPTER_FORMAT if config.adapter else DETECTOR_FORMAT
    reference = encoder_reference(encoder) if config.adapter else None

    def record() -> dict:
        if config.adapter:
            return {"format": fmt, "detector": config.to_dict(), "model": trained_state(model), "encoder": reference,
                    "pretrained": pretrained}
        return {"format": fmt, "detector": config.to_dict(), "model": model.state_dict(), "pretrained": pretrained}

    def restore(ckpt: dict, path: Path) -> None:
        saved = detector_config(ckpt, path) if ckpt.get("format") == fmt else None
        keys = ("model", "img_size", "global_pool", "num_classes", "head", "adapter", "adapter_reduction")
        differ = [k for k in keys if saved is None or getattr(saved, k) != getattr(config, k)]
        if differ:
            raise CheckpointError(f"{path} is not a checkpoint of this detector (differs in {differ}: "
                                  f"{ {k: getattr(saved, k, None) for k in differ} })")
        if not config.adapter:
            load_state_dict_strict(model, ckpt["model"], path, "detector")
            return
        if (ckpt.get("encoder") or {}).get("sha256") != reference["sha256"]:
            raise CheckpointError(f"{path} was trained on another encoder ({(ckpt.get('encoder') or {}).get('path')}) "
                                  f"than --finetune {encoder.path}")
        load_trained_state(model, ckpt["model"], path)

    return record, restore
