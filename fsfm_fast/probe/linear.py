"""A linear probe on frozen features, MAE's ``main_linprobe`` recipe: a BatchNorm without affine
parameters (it only standardises the features, so one learning rate suits every encoder) before a linear
layer initialised with N(0, 0.01), no weight decay, SGD with momentum 0.9 or LARS (timm's), the learning
rate ``blr * batch / 256`` after a linear warm-up and then a half cosine, per iteration.

It trains a fixed number of epochs on the train features and is scored once on the test features: the
test set chooses nothing. Accuracy always; with two classes, the ROC AUC of P(class 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from timm.optim import Lars
from torch import nn

from ..engine.schedules import cosine_lr



@dataclass
class LinearSettings:
    epochs: int = 100
    blr: float = 0.1
    batch_size: int = 256
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    warmup_epochs: int = 5
    seed: int = 0


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


def train_linear(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, settings: LinearSettings) -> nn.Module:
    """The probe trained on (train_x, train_y); every random draw (init, order) from a private generator
    seeded by ``settings.seed``, so the caller's streams do not move."""
    x = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        head = probe_head(x.shape[1], num_classes)
    generator = torch.Generator().manual_seed(settings.seed)
    batch = min(settings.batch_size, len(x))
    lr = settings.blr * batch / 256
    if settings.optimizer == "lars":
        optimizer = Lars(head.parameters(), lr=lr, momentum=0.9, weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=settings.weight_decay)
    per_epoch = math.ceil(len(x) / batch)
    total = settings.epochs * per_epoch
    # a batch of one cannot be standardised by BatchNorm in training mode: drop such a remainder
    drop = 1 if len(x) % batch == 1 and len(x) > 1 else 0
    head.train()
    it = 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - drop, batch):
            pick = order[start:start + batch]
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(it, base_lr=lr, min_lr=0.0, warmup_iters=settings.warmup_epochs * per_epoch,
                                        total_iters=total)
            loss = nn.functional.cross_entropy(head(x[pick]), y[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            it += 1
    return head.eval()


@torch.no_grad()
def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                 settings: LinearSettings = LinearSettings()) -> dict[str, float]:
    """``{"acc": ..., "auc": ...}`` of the trained probe on the test rows (AUC only with two classes)."""
    with torch.enable_grad():
        head = train_linear(train_x, train_y, num_classes, settings)
    prob = torch.softmax(head(torch.as_tensor(np.asarray(test_x), dtype=torch.float32)), dim=1).numpy()
    test_y = np.asarray(test_y)
    out = {"acc": float(np.mean(prob.argmax(1) == test_y))}
    if num_classes == 2:
        out["auc"] = float(roc_auc_score(test_y, prob[:, 1])) if np.unique(test_y).size == 2 else float("nan")
    return out
