"""One probe run: every encoder on every set, features once per (encoder, split), then the k-NN and the
linear probe on them; the main process writes the outputs (``outputs.py``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..runtime.distributed import DistInfo, barrier
from .encoders import Encoder
from .features import features_of
from .knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_top1
from .linear import LinearSettings, linear_probe
from .outputs import PICTURE, write_outputs
from .sets import ProbeSet


@dataclass
class ProbeSettings:
    pool: str = "avg"
    resize: str = "plain"
    k: int = DEFAULT_K
    temperature: float = DEFAULT_TEMPERATURE
    linear: LinearSettings = field(default_factory=LinearSettings)
    batch_size: int = 64
    num_workers: int = 2
    cache_dir: Path | None = None


def _rows(feats, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.values, labels[feats.index]


def probe_one(encoder: Encoder, probe_set: ProbeSet, settings: ProbeSettings, device: torch.device, amp_dtype,
              info: DistInfo) -> tuple[dict, tuple]:
    """Metrics of one encoder on one set, and (train features, test features, test classes) for the picture."""
    common = dict(pool=settings.pool, resize=settings.resize, batch_size=settings.batch_size,
                  num_workers=settings.num_workers, device=device, amp_dtype=amp_dtype, info=info,
                  cache_dir=settings.cache_dir)
    train = features_of(encoder, probe_set.train, **common)
    test = features_of(encoder, probe_set.test, **common)
    train_x, train_y = _rows(train, probe_set.train_y)
    test_x, test_y = _rows(test, probe_set.test_y)
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(f"{probe_set.name}: no readable {'train' if len(train_x) == 0 else 'test'} image")
    num_classes = len(probe_set.classes)
    lin = linear_probe(train_x, train_y, test_x, test_y, num_classes, settings.linear)
    metrics = {"knn_top1": knn_top1(train_x, train_y, test_x, test_y, settings.k, settings.temperature),
               "linear_acc": lin["acc"], "n_train": int(len(train_x)), "n_test": int(len(test_x)),
               "n_skipped": len(train.skipped) + len(test.skipped), "features_cached": train.from_cache and test.from_cache,
               "feature_dim": int(train_x.shape[1]), "chance": float(np.bincount(test_y, minlength=num_classes).max()
                                                                  / len(test_y))}
    if "auc" in lin:
        metrics["linear_auc"] = lin["auc"]
    return metrics, (train_x, test_x, test_y)


def run_probes(encoders: list[Encoder], sets: list[ProbeSet], settings: ProbeSettings, output_dir: Path, *,
               device: torch.device, amp_dtype, info: DistInfo = DistInfo(), header: str = "", say=print) -> dict:
    """Every encoder on every set; returns the metrics (on every rank), written by the main process."""
    metrics = {"settings": {"pool": settings.pool, "resize": settings.resize, "knn_k": settings.k,
                            "knn_temperature": settings.temperature, "linear": vars(settings.linear)},
               "encoders": {e.name: {"source": e.source, "kind": e.kind, "img_size": e.img_size,
                                     "weights_sha256": e.fingerprint} for e in encoders},
               "sets": {}}
    panels, classes = {}, {}
    for probe_set in sets:
        entry = {"classes": list(probe_set.classes), "encoders": {}}
        panels[probe_set.name], classes[probe_set.name] = {}, probe_set.classes
        for encoder in encoders:
            m, panel = probe_one(encoder, probe_set, settings, device, amp_dtype, info)
            entry["encoders"][encoder.name] = m
            panels[probe_set.name][encoder.name] = panel
            say(f"{probe_set.name} / {encoder.name}: k-NN top-1 {m['knn_top1']:.4f}, linear acc {m['linear_acc']:.4f}"
                + (f", AUC {m['linear_auc']:.4f}" if "linear_auc" in m else "")
                + (" (cached features)" if m["features_cached"] else ""))
        metrics["sets"][probe_set.name] = entry
    if info.is_main:
        table = write_outputs(Path(output_dir), metrics, panels, classes, header)
        say(table)
        say(f"wrote metrics.json, table.md and {PICTURE} to {output_dir}")
    barrier(info)
    return metrics
