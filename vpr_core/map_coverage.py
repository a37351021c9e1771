"""Keyframes an IVF map's lists were not trained for: a region met after the last training, searched exactly
beside the lists until a retraining gives it lists of its own.

IVF lists are trained on the map as it was (k-means at `train_at`, then at each doubling, vpr_core.map_ivf).
A robot that drives into a place unlike anything in the map then adds keyframes that all fall into a few
lists whose centroids hardly resemble them, and a query from that place probes lists by the same poor
similarities: its true match is missed. Measured on real descriptors: Nordland validation added to a 1M map
trained on corridor-like keyframes, R@1 0.084 at the default probes against 0.096 exact, and still 0.089 when
scanning twice the lists; with the region in the training sample, 0.096 at the default (README, map section).

So every keyframe added to a trained IVF map is compared with the centroid of the list it went to. One less
similar to it than all but `QUANTILE` of the map's own keyframes are to theirs is *uncovered*: kept here as an
exact row and scanned by every search (merged with the lists' results), so recall in a new region is that
of exact search from the first keyframe on. When `capacity` keyframes are uncovered, the map retrains its lists
with them in the k-means sample (in the background, as any rebuild); afterwards only those still uncovered
stay. At most twice `capacity` rows are kept (the scan's cost stays bounded); beyond that, keyframes are
left to the lists alone, counted and logged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import faiss
import numpy as np

from vpr_core.map_ivf import MIN_POINTS_PER_LIST

log = logging.getLogger(__name__)

QUANTILE = 0.001  # a keyframe less similar to its list's centroid than 99.9% of the map's is uncovered
CALIBRATION_ROWS = 4096  # keyframes sampled to set the threshold (one dot product each)
SCAN_CHUNK = 8192  # keyframes read at a time when a map is scanned for uncovered ones (their centroids: 42 MB)
Reader = Callable[[np.ndarray], np.ndarray]  # insertion positions -> exact float32 descriptors (as the map stores them)


@dataclass
class Coverage:
    """What a scan of an IVF index found: the threshold and the uncovered positions among its first `end`."""
    threshold: float
    positions: np.ndarray
    end: int


def trained_floor(nlist: int) -> int:
    """Fewer keyframes than any map trained with `nlist` lists had (vpr_core.map_ivf.lists_for: round(2 sqrt(N)),
    at most N / MIN_POINTS_PER_LIST, so N >= both bounds below): the population the lists were trained on, the
    same however often the map was saved and loaded."""
    return max(MIN_POINTS_PER_LIST * nlist, int((nlist / 2 - 0.25) ** 2))


def scan(index: faiss.Index, read: Reader, capacity: int) -> Coverage:
    """The keyframes of an IVF map (IndexIDMap2) added after its lists were trained, each checked against its
    list's centroid: a function of the index and its rows alone, so a map and the same map loaded from its file
    find the same ones. The threshold is the QUANTILE of a fixed sample of the keyframes the lists were trained
    on (a region added since may be far more than QUANTILE of the map and must not set it); those keyframes
    themselves are not looked at (their lists were made for them). Run by a rebuild's worker thread."""
    inner, n = faiss.downcast_index(index.index), index.ntotal
    if inner.nlist == 1 or capacity == 0 or n == 0:  # untrained: one list, searched exactly
        return Coverage(-np.inf, np.zeros(0, np.int64), n)
    centroids = inner.quantizer.reconstruct_n(0, inner.nlist)
    lists = faiss.vector_to_array(inner.direct_map.array) >> 32  # position -> list (direct map: list << 32 | offset)
    trained = min(n, trained_floor(inner.nlist))
    sample = np.sort(np.random.default_rng(inner.nlist).choice(trained, min(trained, CALIBRATION_ROWS), replace=False))
    threshold = float(np.quantile(_similarity(read(sample), centroids[lists[sample]]), QUANTILE))
    found = [np.zeros(0, np.int64)]
    for a in range(trained, n, SCAN_CHUNK):
        pos = np.arange(a, min(n, a + SCAN_CHUNK))
        found.append(pos[_similarity(read(pos), centroids[lists[pos]]) < threshold])
    return Coverage(threshold, np.concatenate(found), n)


def _similarity(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", rows, centroids)


class Uncovered:
    """Insertion positions and exact rows of the keyframes the current lists cover badly (see module doc)."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.capacity = capacity  # this many start a retraining; 0 = off
        self.threshold = -np.inf  # similarity to the own list's centroid below which a keyframe is uncovered
        self.positions = np.zeros(0, np.int64)
        self._rows = np.zeros((0, dim), np.float32)
        self._n = 0
        self._due_at = capacity
        self.dropped = 0  # uncovered keyframes beyond twice the capacity: left to the lists alone
        self._inner: Optional[faiss.IndexIVF] = None
        self._centroids = np.zeros((0, dim), np.float32)

    def __len__(self) -> int:
        return self._n

    @property
    def due(self) -> bool:
        """Whether enough keyframes are uncovered that the lists should be retrained with them."""
        return self.capacity > 0 and self._n >= self._due_at

    def uncovered_positions(self) -> np.ndarray:
        return self.positions[:self._n].copy()

    def attach(self, index: faiss.Index, read: Reader, found: Optional[Coverage] = None) -> None:
        """Take the map's (new or loaded) IVF index with what `scan` found in it (scanned here when not given);
        keyframes added after that scan are checked one by one."""
        found = found if found is not None else scan(index, read, self.capacity)
        inner = faiss.downcast_index(index.index)
        self._inner, self.threshold, self._n, self.dropped = inner, found.threshold, 0, 0
        if found.threshold == -np.inf:
            self._inner = None
            self._due_at = self.capacity
            return
        self._centroids = inner.quantizer.reconstruct_n(0, inner.nlist)
        if len(found.positions):
            self._append(found.positions, read(found.positions[:2 * self.capacity]))
        for p in range(found.end, index.ntotal):  # added while a background rebuild ran
            self.observe(p, read)
        self._due_at = max(self.capacity, self._n + self.capacity // 2)  # no retraining loop on rows it cannot cover
        if self._n:
            log.info("%d keyframes lie outside the IVF lists' training (similarity to their list's centroid below "
                     "%.3f): searched exactly beside the lists", self._n, self.threshold)

    def observe(self, position: int, read: Reader) -> None:
        """Check the keyframe just added at `position` (its row as the map stores it): kept if its list covers it
        badly."""
        if self._inner is None:
            return
        row = read(np.array([position], np.int64))
        if float(self._centroids[self._inner.direct_map.get(int(position)) >> 32] @ row[0]) < self.threshold:
            self._append(np.array([position], np.int64), row)

    def _append(self, positions: np.ndarray, rows: np.ndarray) -> None:
        room = 2 * self.capacity - self._n
        if len(positions) > room:
            if not self.dropped:
                log.warning("more than %d keyframes lie outside the IVF lists' training: the rest are found through "
                            "the lists alone until they are retrained", 2 * self.capacity)
            self.dropped += len(positions) - room
            positions, rows = positions[:room], rows[:room]
        end = self._n + len(positions)
        if end > len(self.positions):
            size = min(2 * self.capacity, max(256, 2 * end))
            self.positions = np.resize(self.positions, size)
            grown = np.zeros((size, self.dim), np.float32)
            grown[:self._n] = self._rows[:self._n]
            self._rows = grown
        self.positions[self._n:end] = positions
        self._rows[self._n:end] = rows
        self._n = end

    def search(self, vec: np.ndarray, k: int, excluded: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Exact top-k (scores, positions) among the uncovered keyframes, leaving the `excluded` positions out."""
        scores = self._rows[:self._n] @ vec
        if len(excluded):
            scores[np.isin(self.positions[:self._n], excluded)] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        top = top[np.isfinite(scores[top])]
        return scores[top], self.positions[top]


def merge(scores: np.ndarray, ids: np.ndarray, more_scores: np.ndarray, more_ids: np.ndarray,
          k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The top k of two result lists (1-D scores and ids; -1 ids are padding), each id once at its best score."""
    s = np.concatenate([scores, more_scores]).astype(np.float32)
    i = np.concatenate([ids, more_ids]).astype(np.int64)
    keep = i >= 0
    s, i = s[keep], i[keep]
    order = np.lexsort((-s, i))  # by id, best score first
    first = np.ones(len(i), bool)
    first[1:] = i[order][1:] != i[order][:-1]
    s, i = s[order][first], i[order][first]
    top = np.argsort(-s, kind="stable")[:k]
    return s[top], i[top]
