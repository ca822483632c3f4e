"""The health monitor of a pretraining run (``--probe_data PATH --probe_every N``): every N epochs, a
k-NN probe of the online and of the target encoder on a small labelled set, logged with the run.

It must never change the training it watches, and it does not:

- its images are read and transformed once, when the run starts, under ``preserved_rng``;
- each probe runs under ``preserved_rng`` and inference mode, on whole images (no masks are drawn), and
  puts back the train/eval mode of every submodule it found;
- the k-NN draws nothing at random.

So a run with the monitor computes the same losses, bit for bit, as a run without it
(``tests/test_probe.py``). Its cost is the encoders' forward passes over the probe set: ``seconds`` in each
log row, and the share of the run printed at the end.
"""
from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..data.labelled import LabelledImages
from ..data.samples import Sample
from ..runtime.devices import autocast
from ..runtime.distributed import DistInfo, gather_rows
from .features import probe_transform, trunk_features
from .knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_top1
from .sets import ProbeSet


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Every random stream a training step may draw from (torch's CPU and this GPU's, NumPy's, Python's)
    is the same after the block as before it."""
    states = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block; each submodule's own mode put back after it."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


class HealthMonitor:
    """k-NN top-1 of pretraining networks on ``probe_set``; this rank's share of the images is kept in memory."""

    def __init__(self, probe_set: ProbeSet, img_size: int, mean, std, *, device: torch.device, amp_dtype,
                 info: DistInfo = DistInfo(), pool: str = "avg", k: int = DEFAULT_K,
                 temperature: float = DEFAULT_TEMPERATURE, batch_size: int = 64):
        self.name, self.device, self.amp_dtype, self.info = probe_set.name, device, amp_dtype, info
        self.pool, self.k, self.temperature, self.batch_size = pool, k, temperature, batch_size
        self.seconds, self.calls = 0.0, 0
        with preserved_rng(device):
            transform = probe_transform(img_size, mean, std, "plain")
            self.train_images, self.train_y = self._read(probe_set.train, probe_set.train_y, transform)
            self.test_images, self.test_y = self._read(probe_set.test, probe_set.test_y, transform)
        if len(self.train_y) == 0 or len(self.test_y) == 0:
            raise ValueError(f"--probe_data {probe_set.name}: no readable train or test image")

    def _read(self, samples: list[Sample], labels: np.ndarray, transform) -> tuple[torch.Tensor, np.ndarray]:
        """This rank's readable images (samples rank, rank + world, ...) and every rank's labels, in the
        order the features will be gathered in."""
        dataset = LabelledImages(samples, transform)
        items = [dataset[i] for i in range(self.info.rank, len(samples), self.info.world_size)]
        kept = [x for x in items if x["ok"]]
        images = torch.stack([x["image"] for x in kept]) if kept else torch.zeros(0, 3, 1, 1)
        index = torch.tensor([x["index"] for x in kept], dtype=torch.float64, device=self.device)
        order = gather_rows(index[:, None], self.info)[:, 0].long().cpu().numpy()
        return images, labels[order]

    def _features(self, network: nn.Module, images: torch.Tensor) -> np.ndarray:
        width = network.config.embed_dim
        rows = [torch.zeros(0, width, dtype=torch.float32, device=self.device)]
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size].to(self.device, non_blocking=True)
            with autocast(self.device, self.amp_dtype):
                rows.append(trunk_features(network, batch, self.pool).float())
        return gather_rows(torch.cat(rows), self.info).cpu().numpy()

    def __call__(self, networks: dict[str, nn.Module]) -> dict[str, float]:
        """``{"<name>_knn_top1": ..., "seconds": ...}`` for each network (an ``FSFMTrunk``)."""
        start = time.perf_counter()
        out = {}
        with preserved_rng(self.device), torch.inference_mode():
            for name, network in networks.items():
                with eval_mode(network):
                    train_x = self._features(network, self.train_images)
                    test_x = self._features(network, self.test_images)
                out[f"{name}_knn_top1"] = knn_top1(train_x, self.train_y, test_x, self.test_y, self.k, self.temperature)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.calls += 1
        out["seconds"] = seconds
        return out

    def summary(self, run_seconds: float) -> str:
        share = self.seconds / run_seconds if run_seconds > 0 else float("nan")
        return (f"health monitor: {self.calls} k-NN probes on {self.name} took {self.seconds:.1f} s, "
                f"{100 * share:.1f}% of the run's {run_seconds:.1f} s")
