"""The inference contract of a detector: what its outputs mean and how a decision is made from them.

Every detector is a classifier over named classes (``labels``, class index -> name). One class is the
positive one, the class a detector exists to find: ``fake`` for a deepfake detector, ``attack`` for a
face anti-spoofing one (SPEC section 7). The score is the probability of that class, named after it
(``P(fake)``, ``P(attack)``), always the softmax of the logits at the positive index, whatever the
framework (``positive_probability`` takes numpy or torch). An input is called positive when its score
is ``>=`` the threshold (``decide``), in every verb: evaluate's accuracies, the FAS metrics, export and
predict.

A threshold is part of the contract only when it was chosen honestly, that is without the labels of the
data it will be used on; ``threshold_source`` says how (e.g. "source-selected: FAR = FRR on held-out
source data"). A threshold picked on a test set (the reference-comparable FAS evaluation) is never
recorded as a decision threshold.

The contract is stored in a detector's configuration (``models.detector.DetectorConfig``) and in an
export's ``config.json`` (``Contract.to_dict`` less the labels in its ``fsfm_fast`` entry, the labels being
its ``label_names``).
Records written before it existed are read by deriving it from their labels (``derive_positive``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEFAULT_THRESHOLD = 0.5  # used, and said so, when a detector records no threshold and none is given
POSITIVE_NAMES = ("fake", "attack")  # the positive class of each task, in the order a name is looked for


def derive_positive(labels: Sequence[str]) -> str:
    """The positive class of ``labels`` when a record does not say: ``fake`` or ``attack`` where one is
    named, else class 1 (SPEC section 7: label 1 is the positive class)."""
    for name in POSITIVE_NAMES:
        if name in labels:
            return name
    if len(labels) < 2:
        raise ValueError(f"a detector needs at least two classes, got {list(labels)}")
    return labels[1]


def score_name(positive: str) -> str:
    return f"P({positive})"


@dataclass(frozen=True)
class Contract:
    """Class names, the positive class, the score's name, and an honest threshold with its source."""
    labels: tuple[str, ...]
    positive_class: str
    threshold: float | None = None
    threshold_source: str = ""

    def __post_init__(self):
        check(self.labels, self.positive_class, self.threshold, self.threshold_source)

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_class)

    @property
    def score(self) -> str:
        return score_name(self.positive_class)

    @property
    def negative_class(self) -> str:
        """What an input below the threshold is called: the other class of a two-class detector."""
        others = [name for name in self.labels if name != self.positive_class]
        return others[0] if len(others) == 1 else f"not {self.positive_class}"

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "positive_class": self.positive_class, "score": self.score,
                "threshold": self.threshold, "threshold_source": self.threshold_source}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], labels: Sequence[str] | None = None) -> Contract:
        """The contract of a config record (a detector's, or an export's ``fsfm_fast`` entry); ``labels``
        when they are kept elsewhere (an export's ``label_names``). Old records: derived from the labels."""
        names = tuple(labels if labels is not None else record.get("labels") or ())
        threshold = record.get("threshold")
        return cls(names, record.get("positive_class") or derive_positive(names),
                   None if threshold is None else float(threshold), str(record.get("threshold_source") or ""))

    def resolve_threshold(self, given: float | None = None) -> tuple[float, str]:
        """(threshold, where it came from): ``given`` (a flag), else the recorded one, else 0.5."""
        if given is not None:
            return float(given), "given"
        if self.threshold is not None:
            return self.threshold, f"recorded in the detector: {self.threshold_source or 'source not recorded'}"
        return DEFAULT_THRESHOLD, "the default: the detector records none"


def check(labels: Sequence[str], positive: str, threshold: float | None, source: str) -> None:
    """ValueError unless the fields make a contract: the positive class is one of the labels, and a
    threshold is a probability that comes with the record of how it was chosen."""
    if positive not in labels:
        raise ValueError(f"the positive class {positive!r} is not one of the labels {list(labels)}")
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"a decision threshold is a probability in [0, 1], got {threshold}")
        if not source:
            raise ValueError("a recorded decision threshold needs its source (how it was chosen)")


def positive_probability(logits, positive_index: int = 1) -> np.ndarray:
    """Softmax of ``logits`` [N, classes] at ``positive_index``, float64 numpy, from numpy or torch logits:
    torch logits are taken as float32 on the host first, as evaluate gathers them, so that every verb
    computes the same number from the same logits."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p[:, positive_index] / p.sum(axis=1)


def decide(scores, threshold: float):
    """True where an input is called the positive class: ``score >= threshold`` (numpy, torch or a float)."""
    return scores >= threshold
