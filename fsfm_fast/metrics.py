"""Detection metrics over a whole evaluation set (SPEC section 7): pure functions of numpy arrays.

Labels are 0 (real) / 1 (fake, the positive class); a score is P(fake). A sample is called positive when
its score is ``>=`` the threshold (``inference.decide``, the rule of every verb). Every metric is computed
once over all the scores of a set (gathered across ranks by the caller), never averaged over batches.
A set with one class has no ROC: its AUC, AP and EER are NaN, with a ``SingleClassWarning``, and the
run goes on.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score, roc_curve

from .inference import decide

METRIC_KEYS = ("auc", "ap", "eer", "acc", "balanced_acc")


class SingleClassWarning(UserWarning):
    """Metrics that need both classes were asked of a set that has only one."""


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"labels and scores must be 1-D of one length, got {y.shape} and {s.shape}")
    if y.size == 0:
        raise ValueError("no scores: the evaluation set is empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {np.unique(y)[:5].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} scores are not finite")
    return y.astype(np.int64), s


def _both_classes(y: np.ndarray, what: str) -> bool:
    if np.unique(y).size == 2:
        return True
    only = "real" if y[0] == 0 else "fake"
    warnings.warn(f"{what}: the set holds only {only} samples, so AUC, AP and EER are undefined (NaN)",
                  SingleClassWarning, stacklevel=3)
    return False


def eer(labels, scores) -> tuple[float, float]:
    """Equal error rate and its threshold: the point of the ROC curve where the false positive rate
    equals the false negative rate, linearly interpolated between the two ROC points around it (ties
    in the scores make one ROC point). The threshold is that of the ROC point at or just past the
    crossing (score >= threshold -> fake). (nan, nan) for a one-class set."""
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y, "eer"):
        return float("nan"), float("nan")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    gap = (1.0 - tpr) - fpr  # falls from 1 at (0, 0) to -1 at (1, 1)
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0 or i == 0:
        return float(fpr[i]), float(thresholds[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1])), float(thresholds[i])


def frame_metrics(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """AUC, average precision, EER, accuracy and balanced accuracy (predicted fake when score >= threshold)."""
    y, s = _as_arrays(labels, scores)
    pred = decide(s, threshold).astype(np.int64)
    out = {"auc": float("nan"), "ap": float("nan"), "eer": float("nan"),
           "acc": float((pred == y).mean())}
    if _both_classes(y, "frame_metrics"):
        out["auc"] = float(roc_auc_score(y, s))
        out["ap"] = float(average_precision_score(y, s))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingleClassWarning)
            out["eer"] = eer(y, s)[0]
    with warnings.catch_warnings():  # one class: the mean recall of the class present, without sklearn's warning
        warnings.simplefilter("ignore", UserWarning)
        out["balanced_acc"] = float(balanced_accuracy_score(y, pred))
    return {k: out[k] for k in METRIC_KEYS}


def video_level(video_ids, labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """One (label, score) per video, in sorted video-id order; a video's score is the mean of its frames'.
    A video whose frames carry both labels is an error naming it."""
    ids = np.asarray(video_ids)
    y, s = _as_arrays(labels, scores)
    if ids.shape != y.shape:
        raise ValueError(f"video_ids must match labels, got {ids.shape} and {y.shape}")
    uniq, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse)
    fakes = np.bincount(inverse, weights=y)
    mixed = np.nonzero((fakes > 0) & (fakes < counts))[0]
    if mixed.size:
        raise ValueError(f"video {str(uniq[mixed[0]])!r} has both real and fake frames "
                         f"({mixed.size} such videos): check the video ids")
    return (fakes > 0).astype(np.int64), np.bincount(inverse, weights=s) / counts


def video_metrics(video_ids, labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """``frame_metrics`` of the per-video mean scores."""
    return frame_metrics(*video_level(video_ids, labels, scores), threshold=threshold)


# ----------------------------------------------------------------------------------------------
# face anti-spoofing: attack = 1 (the positive class), score = P(attack)

FAS_KEYS = ("hter", "auc", "tpr_at_fpr_1pct", "far", "frr", "threshold")
# How a set's own FAR = FRR threshold is found: "exact" searches the observed scores; "grid" is the
# reference's (statistic.get_EER_states): 0, 1e-4, ..., 1, then 1.1.
THRESHOLD_RULES = {
    "exact": "the observed score where FAR and FRR are closest (exact search)",
    "grid": "the reference's grid 0, 1e-4, ..., 1, 1.1, where FAR and FRR are closest",
}
GRID_DENSITY = 10000


def hter(labels, scores, threshold: float) -> tuple[float, float, float]:
    """(HTER, FAR, FRR) when a sample scoring ``>= threshold`` is called an attack: FAR is the share of
    attacks accepted as real, FRR the share of real faces rejected, HTER their mean. NaN for a one-class set."""
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y, "hter"):
        return float("nan"), float("nan"), float("nan")
    attack = decide(s, threshold)
    far = float((~attack[y == 1]).mean())
    frr = float(attack[y == 0].mean())
    return (far + frr) / 2, far, frr


def eer_threshold(labels, scores) -> float:
    """The threshold where FAR and FRR are closest, among the observed scores (an attack scores
    ``>= threshold``): how the reference picks its HTER threshold. Of equally close ones, the lowest, as
    the reference's sweep does. NaN for a one-class set."""
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y, "eer_threshold"):
        return float("nan")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)  # thresholds decreasing, inf first
    finite = np.isfinite(thresholds)
    gap = np.abs(fpr - (1.0 - tpr))[finite]
    closest = np.nonzero(gap == gap.min())[0][-1]
    return float(thresholds[finite][closest])


def grid_thresholds(density: int = GRID_DENSITY) -> np.ndarray:
    """The reference's candidate thresholds: i / density for i = 0..density (computed as i * (1 / density),
    as it does), then 1.1, which calls every sample real."""
    return np.append(np.arange(density + 1) * (1.0 / density), 1.1)


def grid_eer_threshold(labels, scores, density: int = GRID_DENSITY) -> float:
    """The reference's HTER threshold: of the ``grid_thresholds``, the one where FAR and FRR are closest
    (an attack scores ``>= threshold``). The reference scores P(real) and keeps the last of equally close
    thresholds in increasing order, the strictest for calling a face real; on our P(attack) that is the
    lowest. Unlike ``eer_threshold`` it cannot split scores that fall between two grid points. NaN for a
    one-class set."""
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y, "grid_eer_threshold"):
        return float("nan")
    grid = grid_thresholds(density)
    attacks, reals = np.sort(s[y == 1]), np.sort(s[y == 0])
    far = np.searchsorted(attacks, grid, side="left") / attacks.size  # attacks below the threshold: accepted
    frr = 1.0 - np.searchsorted(reals, grid, side="left") / reals.size  # reals at or above it: rejected
    gap = np.abs(frr - far)
    return float(grid[np.nonzero(gap == gap.min())[0][0]])


def tpr_at_fpr(labels, scores, max_fpr: float = 0.01) -> float:
    """The highest true positive rate (label 1 positive, higher score more positive) among the ROC points
    whose false positive rate is at most ``max_fpr``. NaN for a one-class set."""
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y, "tpr_at_fpr"):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr].max())  # (0, 0) is always a point


def fas_metrics(labels, scores, threshold: float | None = None, rule: str = "exact") -> dict[str, float]:
    """Face anti-spoofing metrics of one set: HTER, FAR and FRR at ``threshold`` (default: the set's own
    FAR = FRR threshold, which uses its labels, found by ``rule``: "exact" ``eer_threshold`` or "grid"
    ``grid_eer_threshold``), AUC, and TPR at FPR = 1% in the reference's orientation (real faces positive:
    the share of real faces accepted while at most 1% of attacks are)."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {list(THRESHOLD_RULES)}, got {rule!r}")
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y, "fas_metrics"):
        return dict.fromkeys(FAS_KEYS, float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingleClassWarning)
        own = eer_threshold if rule == "exact" else grid_eer_threshold
        t = own(y, s) if threshold is None else float(threshold)
        rate, far, frr = hter(y, s, t)
        live_tpr = tpr_at_fpr(1 - y, -s, 0.01)
    return {"hter": rate, "auc": float(roc_auc_score(y, s)), "tpr_at_fpr_1pct": live_tpr, "far": far, "frr": frr,
            "threshold": t}


def fas_levels(video_ids, labels, scores, thresholds: dict[str, float] | None = None,
               rule: str = "exact") -> dict[str, dict]:
    """``fas_metrics`` at frame level and at video level (a video's score is the mean of its frames'),
    each at its own threshold from ``thresholds`` {"frame": t, "video": t}, or at the set's own (``rule``)."""
    thresholds = thresholds or {}
    return {"frame": fas_metrics(labels, scores, thresholds.get("frame"), rule),
            "video": fas_metrics(*video_level(video_ids, labels, scores), threshold=thresholds.get("video"),
                                 rule=rule)}
