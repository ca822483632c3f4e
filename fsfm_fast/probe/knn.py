"""Weighted k-nearest-neighbour classification of frozen features, as DINO's ``eval_knn``: each test
feature takes the ``k`` train features of highest cosine similarity ``s``, each neighbour votes for its
class with weight ``exp(s / temperature)``, and the class with the largest vote wins (top-1 accuracy).

scikit-learn's brute-force search does the work: with the cosine metric its distance is ``1 - s``, so
the weight function gives back DINO's ``exp(s / T)``.
"""
from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from .args import DEFAULT_K, DEFAULT_TEMPERATURE



def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = DEFAULT_K,
                temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """The class each test row is given (``k`` is capped by the number of train rows)."""
    if k < 1 or not temperature > 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got {k} and {temperature}")

    def weights(distance: np.ndarray) -> np.ndarray:
        # exp((s - 1) / T) differs from DINO's exp(s / T) by a common factor per test row, which changes
        # no vote's winner and keeps the weights <= 1 (exp(1 / 0.01) would overflow)
        return np.exp(-np.asarray(distance, dtype=np.float64) / temperature)

    classifier = KNeighborsClassifier(n_neighbors=min(int(k), len(train_x)), weights=weights, metric="cosine",
                                      algorithm="brute")
    classifier.fit(np.asarray(train_x, dtype=np.float64), train_y)
    return classifier.predict(np.asarray(test_x, dtype=np.float64))


def knn_top1(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = DEFAULT_K,
             temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Top-1 accuracy of the weighted k-NN classifier on the test rows."""
    return float(np.mean(knn_predict(train_x, train_y, test_x, k, temperature) == np.asarray(test_y)))
