"""Whole-set detection metrics against values computed by hand."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fsfm_fast.metrics import SingleClassWarning, eer, frame_metrics, video_level, video_metrics


def test_tied_scores_and_an_eer_between_roc_points():
    # positives 0.5, 0.9; negatives 0.2, 0.5 (one tie across the classes).
    labels, scores = [0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9]
    m = frame_metrics(labels, scores)
    # AUC: of the 4 (fake, real) pairs, 3 are ordered and the tie counts 1/2.
    assert m["auc"] == pytest.approx(3.5 / 4)
    # AP: recall 1/2 at precision 1 (score 0.9), then recall 1 at precision 2/3 (the tie at 0.5).
    assert m["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # ROC points (fpr, fnr): (0, 1/2) then (1/2, 0), the tie making one diagonal step; FPR = FNR at 1/4.
    assert m["eer"] == pytest.approx(0.25)
    # Fake when score >= 0.5 (inference.decide): 0.5 and 0.9 -> correct on 0.2, 0.5 (fake), 0.9; wrong on
    # 0.5 (real). (A ">" rule also gets 3 of 4 here, wrong on the other 0.5; the cases below tell them apart.)
    assert m["acc"] == pytest.approx(0.75)
    assert m["balanced_acc"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    at = frame_metrics([0, 1], [0.3, 0.7], threshold=0.7)  # a score equal to the threshold is a fake
    assert at["acc"] == 1.0 and frame_metrics([0, 1], [0.7, 0.9], threshold=0.7)["acc"] == 0.5


def test_eer_on_a_roc_point_and_at_perfect_separation():
    # ROC (fpr, fnr): (0,1) (0,1/2) (1/2,1/2) (1/2,0) (1,0): FPR = FNR = 1/2 exactly at a point.
    rate, threshold = eer([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert rate == pytest.approx(0.5) and threshold == pytest.approx(0.4)
    m = frame_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert m["auc"] == pytest.approx(0.75) and m["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    perfect = frame_metrics([0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.8, 0.9])
    assert perfect["auc"] == 1.0 and perfect["eer"] == 0.0 and perfect["acc"] == 1.0


def test_eer_matches_a_dense_threshold_sweep():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes many ties
    rate, _ = eer(labels, scores)
    # The sweep's FPR and FNR step through the crossing; the interpolated EER lies between them.
    ts = np.unique(scores)
    fpr = np.array([(scores[labels == 0] >= t).mean() for t in ts])
    fnr = np.array([(scores[labels == 1] < t).mean() for t in ts])
    i = np.argmax(fnr >= fpr)
    assert min(fpr[i], fnr[i - 1]) - 1e-9 <= rate <= max(fpr[i - 1], fnr[i]) + 1e-9


def test_a_single_class_is_nan_with_a_warning_not_a_crash():
    with pytest.warns(SingleClassWarning, match="only fake"):
        m = frame_metrics([1, 1, 1], [0.9, 0.4, 0.7])
    assert math.isnan(m["auc"]) and math.isnan(m["ap"]) and math.isnan(m["eer"])
    assert m["acc"] == pytest.approx(2 / 3) and m["balanced_acc"] == pytest.approx(2 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingleClassWarning)
        assert all(math.isnan(x) for x in eer([0, 0], [0.1, 0.2]))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="one length"):
        frame_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        frame_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="not finite"):
        frame_metrics([0, 1], [0.5, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        frame_metrics([], [])


def test_video_level_means_frames_per_video():
    ids = ["b", "a", "a", "c", "c", "c"]
    labels = [0, 1, 1, 0, 0, 0]
    scores = [0.375, 0.25, 0.75, 0.25, 0.5, 0.75]  # exact in binary, so the means tie exactly
    y, s = video_level(ids, labels, scores)
    assert y.tolist() == [1, 0, 0]  # sorted ids: a, b, c
    assert s.tolist() == [0.5, 0.375, 0.5]
    m = video_metrics(ids, labels, scores)
    # one fake video at 0.5 against reals at 0.375 and 0.5: one ordered pair, one tie
    assert m["auc"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="'a' has both real and fake"):
        video_level(["a", "a"], [0, 1], [0.1, 0.2])
