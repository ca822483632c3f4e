"""Scoring an export with ONNX Runtime: ``--runtime onnx|torch|auto`` of ``predict`` and ``evaluate``.

An export folder of ``python -m fsfm_fast.export --onnx`` holds ``model.onnx`` beside the safetensors
weights; export checked it against PyTorch (``config.json``: ``fsfm_fast.onnx.tolerance``), so either
runtime gives the same logits within that tolerance, and both go through the same inference contract
(``fsfm_fast.inference``: the positive class, its probability, the recorded threshold).

- ``torch``: the safetensors weights through timm, on ``--device`` (a GPU when there is one);
- ``onnx``: ``model.onnx`` through onnxruntime on the CPU, in fp32, with as many threads as torch uses;
- ``auto``: onnx when the detector is an export folder with ``model.onnx``, onnxruntime imports and the
  device is the CPU (``--device cpu``, or ``auto`` on a machine without a GPU); torch otherwise. CPU
  servers are where onnxruntime is faster than PyTorch eager (``benchmarks/bench_predict.py``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from .formats import EXPORT_ONNX as ONNX_FILE
from .runtime.cli import UsageError
from .runtime.flags import RUNTIMES



def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxModel:
    """``model.onnx`` run by onnxruntime on the CPU, called like the torch model: a float [B, 3, H, W]
    tensor in, a float32 [B, classes] tensor out."""

    def __init__(self, path: Path, num_classes: int, threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        # torch's thread count (OMP_NUM_THREADS, torch.set_num_threads) holds for onnxruntime too, so several
        # evaluation ranks on one machine share its cores as they would under torch
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (onnxruntime's errors have no common base; the user needs the file)
            raise UsageError(f"onnxruntime cannot load {path} ({type(exc).__name__}: {exc})") from None
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.num_classes = num_classes

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([self.output], {self.input: x})[0])

    def to(self, *args, **kwargs) -> OnnxModel:  # noqa: ARG002  (it runs on the CPU whatever the device)
        return self

    def eval(self) -> OnnxModel:
        return self


def choose_runtime(requested: str, detector: Path, device_flag: str, precision: str = "auto") -> str:
    """``torch`` or ``onnx`` for ``--runtime requested``; one-line errors for a choice that cannot run."""
    if requested not in RUNTIMES:
        raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {requested!r}")
    onnx_file = detector / ONNX_FILE if detector.is_dir() else None
    if requested == "torch":
        return "torch"
    if requested == "auto":
        on_cpu = device_flag == "cpu" or (device_flag == "auto" and not torch.cuda.is_available())
        usable = onnx_file is not None and onnx_file.is_file() and onnxruntime_available()
        return "onnx" if usable and on_cpu and precision in ("auto", "fp32") else "torch"
    if onnx_file is None:
        raise UsageError(f"--runtime onnx needs an export folder holding {ONNX_FILE}; {detector} is a checkpoint: "
                         f"python -m fsfm_fast.export --checkpoint {detector} --onnx")
    if not onnx_file.is_file():
        raise UsageError(f"--runtime onnx: {detector} has no {ONNX_FILE}; export it again with --onnx "
                         f"(python -m fsfm_fast.export --checkpoint {detector} --onnx)")
    if not onnxruntime_available():
        raise UsageError("--runtime onnx needs onnxruntime: pip install 'fsfm_fast[export]'")
    if device_flag not in ("auto", "cpu"):
        raise UsageError(f"--runtime onnx scores on the CPU; --device {device_flag} needs --runtime torch")
    if precision not in ("auto", "fp32"):
        raise UsageError(f"--runtime onnx scores in fp32; --precision {precision} needs --runtime torch")
    return "onnx"
