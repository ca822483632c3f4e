"""Export a checkpoint for use outside fsfm_fast: ``python -m fsfm_fast.export --checkpoint CKPT --output_dir OUT``.

    python -m fsfm_fast.export --checkpoint runs/ff/checkpoint-best.pth --output_dir fsfm_detector --onnx
    python -m fsfm_fast.export --checkpoint checkpoint-400.pth --output_dir fsfm_vit_base  # the reference release

Inputs: a detector of ``fsfm_fast.finetune`` or ``fsfm_fast.finetune_fas``, whole or FS-Adapter (its
trained parts, with the frozen encoder read from the file the checkpoint names); one of our pretraining checkpoints (``--encoder online``,
the default, or ``target``); the reference release (``checkpoint-400.pth`` holds the online network,
``checkpoint-te-400.pth`` the target); or a timm-style state_dict / ``.safetensors`` of an FSFM ViT
(an export folder too: its config.json's labels, resize and threshold carry over, e.g. to add ONNX).
A pretraining checkpoint exports its encoder, which is all that is kept after pretraining (SPEC section 7).
The checkpoint must hold exactly the keys of its network: anything missing, extra or misshapen is refused,
by name, before anything is written.

OUT receives, in the layout that timm's ``local-dir:`` and Hugging Face hub loading read:
- ``model.safetensors``: the weights under timm's ``VisionTransformer`` keys (never a pickle);
- ``config.json``: the architecture (a timm ViT name with the FSFM size in ``model_args``, so plain timm
  loads it without fsfm_fast; a detector with the FAS head or the FS-Adapter, which timm's ViT lacks,
  names its registered FSFM size instead and loads once fsfm_fast is imported), ``num_classes``, ``pretrained_cfg`` (mean/std, input size, resize), the
  label names (``real``, ``fake`` or ``real``, ``attack``) and, in its ``fsfm_fast`` entry, where the
  weights came from and the detector's inference contract (``fsfm_fast.inference``): ``positive_class``,
  ``score`` (P(fake), P(attack)), and the decision threshold with its ``threshold_source`` when one is
  known (the one the detector records, e.g. the source-selected FAS threshold, or ``--threshold``);
- with ``--onnx``, ``model.onnx``: opset 18 (the lowest that torch's ``torch.export``-based exporter
  writes), a dynamic batch dimension, input ``input`` [B, 3, H, W] normalised as ``config.json`` says,
  output ``logits`` (``features`` for an encoder).

``--encoder_only`` drops a detector's head: the model then returns the pooled feature its head read.
Every export is checked before it replaces anything in OUT: ``timm.create_model("local-dir:OUT",
pretrained=True)`` must give the logits (or features) of the exported model on a fixed batch to within
``ROUND_TRIP_ATOL``, and onnxruntime on the CPU must match PyTorch at batch 1 and 3 to within
``ONNX_ATOL`` + ``ONNX_RTOL`` x |logit|. With no ``--checkpoint`` it exports the demo detector of
``python -m fsfm_fast.finetune``, or else the encoder of ``python -m fsfm_fast.pretrain``'s demo run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .detector_args import export_parser
from .runtime import cli

if __name__ == "__main__":  # -h and flag errors answer before torch and timm are imported (the imports below)
    sys.exit(cli.run_verb("fsfm_fast.export", lambda argv: export_parser().parse_args(argv), "fsfm_fast.export"))

import numpy as np
import timm
import torch

from .demo import EXPORT_DIR as DEMO_EXPORT_DIR, FINETUNE_DIR, PRETRAIN_DIR
from .engine.checkpoint import CheckpointManager
from .inference import Contract, derive_positive
from .models import MODEL_CONFIGS, create_online, create_target
from .formats import EXPORT_CONFIG as CONFIG, EXPORT_ONNX as ONNX, EXPORT_WEIGHTS as WEIGHTS
from .formats import (ADAPTER_FORMAT, DETECTOR_FORMAT, IMAGENET_MEAN, IMAGENET_STD, PRETRAIN_FORMAT, CheckpointError,
                      find_mean_std, read_mean_std, read_timm_config, read_weights, selected_checkpoint, state_mismatch)
from .models.detector import _recorded_model
from .models.loading import detector_from_checkpoint
from .models.heads import recorded_head
from .models.timm_models import EVAL_CROP_PCT, HEAD_ARGS, TIMM_ARCHITECTURES, architecture_args, weights_grid, weights_pooling

EXPORT_FORMAT = "fsfm_fast.export/1"
ONNX_OPSET = 18
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter writes with onnxscript; the check runs onnxruntime
ONNX_ATOL, ONNX_RTOL = 1e-4, 1e-4
ROUND_TRIP_ATOL = 1e-5
# A single protobuf file holds at most 2 GiB: larger models keep their weights in model.onnx.data.
ONNX_EXTERNAL_DATA_BYTES = 1 << 30


@dataclass
class Exportable:
    """A loaded model ready to export, and what config.json says about it."""
    model: torch.nn.Module  # a timm VisionTransformer built by its FSFM name, in eval mode
    name: str  # the FSFM size
    kind: str  # what the checkpoint was
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mean_std_source: str
    crop_pct: float = EVAL_CROP_PCT
    crop_mode: str = "center"
    labels: tuple[str, ...] | None = None
    threshold: float | None = None
    threshold_source: str = ""
    positive_class: str = ""  # "": derived from the labels (inference.derive_positive)
    notes: dict = field(default_factory=dict)
    # What config.json names to rebuild the model. None: timm's own ViT of ``name``'s width, with the FSFM
    # size, input size, pooling and classes of the model as it is now. A model that is not a plain ViT
    # (an FS-Adapter detector) names its own registered timm architecture and arguments here.
    architecture: str | None = None
    model_args: dict | None = None

    @property
    def contract(self) -> Contract | None:
        """The inference contract config.json records; None for an encoder (no classes)."""
        if not self.model.num_classes or not self.labels:
            return None
        return Contract(tuple(self.labels), self.positive_class or derive_positive(self.labels), self.threshold,
                        self.threshold_source)

    @property
    def img_size(self) -> int:
        return int(self.model.patch_embed.img_size[0])

    def timm_config(self) -> tuple[str, dict]:
        if self.architecture is not None:
            return self.architecture, dict(self.model_args or {})
        return TIMM_ARCHITECTURES[self.name], {**architecture_args(self.name), "img_size": self.img_size,
                                               "num_classes": self.model.num_classes,
                                               "global_pool": self.model.global_pool}


# ----------------------------------------------------------------------------------------------
# reading checkpoints


def infer_model_name(state: Mapping[str, torch.Tensor], path: Path) -> str:
    """The FSFM size whose patch size, width and depth the weights have."""
    try:
        weight = state["patch_embed.proj.weight"]
        patch, width = int(weight.shape[-1]), int(weight.shape[0])
    except (KeyError, AttributeError, IndexError):
        raise CheckpointError(f"{path} has no patch_embed.proj.weight, so it is not an FSFM ViT "
                              "(give --model if the keys carry a prefix)") from None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.count(".") >= 2})
    for name, c in MODEL_CONFIGS.items():
        if (c.patch_size, c.embed_dim, c.depth) == (patch, width, depth):
            return name
    raise CheckpointError(f"{path}: no FSFM size has patch {patch}, width {width} and depth {depth}; "
                          f"known sizes: {', '.join(MODEL_CONFIGS)}")


def grid_img_size(state: Mapping[str, torch.Tensor], name: str, path: Path) -> int:
    """The input size the position embedding was made for (a square grid of patches, plus the cls slot)."""
    side = weights_grid(state)
    if side is None:
        raise CheckpointError(f"{path}: its pos_embed {list(getattr(state.get('pos_embed'), 'shape', []))} "
                              "is not a square grid plus cls")
    return side * MODEL_CONFIGS[name].patch_size


def _refuse(path: Path, what: str, problems: list[str]) -> None:
    if problems:
        raise CheckpointError("; ".join([f"{path} does not hold exactly the weights of {what}, so it is not exported"]
                                        + problems))


def _timm_model(name: str, state: Mapping[str, torch.Tensor], path: Path, what: str, **kwargs) -> torch.nn.Module:
    """The timm model ``name`` (FSFM registration) with exactly ``state`` loaded, refused by key otherwise."""
    model = timm.create_model(name, **kwargs)
    _refuse(path, what, state_mismatch(model.state_dict(), state))
    model.load_state_dict(state, strict=True)
    return model.eval()


def from_pretraining(obj: dict, state: Mapping, path: Path, encoder: str | None, model_name: str | None) -> Exportable:
    """The encoder of one of our pretraining checkpoints (both networks inside) or of a reference release
    file (one network per file: the online one has the predictor and the pixel decoder)."""
    ours = obj.get("format") == PRETRAIN_FORMAT
    if ours:
        encoder = encoder or "online"
        state = obj.get("model" if encoder == "online" else "target")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path} has no {encoder} network")
    else:
        held = "online" if any(k.startswith(("predictor.", "decoder_embed.")) for k in state) else "target"
        if encoder not in (None, held):
            raise CheckpointError(f"{path} holds the {held} network of a release, not the {encoder} one "
                                  "(the reference releases the target network as checkpoint-te-*.pth)")
        encoder = held
    state = {k.removeprefix("module."): v for k, v in state.items()}
    name = model_name or _recorded_model(obj) or infer_model_name(state, path)
    if name not in MODEL_CONFIGS:
        raise CheckpointError(f"{path} records model {name!r}, which is not an FSFM size ({', '.join(MODEL_CONFIGS)})")
    img_size = grid_img_size(state, name, path)
    with torch.device("meta"):  # the whole network's keys and shapes, without allocating its weights
        network = (create_online if encoder == "online" else create_target)(name, img_size)
    _refuse(path, f"the {encoder} network of {name} at {img_size}px", state_mismatch(network.state_dict(), state))
    model = timm.create_model(name, img_size=img_size)  # the encoder: no head, cls pooling keeps the final norm
    model.load_state_dict({k: state[k] for k in model.state_dict()}, strict=True)
    mean_std, source = find_mean_std(path, obj)
    kind = f"{'fsfm_fast pretraining' if ours else 'reference release'} checkpoint, {encoder} encoder"
    return Exportable(model.eval(), name, kind, *_mean_std_or_none(mean_std), source or "",
                      notes={"pretrained_iteration": obj.get("iteration", obj.get("epoch"))})


def from_detector(obj: dict, path: Path) -> Exportable:
    """A detector checkpoint: a whole detector, or an FS-Adapter's trained parts on the frozen encoder
    the checkpoint names (read from that file and checked against its SHA-256)."""
    model, config = detector_from_checkpoint(obj, path)
    crop_pct, crop_mode = config.eval_crop()
    selection = obj.get("selection") or {}
    adapter = obj.get("format") == ADAPTER_FORMAT
    item = Exportable(model.eval(), config.model, "fsfm_fast FS-Adapter checkpoint" if adapter else
                      "fsfm_fast detector checkpoint", tuple(config.mean), tuple(config.std),
                      f"{path} (the detector's record)", crop_pct=crop_pct,
                      crop_mode=crop_mode, labels=tuple(config.labels), threshold=config.threshold,
                      threshold_source=config.threshold_source, positive_class=config.positive_class,
                      notes={"selection": selection.get("description"), "iteration": obj.get("iteration"),
                             "train_classes": list(config.train_classes),
                             "encoder": (obj.get("encoder") or {}).get("path") if adapter else None})
    if config.head != "linear" or config.adapter:  # not timm's ViT: its registered FSFM name rebuilds it
        item.architecture = config.model
        item.model_args = {"img_size": config.img_size, "num_classes": config.num_classes,
                           "global_pool": model.global_pool, "head": config.head, "adapter": config.adapter,
                           "adapter_reduction": config.adapter_reduction}
    return item


def from_state_dict(obj: dict, state: Mapping, path: Path, model_name: str | None) -> Exportable:
    """A timm-style state_dict of an FSFM ViT: its size, input size, pooling and classes read from its shapes;
    the weights of an export of a FAS-head or FS-Adapter detector with the head its config.json names."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config = read_timm_config(path.parent) or {}  # an export's own weights: what its config.json says carries over
    args = config.get("model_args") or {}
    own_head = {k: args[k] for k in HEAD_ARGS if k in args} if config.get("architecture") in MODEL_CONFIGS else {}
    if "head" in own_head:
        own_head["head"] = recorded_head(own_head["head"], config.get("fsfm_fast") or {})
    name = model_name or infer_model_name(state, path)
    head = state.get("head.weight")
    num_classes = (int(args.get("num_classes") or config.get("num_classes") or 0) if own_head
                   else int(head.shape[0]) if isinstance(head, torch.Tensor) else 0)
    pool = weights_pooling(state)
    model = _timm_model(name, state, path, f"a timm {name} ({pool} pooling, {num_classes} classes"
                        + "".join(f", {k} {v!r}" for k, v in own_head.items()) + ")",
                        img_size=grid_img_size(state, name, path), num_classes=num_classes, global_pool=pool, **own_head)
    mean_std, source = find_mean_std(path, obj)
    item = Exportable(model, name, "timm-style state_dict", *_mean_std_or_none(mean_std), source or "")
    if own_head:  # not timm's ViT: rebuilt by its registered FSFM name, as the export it came from
        item.architecture = name
        item.model_args = {"img_size": item.img_size, "num_classes": num_classes, "global_pool": model.global_pool,
                           **own_head}
    labels, data = config.get("label_names"), config.get("pretrained_cfg") or {}
    if isinstance(labels, list) and len(labels) == num_classes:
        item.labels = tuple(labels)
    item.crop_pct, item.crop_mode = data.get("crop_pct", item.crop_pct), data.get("crop_mode", item.crop_mode)
    record = config.get("fsfm_fast") or {}
    if num_classes and item.labels:  # an export's contract carries over (older exports: derived from the labels)
        contract = Contract.from_record({**record, "threshold_source": record.get("threshold_source") or (
            "recorded by an earlier export" if record.get("threshold") is not None else "")}, item.labels)
        item.positive_class, item.threshold, item.threshold_source = (contract.positive_class, contract.threshold,
                                                                      contract.threshold_source)
    return item


def _mean_std_or_none(mean_std) -> tuple:
    return (tuple(mean_std[0]), tuple(mean_std[1])) if mean_std else ((), ())


def load_exportable(path: Path, encoder: str | None = None, model_name: str | None = None) -> Exportable:
    """Whatever ``path`` is, as an Exportable; every key checked against its network."""
    obj, state, _ = read_weights(path)
    if obj.get("format") in (DETECTOR_FORMAT, ADAPTER_FORMAT):
        found = from_detector(obj, path)
    elif obj.get("format") == PRETRAIN_FORMAT or (obj.get("format") is None and "model" in obj
                                                  and "mask_token" in state):
        found = from_pretraining(obj, state, path, encoder, model_name)
    else:
        found = from_state_dict(obj, state, path, model_name)
    if encoder is not None and "encoder" not in found.kind:
        raise cli.UsageError(f"--encoder {encoder} applies to pretraining checkpoints; {path} is a {found.kind}")
    return found


# ----------------------------------------------------------------------------------------------
# writing and checking


def _set_data_config(item: Exportable) -> None:
    """The preprocessing the model expects, where timm's data config resolution reads it."""
    item.model.pretrained_cfg.update(
        input_size=(3, item.img_size, item.img_size), interpolation="bicubic", crop_pct=item.crop_pct,
        crop_mode=item.crop_mode, mean=tuple(item.mean), std=tuple(item.std), num_classes=item.model.num_classes,
        description=f"FSFM {item.name} ({item.kind}) exported by fsfm_fast")
    for key in ("file", "source", "state_dict", "label_names"):
        item.model.pretrained_cfg.pop(key, None)


def write_export(item: Exportable, folder: Path, source: Path) -> dict:
    """model.safetensors and config.json of ``item`` in ``folder``; returns config.json's fsfm_fast entry."""
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf
    _set_data_config(item)
    state = {k: v.detach().contiguous() for k, v in item.model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder / WEIGHTS, 0o666 & ~umask)  # readable like any file the user writes
    contract = item.contract
    terms = {k: v for k, v in contract.to_dict().items() if k != "labels"} if contract else {"threshold": None}
    record = {"format": EXPORT_FORMAT, "model": item.name, "source": str(source), "source_kind": item.kind,
              "mean_std_source": item.mean_std_source, **terms,
              **{k: v for k, v in item.notes.items() if v is not None}}
    architecture, args = item.timm_config()
    model_config = {"architecture": architecture, "fsfm_fast": record}
    if item.labels:
        model_config["label_names"] = list(item.labels)
    save_config_for_hf(item.model, str(folder / CONFIG), model_config=model_config, model_args=args)
    return record


def check_batch(item: Exportable, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, item.img_size, item.img_size, generator=g)


@torch.inference_mode()
def check_round_trip(item: Exportable, folder: Path) -> float:
    """Max |difference| between the exported model and ``timm.create_model("local-dir:folder", pretrained=True)``."""
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = check_batch(item, 2)
    diff = float((reloaded(x) - item.model(x)).abs().max())
    if not diff <= ROUND_TRIP_ATOL:
        raise RuntimeError(f"the export in {folder} does not reproduce the model through timm (max |diff| {diff:.3g})")
    return diff


def write_onnx(item: Exportable, folder: Path, opset: int = ONNX_OPSET) -> dict:
    """model.onnx (dynamic batch) and its check against PyTorch through onnxruntime at batch 1 and 3."""
    import onnxruntime as ort
    output = "logits" if item.model.num_classes else "features"
    params = sum(p.numel() * p.element_size() for p in item.model.parameters())
    torch.onnx.export(item.model, (check_batch(item, 2),), str(folder / ONNX), input_names=["input"],
                      output_names=[output], opset_version=opset, dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                      external_data=params > ONNX_EXTERNAL_DATA_BYTES)
    session = ort.InferenceSession(str(folder / ONNX), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = check_batch(item, batch, seed=batch)
        with torch.inference_mode():
            expected = item.model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=ONNX_RTOL, atol=ONNX_ATOL):
            raise RuntimeError(f"onnxruntime's {output} differ from PyTorch's at batch {batch} "
                               f"(max |diff| {np.abs(got - expected).max():.3g}, shapes {got.shape} {expected.shape})")
        worst = max(worst, float(np.abs(got - expected).max()))
    return {"opset": opset, "output": output, "dynamic_batch": True, "checked_batches": [1, 3],
            "max_abs_diff": worst, "tolerance": f"atol {ONNX_ATOL} + rtol {ONNX_RTOL}"}


def export(item: Exportable, out_dir: Path, source: Path, onnx: bool = False, opset: int = ONNX_OPSET) -> dict:
    """Write and check the export in a scratch folder inside ``out_dir``, then move the files into place;
    an ONNX file of an earlier export that this one lacks is removed, so OUT never mixes two models."""
    scratch = out_dir / f".export-{os.getpid()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        record = write_export(item, scratch, source)
        record["round_trip_max_abs_diff"] = check_round_trip(item, scratch)
        if onnx:
            record["onnx"] = write_onnx(item, scratch, opset)
        config = json.loads((scratch / CONFIG).read_text(encoding="utf-8"))
        config["fsfm_fast"] = record
        (scratch / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        written = sorted(p.name for p in scratch.iterdir())
        for stale in (ONNX, ONNX + ".data"):
            if stale not in written:
                (out_dir / stale).unlink(missing_ok=True)
        for name in written:
            os.replace(scratch / name, out_dir / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return record


# ----------------------------------------------------------------------------------------------
# the verb


def demo_checkpoint() -> tuple[Path, str]:
    """The demo detector of fsfm_fast.finetune, else the newest demo pretraining checkpoint, and one line
    that says which it is and why: an encoder export has no head, which predict cannot use."""
    detector = selected_checkpoint(FINETUNE_DIR)
    if detector.is_file():
        return detector, f"no --checkpoint: exporting the demo detector {detector} (python -m fsfm_fast.finetune)"
    latest = CheckpointManager(PRETRAIN_DIR).latest()
    if latest is None:
        raise cli.UsageError(f"nothing to export: no --checkpoint, no demo detector at {detector} and no pretraining "
                             f"checkpoint in {PRETRAIN_DIR}/; run python -m fsfm_fast.finetune first")
    return latest, (f"no --checkpoint and no demo detector at {detector}: exporting the ENCODER of the demo "
                    f"pretraining run, {latest} (features, no head: predict needs a detector; run python -m "
                    "fsfm_fast.finetune for one)")


def prepare(args) -> Exportable:
    """The checked model of ``args.checkpoint`` with the flags' changes, before anything is written."""
    missing = [m for m in ONNX_PACKAGES if importlib.util.find_spec(m) is None] if args.onnx else []
    if missing:
        raise cli.UsageError(f"--onnx needs {', '.join(missing)}: pip install 'fsfm_fast[export]'")
    if args.mean_std and args.normalize_from_IMN:
        raise cli.UsageError("give --mean_std or --normalize_from_IMN, not both")
    path = Path(args.checkpoint)
    item = load_exportable(path, args.encoder, args.model)
    if args.mean_std:
        item.mean, item.std = (tuple(v) for v in read_mean_std(args.mean_std))
        item.mean_std_source = str(args.mean_std)
    elif args.normalize_from_IMN:
        item.mean, item.std, item.mean_std_source = IMAGENET_MEAN, IMAGENET_STD, "ImageNet"
    if not item.mean:
        raise cli.UsageError(f"{path}: no pretrain_ds_mean_std.txt beside it and no mean/std recorded in it, so the "
                             "export could not say how to normalise inputs: give --mean_std FILE or --normalize_from_IMN")
    if args.encoder_only and item.model.num_classes:
        item.model.reset_classifier(0)  # the pooling, and fc_norm under avg pooling, stay: features = what the head read
        item.kind += " (head removed)"
        item.architecture = item.model_args = None  # what is left is timm's own ViT
    if args.labels:
        item.labels = tuple(name.strip() for name in args.labels.split(","))
        item.positive_class = ""  # new names: the positive class is derived from them
        if len(item.labels) != item.model.num_classes:
            raise cli.UsageError(f"--labels names {len(item.labels)} classes; the model has {item.model.num_classes}")
    if item.model.num_classes and not item.labels:
        raise cli.UsageError(f"{path} does not say which class is which: give --labels in class-index order "
                             "(fsfm_fast detectors: real,fake; the reference's fine-tuning sorted its folders "
                             "alphabetically, which makes it fake,real)")
    if args.threshold is not None:
        if not item.model.num_classes:
            raise cli.UsageError("--threshold needs a detector; this export has no head")
        item.threshold = float(args.threshold)
        item.threshold_source = "given at export (--threshold)"
    if not item.model.num_classes:
        item.labels = None
    try:  # a positive class among the labels, a threshold in [0, 1] with its source
        _ = item.contract
    except ValueError as exc:
        raise cli.UsageError(f"{path}: {exc}") from None
    return item


def describe(item: Exportable, record: dict, out_dir: Path) -> str:
    m = item.model
    n = sum(p.numel() for p in m.parameters())
    head = f"{m.num_classes} classes ({', '.join(item.labels)})" if m.num_classes else "no head (features)"
    lines = [f"exported {record['source']} ({item.kind}) to {out_dir}/",
             f"  {WEIGHTS}: {item.name} at {item.img_size}px, {m.global_pool} pooling, {head}; {n / 1e6:.2f}M parameters",
             f"  {CONFIG}: mean {[round(v, 4) for v in item.mean]} std {[round(v, 4) for v in item.std]} "
             f"from {item.mean_std_source}" + ("" if not m.num_classes else f"; score {item.contract.score}; threshold " + (
                 f"{item.threshold:g} ({item.threshold_source})" if item.threshold is not None
                 else "none recorded (predict uses 0.5)")),
             f"  checked: timm.create_model('local-dir:{out_dir}', pretrained=True) reproduces it "
             f"(max |diff| {record['round_trip_max_abs_diff']:.2g})"]
    if "onnx" in record:
        o = record["onnx"]
        lines.append(f"  {ONNX}: opset {o['opset']}, dynamic batch; onnxruntime (CPU) vs PyTorch at batch 1 and 3: "
                     f"max |diff| {o['max_abs_diff']:.2g} (tolerance {o['tolerance']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = export_parser().parse_args(argv)
    if args.checkpoint is None:
        checkpoint, why = demo_checkpoint()
        print(why, flush=True)
        args.checkpoint = str(checkpoint)
        args.output_dir = args.output_dir or DEMO_EXPORT_DIR
    elif Path(args.checkpoint).is_dir() and (Path(args.checkpoint) / WEIGHTS).is_file():
        args.checkpoint = str(Path(args.checkpoint) / WEIGHTS)  # an export folder: export it again (say, with --onnx)
    elif not Path(args.checkpoint).is_file():
        raise cli.UsageError(f"--checkpoint {args.checkpoint} is not a file")
    out_dir = cli.ensure_writable_dir(Path(args.output_dir or Path(args.checkpoint).parent / "export"))
    item = prepare(args)
    record = export(item, out_dir, Path(args.checkpoint), onnx=args.onnx)
    print(describe(item, record, out_dir))
    return 0

