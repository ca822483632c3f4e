"""Classification heads of a detector: what reads the encoder's output.

- ``linear``: one ``nn.Linear(d, classes)`` on the pooled feature (after ``fc_norm``), weights
  ~ N(0, 2e-5), bias 0 (the MAE recipe).
- ``fas``: the reference's face anti-spoofing head, computed as the reference computes it (SPEC section 7,
  ``cross_domain_FAS/fas.py``). It reads every token (``reads_tokens``): slot 0 is ``fc_norm`` of the
  average-pooled patch tokens, slots 1.. the patch tokens (the detector builds that sequence,
  ``models.timm_models.FSFMVisionTransformer``). Linear(d, 512) -> ReLU -> Dropout(0.5) runs on every token,
  the result is divided by ``sqrt(2) * sqrt(||f||_2)`` with the norm taken over dim 1, which for a token
  sequence is ACROSS THE TOKENS, channel by channel; slot 0 then feeds a Linear(512, classes) whose weight
  is overwritten in place by its L2-normalised copy at every training forward (``InPlaceNormalizedLinear``:
  no gradient flows through the normalisation). Given a pooled [B, d] feature (the FS-Adapter's), dim 1 is
  the channels: the reference's FS-Adapter head, which pools first.
- ``fas_pooled``: the same modules applied to the pooled feature, normalised over its channels, with the
  classifier's normalisation differentiated through (``NormalizedLinear``): an ablation, not the reference.
- ``FSAdapterHead``: the FS-Adapter (the authors' efficient-tuning variant) in front of either head:
  a bottleneck adapter on the pooled feature, a projector for the contrastive loss, and the head
  reading the pooled feature concatenated with the adapter's output.

The reference hard-codes d = 768; here d is the encoder's width. Every head lives under the detector's
``head`` attribute, so its keys are ``head.*``: whatever a pretrained encoder does not provide is exactly
``head.*`` (and ``fc_norm.*``). ``fas`` and ``fas_pooled`` have the same keys, so either loads the other's
weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from .configs import HEADS  # named beside the sizes: the parsers read them without torch
FAS_HEADS = ("fas", "fas_pooled")
ADAPTERS = ("", "fs")  # "": the whole detector is one model; "fs": FS-Adapter on a frozen encoder
LINEAR_INIT_STD = 2e-5
FAS_HIDDEN = 512


def _unit_columns(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [classes, features] with each input feature's weights across the classes of unit L2 norm
    (axis 0, as the reference's ``l2_norm(weight, axis=0)``)."""
    return weight / weight.norm(p=2, dim=0, keepdim=True)


class NormalizedLinear(nn.Linear):
    """``x @ unit_columns(W)^T + b`` with the normalisation part of the function: gradients flow through it
    and the stored weight's scale is free (the outputs do not depend on it). The ``fas_pooled`` ablation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _unit_columns(self.weight), self.bias)


class InPlaceNormalizedLinear(nn.Linear):
    """The reference's classifier: at every training forward the stored weight is replaced by its
    column-normalised copy, outside autograd, and the layer is then an ordinary linear layer, so the
    optimizer sees the gradient of a plain Linear at the normalised weight (the reference's
    ``weight.data = l2_norm(weight)``). In eval mode the normalised copy is used without writing it back:
    the outputs are the same, and evaluation or an ONNX trace never changes the parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = _unit_columns(self.weight.detach())
        if not self.training:
            return F.linear(x, unit, self.bias)
        with torch.no_grad():
            self.weight.copy_(unit)
        return F.linear(x, self.weight, self.bias)


class FASHead(nn.Module):
    """The anti-spoofing head: bottleneck -> scaled feature -> normalised-weight classifier.

    ``pooled=False`` (``--head fas``) is the reference's computation (see the module docstring): the input
    is a token sequence [B, N, d] whose slot 0 is the pooled feature, or a pooled [B, d] feature (the
    FS-Adapter's); the scaling norm runs over dim 1 either way, as the reference's. ``pooled=True``
    (``--head fas_pooled``) takes [B, d] and normalises over the channels, with a differentiable
    classifier normalisation."""

    def __init__(self, in_dim: int, num_classes: int = 2, hidden: int = FAS_HIDDEN, dropout: float = 0.5,
                 pooled: bool = False):
        super().__init__()
        self.pooled = pooled
        self.reads_tokens = not pooled  # the detector hands a token-wise head every token, slot 0 pooled
        self.bottleneck = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.classifier = (NormalizedLinear if pooled else InPlaceNormalizedLinear)(hidden, num_classes)
        with torch.no_grad():  # the reference's initialisation
            self.bottleneck.weight.normal_(0.0, 0.005)
            self.bottleneck.bias.fill_(0.1)
            self.classifier.weight.normal_(0.0, 0.01)
            self.classifier.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature the classifier reads: ``f / (sqrt(2) sqrt(||f||))`` of ``f = Dropout(ReLU(Linear(x)))``,
        the norm over dim 1 (the reference's) or, pooled, over the channels; slot 0 of a token sequence."""
        f = self.drop(F.relu(self.bottleneck(x)))
        dim = -1 if self.pooled else 1
        f = f / (f.norm(p=2, dim=dim, keepdim=True).clamp(min=1e-12).sqrt() * 2 ** 0.5)
        return f[:, 0] if f.dim() == 3 else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def recorded_head(head: str, record: dict) -> str:
    """The head a detector record (a checkpoint's ``detector`` entry, an export's ``fsfm_fast`` entry) means.
    Records written before the inference contract (no ``positive_class``) are from when ``fas`` was the head
    on the pooled feature: they keep computing what they were trained as."""
    return "fas_pooled" if head == "fas" and "positive_class" not in record else head


def make_head(kind: str, in_dim: int, num_classes: int) -> nn.Module:
    """A freshly initialised head of ``kind`` (one of ``HEADS``)."""
    if kind in FAS_HEADS:
        return FASHead(in_dim, num_classes, pooled=kind == "fas_pooled")
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

