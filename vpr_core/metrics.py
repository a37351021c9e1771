"""Retrieval metrics: Recall@K over ranked database indices, and precision/recall of loop closures."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np


def recall_at_k(ranked: np.ndarray, positives: Sequence[np.ndarray], ks: Sequence[int] = (1, 5, 10)) -> Dict[int, float]:
    """Fraction of queries with a correct database index among their first k ranked ones.

    `ranked` is (Q, K) database indices, best first; -1 pads missing entries.
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != len(positives):
        raise ValueError(f"ranked must be (num_queries, K); got {ranked.shape} for {len(positives)} queries")
    if not len(positives):
        return {k: float("nan") for k in ks}
    if ranked.shape[1] == 0:  # nothing retrieved (empty database)
        return {k: 0.0 for k in ks}
    hits = np.array([np.isin(row, pos) for row, pos in zip(ranked, positives)])
    first = np.where(hits.any(1), hits.argmax(1), np.inf)
    return {k: float(np.mean(first < k)) for k in ks}


@dataclass
class ClosureStats:
    """Loop closures judged against ground truth: precision is what protects a SLAM map."""
    published: int
    correct: int
    revisits: int  # queries that had a true match available in the map

    @property
    def precision(self) -> float:
        return self.correct / self.published if self.published else float("nan")

    @property
    def recall(self) -> float:
        return self.correct / self.revisits if self.revisits else float("nan")
