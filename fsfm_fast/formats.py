"""File formats shared by the verbs: file names, checkpoint format tags, the ImageNet statistics, the
readers of weights and of mean/std files, and the one order in which a run looks for its mean/std.

Checkpoints are read without unpickling arbitrary objects, and every failure is one line that names
the file (``CheckpointError``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .runtime.cli import UsageError, describe_os_error

MEAN_STD_FILE = "pretrain_ds_mean_std.txt"  # a pretraining run's data statistics, beside its checkpoints
SELFCHECK_FILE = "selfcheck.json"  # what the start-up check of the compiled and Triton ops found
PRETRAIN_FORMAT = "fsfm_fast.pretrain/1"
DETECTOR_FORMAT = "fsfm_fast.detector/1"
ADAPTER_FORMAT = "fsfm_fast.adapter/1"  # trained parts only, the encoder by reference (models.adapter)
# an export folder (python -m fsfm_fast.export): weights under timm's keys, timm's config, the ONNX graph
EXPORT_WEIGHTS, EXPORT_CONFIG, EXPORT_ONNX = "model.safetensors", "config.json", "model.onnx"
BEST = "best"  # the selection of a fine-tuning run that its users take: checkpoint-best.pth
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def selected_checkpoint(folder: str | os.PathLike, name: str = BEST) -> Path:
    """The checkpoint a fine-tuning run keeps for its selection ``name``."""
    return Path(folder) / f"checkpoint-{name}.pth"


# The reference release pickles its argparse.Namespace next to the weights; that is the only
# non-tensor class its checkpoints need, so it is the only one we allow the unpickler to build.
_SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(UsageError):
    """A checkpoint that cannot be read or does not fit the run: one line naming the file."""


def _why_unreadable(path: Path, exc: Exception) -> str:
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    text = str(exc)
    if "Weights only load failed" in text or isinstance(exc, pickle.UnpicklingError):
        if not zipfile.is_zipfile(path):
            return "not a valid checkpoint (not a PyTorch file, or truncated)"
        # The message names the global torch refused; keep that, drop torch's advice to lift the check.
        for line in text.splitlines():
            if "GLOBAL" in line or "Unsupported global" in line or "Unsupported operand" in line:
                return ("it holds objects other than tensors and plain containers, which are not loaded "
                        f"for safety ({line.strip()})")
        return "not a valid checkpoint (refused by the safe loader)"
    if not zipfile.is_zipfile(path) or isinstance(exc, (RuntimeError, EOFError, zipfile.BadZipFile)):
        # whatever the unpickler tripped on in bytes that are not a checkpoint (IndexError, ...)
        return "not a valid checkpoint (not a PyTorch file, truncated or corrupt)"
    return text.splitlines()[0] if text else type(exc).__name__


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; any failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {describe_os_error(exc, path)}") from None
    except Exception as exc:  # noqa: BLE001  (whatever torch raised, the user needs the file and a reason)
        raise CheckpointError(f"cannot load checkpoint {path}: {_why_unreadable(path, exc)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def preview(items: list[str], limit: int = 8) -> str:
    """The first ``limit`` items, comma-separated, and how many there are in all when that is more."""
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > limit else shown


def state_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> list[str]:
    """What keeps ``state`` from loading strictly into a module whose state_dict is ``expected``:
    ``["missing keys: ...", "unexpected keys: ...", "wrong shapes: ..."]``, only the parts that apply;
    empty when it fits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} "
             f"(model {list(expected[k].shape)})"
             for k, v in state.items()
             if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)]
    return [f"{what}: {preview(keys)}" for what, keys in
            (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]


def load_state_dict_strict(module: torch.nn.Module, state: dict, path: str | os.PathLike, what: str) -> None:
    """``load_state_dict(strict=True)`` whose failure is one line naming the file and the first keys
    missing, unexpected or misshapen (``state_mismatch``)."""
    problems = state_mismatch(module.state_dict(), state)
    if problems:
        raise CheckpointError(f"checkpoint {path}: its {what} weights do not fit this network ({'; '.join(problems)})")
    module.load_state_dict(state, strict=True)


def read_mean_std(path: str | os.PathLike) -> tuple[list[float], list[float]]:
    """``{"mean": [3 floats], "std": [3 floats]}`` from the first line of a ``pretrain_ds_mean_std.txt``."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
        mean, std = [float(x) for x in stats["mean"]], [float(x) for x in stats["std"]]
    except (OSError, IndexError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read the mean/std file {path}: expected one JSON line "
                              f'{{"mean": [r, g, b], "std": [r, g, b]}} ({type(exc).__name__}: {exc})') from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or not all(map(math.isfinite, mean + std)):
        raise CheckpointError(f"{path}: mean and std must be 3 finite values each, std > 0; got {mean}, {std}")
    return mean, std

def mean_std_record(path: str | os.PathLike) -> dict | None:
    """The first line of a mean/std file as written (with what it was computed from), or None when
    the file is missing or unreadable: for a cache that is then recomputed."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8").splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return record if isinstance(record, dict) else None


def write_mean_std(path: str | os.PathLike, mean, std, **provenance) -> None:
    """Write a mean/std file atomically: one JSON line, mean and std and what they were computed from."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"mean": mean, "std": std, **provenance}) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def choose_mean_std(normalize_from_imn: bool, mean_std_file: str | None,
                    found: tuple[tuple[list[float], list[float]] | None, str | None] | None,
                    ) -> tuple[list[float], list[float], str]:
    """(mean, std, where they come from) of a training run: ImageNet's when ``--normalize_from_IMN``,
    else ``--mean_std FILE``, else ``found`` (``find_mean_std`` of the pretrained weights), else ImageNet's
    when the run starts from scratch (``found`` None). Pretrained weights without statistics are an error."""
    if normalize_from_imn:
        return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet (--normalize_from_IMN)"
    if mean_std_file:
        return (*read_mean_std(mean_std_file), mean_std_file)
    if found is None:
        return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet (no pretrained encoder)"
    stats, source = found
    if stats is None:
        raise UsageError(f"no {MEAN_STD_FILE} beside the pretrained weights and none inside them ({source}): "
                         "give --mean_std FILE, or --normalize_from_IMN for ImageNet statistics")
    return (*stats, source)


def read_weights(path: Path) -> tuple[dict, Mapping[str, torch.Tensor], str]:
    """(whole file as a dict, its state_dict, kind) for every file format we accept; safetensors and
    plain state_dicts have no checkpoint around them (``{}``)."""
    if path.suffix == ".safetensors":
        # safetensors is imported only for the files that need it
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load safetensors file {path}: {exc}") from None
        return {}, state, "safetensors"
    obj = safe_load(path)
    if obj.get("format") == PRETRAIN_FORMAT:
        return obj, obj["model"], "fsfm_fast pretraining"
    if obj.get("format") == DETECTOR_FORMAT:
        return obj, obj["model"], "fsfm_fast detector"
    if isinstance(obj.get("model"), Mapping):
        return obj, obj["model"], "reference"
    if isinstance(obj.get("state_dict"), Mapping):
        return obj, obj["state_dict"], "state_dict"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {}, obj, "state_dict"
    raise CheckpointError(f"{path} holds no weights: expected a 'model' or 'state_dict' entry or a "
                          f"plain state_dict; its top-level keys are {list(obj)[:8]}")


def find_mean_std(path: Path, obj: dict) -> tuple[tuple[list[float], list[float]] | None, str | None]:
    """The mean/std that go with the weights file ``path`` (whose content is ``obj``), and where they were
    found: ``pretrain_ds_mean_std.txt`` beside it, else the ones the checkpoint records (a pretraining
    run's ``mean_std``, a detector's config), else an export folder's ``config.json``; (None, None)."""
    beside = path.parent / MEAN_STD_FILE
    if beside.is_file():
        return read_mean_std(beside), str(beside)
    for key in ("mean_std", "detector"):
        stats = obj.get(key)
        if isinstance(stats, Mapping) and "mean" in stats and "std" in stats:
            return ([float(x) for x in stats["mean"]], [float(x) for x in stats["std"]]), f"{path} ({key})"
    stats = (read_timm_config(path.parent) or {}).get("pretrained_cfg")  # an export's model.safetensors
    if isinstance(stats, Mapping) and "mean" in stats and "std" in stats:
        return ([float(x) for x in stats["mean"]], [float(x) for x in stats["std"]]), str(path.parent / EXPORT_CONFIG)
    return None, None


def read_timm_config(folder: str | Path) -> dict | None:
    """The ``config.json`` of a timm / Hugging Face model folder (an export), or None when there is none."""
    try:
        config = json.loads((Path(folder) / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
