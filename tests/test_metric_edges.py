"""Edges of the metrics that a plausible bug would slip through: the EER threshold's tie rule on an
exact tie, and video metrics at a threshold other than the default. Scores are quarter and eighth
fractions, so that every rate and gap below is exact in floating point and a tie is a real tie."""
import numpy as np
import pytest

from fsfm_fast.metrics import eer_threshold, video_metrics


def test_eer_threshold_takes_the_lowest_of_equally_close_thresholds():
    # 4 real (0) and 4 attacks (1); one real and one attack share 0.5, so the sweep steps from
    # FAR - FRR = -0.25 at 0.75 straight to +0.25 at 0.5: two thresholds exactly 0.25 from equal
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.125, 0.25, 0.5, 0.875, 0.375, 0.5, 0.75, 1.0])
    assert eer_threshold(labels, scores) == 0.5
    # the order of the samples does not matter
    order = np.array([7, 2, 5, 0, 3, 6, 1, 4])
    assert eer_threshold(labels[order], scores[order]) == 0.5


def test_video_metrics_use_the_threshold_given():
    # three videos; per-video means 0.375 (real), 0.875 (fake), 0.125 (real); no mean lies on a threshold
    ids = np.array(["a", "a", "b", "b", "c", "c"])
    labels = np.array([0, 0, 1, 1, 0, 0])
    scores = np.array([0.25, 0.5, 0.75, 1.0, 0.125, 0.125])
    default = video_metrics(ids, labels, scores)
    low = video_metrics(ids, labels, scores, threshold=0.25)  # video a (0.375) is now called fake
    high = video_metrics(ids, labels, scores, threshold=0.9375)  # and here video b (0.875) is called real
    assert default["acc"] == 1.0 and default["balanced_acc"] == 1.0
    assert low["acc"] == pytest.approx(2 / 3) and low["balanced_acc"] == pytest.approx(0.75)
    assert high["acc"] == pytest.approx(2 / 3) and high["balanced_acc"] == pytest.approx(0.5)
    for m in (low, high):  # the threshold moves the decisions only, not the ranking metrics
        assert m["auc"] == default["auc"] == 1.0 and m["eer"] == default["eer"] == 0.0
