"""The encoders a probe reads, each as a timm model and what its input needs.

An encoder is named by ``[NAME=]SPEC``:

- a file: one of our pretraining checkpoints (its online or target encoder, ``--encoder``), the reference
  release (``checkpoint-400.pth``; ``checkpoint-te-400.pth`` holds the target), one of our detector
  checkpoints, or a timm-style state_dict / ``.safetensors``: all read by ``export.load_exportable``, which
  checks every key against its network;
- an export folder (``python -m fsfm_fast.export``): its ``model.safetensors`` and ``config.json``;
- ``timm:<name>``: a timm model with its pretrained weights, from the local cache (nothing is downloaded
  on a machine without network);
- ``random:<FSFM size>[@<input size>]``: the encoder as pretraining initialises it (``--seed``), before
  any training: the baseline a pretrained encoder has to beat.

The weights' content hash (``fingerprint``) keys the feature cache, so a changed file is never mistaken
for the one whose features were cached.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from ..export import WEIGHTS, load_exportable
from ..formats import IMAGENET_MEAN, IMAGENET_STD, CheckpointError
from ..models import MODEL_CONFIGS, create_online
from ..runtime.cli import UsageError



@dataclass
class Encoder:
    name: str  # as the tables and pictures call it
    source: str  # what the user named
    kind: str
    model: torch.nn.Module  # a timm model in eval mode
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str = ""  # SHA-256 of the weights (names, dtypes, shapes, bytes)

    def __post_init__(self):
        if not self.fingerprint:
            self.fingerprint = weights_fingerprint(self.model)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state_dict: the same weights give the same value, whatever file they came from."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def split_name(item: str) -> tuple[str, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); a bare SPEC is named by its file or folder."""
    name, sep, spec = item.partition("=")
    if sep and name.strip() and spec.strip() and not Path(item).exists():
        return name.strip(), spec.strip()
    spec = item.strip()
    if spec.startswith(("timm:", "random:")):
        return spec, spec
    path = Path(spec)
    return (f"{path.parent.name}/{path.name}" if path.parent.name else path.name), spec


def random_encoder(spec: str, seed: int) -> torch.nn.Module:
    """``<FSFM size>[@<input size>]`` initialised as pretraining initialises its online network."""
    model_name, _, size = spec.partition("@")
    if model_name not in MODEL_CONFIGS:
        raise UsageError(f"random:{spec}: {model_name!r} is not an FSFM size ({', '.join(MODEL_CONFIGS)})")
    try:
        img_size = int(size) if size else 224
    except ValueError:
        raise UsageError(f"random:{spec}: the input size after @ must be an integer") from None
    patch = MODEL_CONFIGS[model_name].patch_size
    if img_size < patch or img_size % patch:
        raise UsageError(f"random:{spec}: input size {img_size} is not a multiple of the patch size {patch}")
    # the same seed and the same constructor as the pretraining run: its weights before the first step
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        online = create_online(model_name, img_size=img_size)
    model = timm.create_model(model_name, img_size=img_size)
    state = online.state_dict()
    model.load_state_dict({k: state[k] for k in model.state_dict()}, strict=True)
    return model.eval()


def _timm_encoder(name: str, model_name: str) -> Encoder:
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as exc:  # noqa: BLE001  (unknown name, no cached weights, no network: the user needs the cause)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--checkpoint timm:{model_name}: cannot create it with pretrained weights ({first})") from None
    cfg = model.pretrained_cfg or {}
    return Encoder(name, f"timm:{model_name}", "timm pretrained", model.eval(), int(cfg.get("input_size", (3, 224))[-1]),
                   tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))


def load_encoder(item: str, *, encoder: str | None = None, model_name: str | None = None, seed: int = 0,
                 mean_std: tuple | None = None) -> Encoder:
    """The encoder ``item`` names (see the module docstring). ``encoder``: online or target, for
    pretraining checkpoints; ``model_name``: the FSFM size of a state_dict whose keys do not tell it;
    ``mean_std``: the input statistics of an encoder that has none of its own (a random one)."""
    name, spec = split_name(item)
    if spec.startswith("timm:"):
        return _timm_encoder(name, spec.removeprefix("timm:"))
    if spec.startswith("random:"):
        model = random_encoder(spec.removeprefix("random:"), seed)
        mean, std = mean_std or (IMAGENET_MEAN, IMAGENET_STD)
        return Encoder(name, spec, f"random initialisation (seed {seed})", model,
                       int(model.patch_embed.img_size[0]), tuple(mean), tuple(std))
    path = Path(spec)
    if path.is_dir():
        if not (path / WEIGHTS).is_file():
            raise UsageError(f"--checkpoint {spec} is a folder without {WEIGHTS} (not an export folder)")
        path = path / WEIGHTS
    if not path.is_file():
        raise UsageError(f"--checkpoint {spec} does not exist")
    try:
        found = load_exportable(path, encoder, model_name)
    except CheckpointError as exc:
        raise UsageError(f"--checkpoint {spec}: {exc}") from None
    mean, std = (found.mean, found.std) if found.mean else (mean_std or (IMAGENET_MEAN, IMAGENET_STD))
    return Encoder(name, spec, found.kind, found.model.eval(), found.img_size, tuple(mean), tuple(std))
