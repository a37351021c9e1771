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


def rank_database(queries: np.ndarray, database: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ranked): the `k` database rows of highest inner product per query, best first (exact
    FAISS search; -1 pads when the database has fewer rows). Unit-norm descriptors give cosines."""
    import faiss

    database = np.ascontiguousarray(database, np.float32)
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    return index.search(np.ascontiguousarray(queries, np.float32), min(k, max(1, len(database))))


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


@dataclass
class PRSummary:
    """A precision-recall curve reduced to what a SLAM user asks of it."""
    recall_at_100: float  # highest recall with no false closure (0 when the first one is false)
    recall_at_99: float  # highest recall at precision >= 0.99
    auc: float  # area under the curve (trapezoid over recall, curve starting at recall 0)


def pr_curve(precision: Sequence[float], recall: Sequence[float]) -> PRSummary:
    """Summarise a curve given as (precision, recall) points of a threshold sweep, in any order."""
    p, r = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
    if p.shape != r.shape:
        raise ValueError(f"precision and recall must have the same length, got {p.shape} and {r.shape}")
    if not len(p):
        return PRSummary(0.0, 0.0, 0.0)
    at = lambda level: float(r[p >= level].max()) if np.any(p >= level) else 0.0  # noqa: E731
    order = np.lexsort((-p, r))  # by recall, the higher precision first where recall ties
    rs = np.concatenate([[0.0], r[order]])
    ps = np.concatenate([p[order][:1], p[order]])  # the curve starts at recall 0 with the first precision
    return PRSummary(at(1.0), at(0.99), float(np.trapezoid(ps, rs)))
