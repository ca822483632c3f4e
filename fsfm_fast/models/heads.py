"""Classification heads of a detector: what reads the pooled encoder feature (after ``fc_norm``).

- ``linear``: one ``nn.Linear(d, classes)``, weights ~ N(0, 2e-5), bias 0 (the MAE recipe).
- ``fas``: the reference's face anti-spoofing head (SPEC section 7): Linear(d, 512) -> ReLU ->
  Dropout(0.5), the feature divided by ``sqrt(2 ||f||)``, then a linear layer whose weights are
  L2-normalised (``NormalizedLinear``). The reference hard-codes d = 768; here d is the encoder's width.
- ``FSAdapterHead``: the FS-Adapter (the authors' efficient-tuning variant) in front of either head:
  a bottleneck adapter on the pooled feature, a projector for the contrastive loss, and the head
  reading the pooled feature concatenated with the adapter's output.

Every head lives under the detector's ``head`` attribute, so its keys are ``head.*``: whatever a
pretrained encoder does not provide is exactly ``head.*`` (and ``fc_norm.*``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

HEADS = ("linear", "fas")
ADAPTERS = ("", "fs")  # "": the whole detector is one model; "fs": FS-Adapter on a frozen encoder
LINEAR_INIT_STD = 2e-5
FAS_HIDDEN = 512


class NormalizedLinear(nn.Linear):
    """A linear layer applied with its weight columns L2-normalised: ``x @ (W / ||W||_col)^T + b``, where
    each input feature's weights across the classes have unit norm, as the reference normalises them
    (axis 0 of the [classes, features] weight). The reference overwrites the stored weight with its
    normalised copy at every forward; here the normalisation is part of the function, so gradients
    flow through it and the stored weight's scale is free (the outputs do not depend on it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=0), self.bias)


class FASHead(nn.Module):
    """The reference's anti-spoofing head: bottleneck -> scaled feature -> normalised-weight classifier."""

    def __init__(self, in_dim: int, num_classes: int = 2, hidden: int = FAS_HIDDEN, dropout: float = 0.5):
        super().__init__()
        self.bottleneck = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.classifier = NormalizedLinear(hidden, num_classes)
        with torch.no_grad():  # the reference's initialisation
            self.bottleneck.weight.normal_(0.0, 0.005)
            self.bottleneck.bias.fill_(0.1)
            self.classifier.weight.normal_(0.0, 0.01)
            self.classifier.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck feature, scaled to norm sqrt(||f|| / 2) (``f / sqrt(2 ||f||)``)."""
        f = self.drop(F.relu(self.bottleneck(x)))
        return f / (f.norm(dim=-1, keepdim=True).clamp(min=1e-12).sqrt() * 2 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_head(kind: str, in_dim: int, num_classes: int) -> nn.Module:
    """A freshly initialised head of ``kind`` (one of ``HEADS``)."""
    if kind == "fas":
        return FASHead(in_dim, num_classes)
    if kind != "linear":
        raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
    head = nn.Linear(in_dim, num_classes)
    with torch.no_grad():
        trunc_normal_(head.weight, std=LINEAR_INIT_STD)
        nn.init.zeros_(head.bias)
    return head


class FSAdapter(nn.Module):
    """Linear(d, d/r, no bias) -> ReLU -> Linear(d/r, d, no bias) -> ReLU; returns (output, bottleneck)."""

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        if int(reduction) != reduction or reduction < 1 or dim % reduction:
            raise ValueError(f"adapter reduction must be a positive divisor of the width {dim}, got {reduction}")
        self.linear1 = nn.Linear(dim, dim // reduction, bias=False)
        self.linear2 = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bottleneck = F.relu(self.linear1(x))
        return F.relu(self.linear2(bottleneck)), bottleneck


class FSAdapterHead(nn.Module):
    """FS-Adapter: ``classifier([x, adapter(x)])`` on the pooled feature x, with a projector of the
    adapter's bottleneck for the real-anchored contrastive loss (``models.adapter``).

    In training mode the forward returns ``(logits, projection)``, the projection L2-normalised, for the
    loss; in eval mode only the logits, so the detector is an ordinary classifier for evaluation and export.
    """

    def __init__(self, dim: int, num_classes: int = 2, head: str = "linear", reduction: int = 4):
        super().__init__()
        self.adapter = FSAdapter(dim, reduction)
        self.projector = nn.Linear(dim // reduction, dim // reduction)
        self.classifier = make_head(head, 2 * dim, num_classes)

    def forward(self, x: torch.Tensor):
        adapted, bottleneck = self.adapter(x)
        logits = self.classifier(torch.cat([x, adapted], dim=-1))
        if not self.training:
            return logits
        return logits, F.normalize(self.projector(bottleneck), dim=-1)


def build_head(dim: int, num_classes: int, head: str = "linear", adapter: str = "", reduction: int = 4) -> nn.Module:
    """A detector's fresh head on pooled features of width ``dim``: ``head`` (one of ``HEADS``), behind
    the FS-Adapter when ``adapter="fs"``."""
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
    return FSAdapterHead(dim, num_classes, head, reduction) if adapter else make_head(head, dim, num_classes)

