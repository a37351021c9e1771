"""Retrieval metrics: Recall@K over ranked database indices, the precision-recall curve of accepting the
top-1 match by its score, and precision/recall of loop closures."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

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


def retrieval_pr(ranked: np.ndarray, scores: np.ndarray,
                 positives: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of accepting each query's top-1 match when its score reaches a threshold, one
    point per distinct top-1 score, highest first (VPR-Bench's protocol). Precision is over the accepted
    queries; recall over the queries that have a right answer in the database; a query with no top-1
    (-1) is never accepted. Summarise with `pr_curve`."""
    ranked, scores = np.asarray(ranked), np.asarray(scores, np.float64)
    if ranked.ndim != 2 or ranked.shape[0] != len(positives) or scores.shape[0] != len(positives):
        raise ValueError(f"ranked and scores must be (num_queries, K); got {ranked.shape} and {scores.shape} "
                         f"for {len(positives)} queries")
    answerable = sum(len(p) > 0 for p in positives)
    if not len(positives) or ranked.shape[1] == 0 or not answerable:
        return np.zeros(0), np.zeros(0)
    top, top_score = ranked[:, 0], scores[:, 0]
    accepted = top >= 0
    right = np.array([t in set(np.asarray(p).tolist()) for t, p in zip(top, positives)]) & accepted
    order = np.argsort(-top_score[accepted], kind="stable")
    s, ok = top_score[accepted][order], right[accepted][order]
    tp, n = np.cumsum(ok), np.arange(1, len(ok) + 1)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the end of each group of equal scores
    return tp[last] / n[last], tp[last] / answerable


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


@dataclass
class PairScores:
    """Same-place / different-place pairs judged by descriptor similarity (DINOVPR's protocol)."""
    auc: float  # ROC area: the chance a same-place pair scores above a different-place one (ties count half)
    accuracy: float  # the best share of pairs right with one threshold
    threshold: float  # that threshold (a pair is "same place" when its similarity >= it)
    pairs: int


def pair_scores(similarity: Sequence[float], labels: Sequence[int]) -> PairScores:
    """ROC AUC (Mann-Whitney, ties half) and the best single-threshold accuracy of labelled pairs."""
    s, y = np.asarray(similarity, np.float64).reshape(-1), np.asarray(labels).reshape(-1)
    if s.shape != y.shape or not len(s) or not np.isin(y, (0, 1)).all():
        raise ValueError(f"need one 0/1 label per similarity, got {s.shape} similarities and labels {np.unique(y)}")
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):  # average ranks over ties
        ranks[order[a:b]] = (a + b + 1) / 2.0
    auc = float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)) if pos and neg else float("nan")
    # accuracy at each distinct threshold (and above all of them: every pair "different")
    desc = np.argsort(-s, kind="stable")
    tp = np.cumsum(y[desc] == 1)
    fp = np.cumsum(y[desc] == 0)
    last = np.flatnonzero(np.r_[s[desc][1:] != s[desc][:-1], True])
    correct = np.r_[neg, tp[last] + (neg - fp[last])]
    best = int(np.argmax(correct))
    threshold = float("inf") if best == 0 else float(s[desc][last[best - 1]])
    return PairScores(auc, float(correct[best] / len(s)), threshold, len(s))

