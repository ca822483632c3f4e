"""A detector ready to score face crops, from any file that holds one: an export folder of
``python -m fsfm_fast.export`` (through torch, or its ``model.onnx`` through onnxruntime) or a detector
checkpoint (whole, FAS head, FS-Adapter). ``predict`` and ``evaluate`` read detectors through
``load_scorer``, so both accept the same files and apply the same inference contract."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from .formats import ADAPTER_FORMAT, DETECTOR_FORMAT, EXPORT_CONFIG, CheckpointError, read_timm_config, safe_load
from .inference import Contract
from .models.detector import eval_transform
from .models.heads import recorded_head
from .models.loading import detector_from_checkpoint
from .models.timm_models import EVAL_CROP_PCT
from .onnx_runtime import ONNX_FILE, OnnxModel
from .runtime import cli


@dataclass
class Scorer:
    """A detector ready to score face crops: its model, input transform and inference contract."""
    model: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    contract: Contract  # class names, the positive class, the recorded threshold and its source
    description: str
    runtime: str = "torch"  # or "onnx": an export's model.onnx through onnxruntime on the CPU
    record: dict = field(default_factory=dict)  # an export's fsfm_fast entry (selection, train_classes, ...)

    @property
    def score_key(self) -> str:
        """The rows' name of the score: ``p_fake``, ``p_attack``."""
        return f"p_{self.contract.positive_class}"


def export_transform(pretrained_cfg: dict, resize: str | None = None) -> Callable:
    """The evaluation transform an export records (timm's data config); ``resize`` overrides it as
    evaluate's ``--eval_resize`` does: ``crop`` (resize, centre crop) or ``plain`` (squash the image)."""
    data = resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
    if resize == "plain":
        data.update(crop_pct=1.0, crop_mode="squash")
    elif resize == "crop" and data.get("crop_mode") != "center":
        data.update(crop_pct=EVAL_CROP_PCT, crop_mode="center")
    return create_transform(**data)


def _from_export(path: Path, runtime: str = "torch",
                 resize: str | None = None) -> tuple[torch.nn.Module, Callable, Contract, str, dict]:
    config = read_timm_config(path)
    if config is None:
        raise cli.UsageError(f"--detector {path}: no readable config.json there; give an export folder of "
                             "python -m fsfm_fast.export or a detector checkpoint")
    record = config.get("fsfm_fast") or {}
    if runtime == "onnx":  # the file export checked against these weights; the config gives classes and transform
        model = OnnxModel(path / ONNX_FILE, int(config.get("num_classes") or 0))
        pretrained_cfg = config.get("pretrained_cfg") or {}
    else:
        head = (config.get("model_args") or {}).get("head")
        try:  # an export older than the contract names the pooled FAS head "fas": build what it was
            model = timm.create_model(f"local-dir:{path}", pretrained=True,
                                      **({"head": recorded_head(head, record)} if head else {}))
        except Exception as exc:  # noqa: BLE001  (timm raises many kinds; the user needs the folder and the cause)
            raise cli.UsageError(f"--detector {path}: timm cannot load this export ({type(exc).__name__}: {exc})") from None
        pretrained_cfg = model.pretrained_cfg
    if not getattr(model, "num_classes", 0):
        raise cli.UsageError(f"--detector {path} has no classification head (an encoder export): predict needs a detector")
    labels = config.get("label_names") or []
    if len(labels) != model.num_classes:
        raise cli.UsageError(f"--detector {path}: its label names {labels} do not name its {model.num_classes} "
                             "classes; export it again with --labels")
    if record.get("threshold") is not None and not record.get("threshold_source"):  # an export older than the contract
        record = {**record, "threshold_source": "recorded in the export"}
    return (model, export_transform(pretrained_cfg, resize), Contract.from_record(record, labels),
            record.get("model", config.get("architecture")), record)


def _from_checkpoint(path: Path) -> tuple[torch.nn.Module, Callable, Contract, str]:
    ckpt = safe_load(path)
    if ckpt.get("format") not in (DETECTOR_FORMAT, ADAPTER_FORMAT):
        raise cli.UsageError(f"--detector {path} is not a detector checkpoint (format {ckpt.get('format')!r}); give an "
                             "export folder or a checkpoint of python -m fsfm_fast.finetune or finetune_fas")
    model, config = detector_from_checkpoint(ckpt, path)  # a whole detector, or an FS-Adapter on its encoder
    return model, eval_transform(config), config.contract, config.model, {}


def detector_path(spec: str) -> Path:
    """``spec`` as the path to load: an export's weights file stands for its folder."""
    path = Path(spec)
    if path.suffix == ".safetensors" and (path.parent / EXPORT_CONFIG).is_file():
        return path.parent
    return path


def load_scorer(spec: str, runtime: str = "torch", resize: str | None = None) -> Scorer:
    """The detector of an export folder (through torch or, ``runtime="onnx"``, its model.onnx through
    onnxruntime) or of a detector checkpoint (whole or FS-Adapter); one-line errors otherwise.
    ``resize`` overrides an export's recorded evaluation resize (``crop`` or ``plain``)."""
    path = detector_path(spec)
    if not path.exists():
        raise cli.UsageError(f"--detector {path} does not exist")
    try:
        model, transform, contract, name, record = (_from_export(path, runtime, resize) if path.is_dir()
                                                    else _from_checkpoint(path))
    except (ValueError, CheckpointError) as exc:  # a contract that does not hold, a checkpoint that does not load
        raise cli.UsageError(f"--detector {path}: {exc}") from None
    where = "onnxruntime on the CPU" if runtime == "onnx" else "torch"
    return Scorer(model.eval(), transform, contract, f"{name} from {path} via {where} (score {contract.score})",
                  runtime, record)
