"""Retrieval metrics: Recall@K over ranked database indices, the precision-recall curve of accepting the
top-1 match by its score, mean average precision with junk left out (revisited Oxford/Paris), ROC of pair
lists, and precision/recall of loop closures."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np


RECALL_KS = (1, 5, 10, 20)  # what the benchmark reports


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



@dataclass
class MeanAP:
    """Mean average precision over queries that have positives, and mean precision at k (revisitop's mP@k)."""
    map: float
    precision_at: Dict[int, float]
    ap: np.ndarray  # per query (NaN: no positive, left out of the means)


def average_precision(ranks: np.ndarray, n_positives: int) -> float:
    """AP of one ranking given the 0-based ranks of its positives (junk already removed), the trapezoid between
    the precision just before and at each positive: revisitop's rule, so its published numbers compare."""
    r = np.sort(np.asarray(ranks, np.float64))
    if not n_positives:
        return float("nan")
    j = np.arange(len(r), dtype=np.float64)
    before = np.where(r > 0, j / np.maximum(r, 1), 1.0)
    at = (j + 1) / (r + 1)
    return float(np.sum((before + at) / 2) / n_positives)


def mean_average_precision(ranked: np.ndarray, positives: Sequence[np.ndarray], junk: Sequence[np.ndarray],
                           ks: Sequence[int] = (1, 5, 10)) -> MeanAP:
    """`ranked` (Q, N): each query's full ranking of the database (every index once, best first). Junk images
    are taken out of the ranking before positives are counted; positives missing from it count as never found."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != len(positives) or len(junk) != len(positives):
        raise ValueError(f"ranked must be (num_queries, N) with positives and junk per query; got {ranked.shape}, "
                         f"{len(positives)} and {len(junk)}")
    aps = np.full(len(positives), np.nan)
    prec = np.full((len(positives), len(ks)), np.nan)
    for i, (row, pos, jk) in enumerate(zip(ranked, positives, junk)):
        if not len(pos):
            continue
        kept = row[~np.isin(row, jk)]
        ranks = np.flatnonzero(np.isin(kept, pos))
        aps[i] = average_precision(ranks, len(pos))
        if len(ranks):  # revisitop's mP@k: precision within min(k, the last positive's rank)
            last = ranks.max() + 1
            prec[i] = [np.sum(ranks < min(last, k)) / min(last, k) for k in ks]
        else:
            prec[i] = 0.0
    valid = ~np.isnan(aps)
    if not valid.any():
        return MeanAP(float("nan"), {k: float("nan") for k in ks}, aps)
    return MeanAP(float(aps[valid].mean()), {k: float(prec[valid, j].mean()) for j, k in enumerate(ks)}, aps)
