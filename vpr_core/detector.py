"""The loop-closure decision: search result -> PlaceMatch, and -> LoopClosure when it is trustworthy.

A false loop closure wrecks a SLAM map, so a closure needs a score over threshold *and*
agreement over consecutive frames (temporal consistency, as DBoW2 loop detectors do).
With re-ranking on (`rerank.method` mnn | degensac), the top `rerank.top_k` candidates are
re-ordered by local-feature matching and a closure also needs its match verified (at least
`rerank.min_inliers` mutual matches / inliers). The keyframe policy decides which frames join the map.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import numpy as np

from vpr_core.config import DetectorConfig, RerankConfig
from vpr_core.local_features import LocalFeatures
from vpr_core.map_database import Candidate, Keyframe, MapDatabase
from vpr_core.rerank import Verification, build_reranker, rerank

__all__ = ["FrameResult", "LoopClosure", "LoopClosureDetector", "PlaceMatch", "Verification"]


@dataclass
class PlaceMatch:
    """The best map candidates for one query frame."""
    query: Keyframe
    is_keyframe: bool
    candidates: List[Candidate] = field(default_factory=list)  # best first (re-ranked when re-ranking is on)
    latency_ms: float = 0.0
    global_candidates: List[Candidate] = field(default_factory=list)  # search order before re-ranking (re-ranked only)
    rerank_ms: float = 0.0  # time spent re-ranking this frame's candidates

    @property
    def best(self) -> Optional[Candidate]:
        return self.candidates[0] if self.candidates else None


@dataclass
class LoopClosure:
    """An accepted revisit: `query` is at the place of map keyframe `match`."""
    query: Keyframe
    match: Candidate
    verification: Verification = field(default_factory=Verification)

    @property
    def score(self) -> float:
        return self.match.score


@dataclass
class FrameResult:
    place_match: PlaceMatch
    loop_closure: Optional[LoopClosure] = None


class LoopClosureDetector:
    """Stateful per-stream decision logic over one MapDatabase; plain Python, no ROS."""

    def __init__(self, cfg: DetectorConfig, db: MapDatabase, rerank_cfg: Optional[RerankConfig] = None) -> None:
        if not 0.0 <= cfg.loop_threshold <= 1.0:
            raise ValueError(f"detector.loop_threshold must be a cosine similarity in [0, 1], got {cfg.loop_threshold}")
        if cfg.top_k < 1 or cfg.temporal_consistency < 1:
            raise ValueError("detector.top_k and detector.temporal_consistency must be >= 1")
        self.cfg = cfg
        self.db = db
        self.rerank_cfg = rerank_cfg if rerank_cfg is not None else RerankConfig()
        self.reranker = build_reranker(self.rerank_cfg)  # None for rerank.method 'none'
        self._next_id = db.next_id
        self._streak = 0
        self._last_match: Optional[int] = None
        self._last_kf_stamp: Optional[int] = None
        self._last_kf_desc: Optional[np.ndarray] = None

    def reset_map(self, db: MapDatabase) -> None:
        """Switch to another map (after a load); ids keep increasing so they never collide."""
        self.db = db
        self._next_id = max(self._next_id, db.next_id)
        self._streak, self._last_match = 0, None
        self._last_kf_stamp, self._last_kf_desc = None, None

    @contextmanager
    def reranking_paused(self) -> Iterator[None]:
        """Within the block, frames are searched by global descriptor only (local features are still
        stored with keyframes). For building a map offline, where the frames' own matches are unused
        and re-ranking them would only cost time; never used by the node."""
        reranker, self.reranker = self.reranker, None
        try:
            yield
        finally:
            self.reranker = reranker

    def process(self, descriptor: np.ndarray, stamp_ns: int, frame_id: str,
                pose: Optional[List[float]] = None, local: Optional[LocalFeatures] = None) -> FrameResult:
        """Search the map with one frame's descriptor, re-rank with its local features (when configured),
        decide on a closure, maybe add a keyframe (with its local features, when given)."""
        query = Keyframe(self._next_id, int(stamp_ns), frame_id, pose)
        query_local = None
        if local is not None:
            query_local = self.db.local.check(local)  # bad local features raise before any change
        elif self.reranker is not None:
            raise ValueError(f"rerank.method is '{self.rerank_cfg.method}' but the frame came without local "
                             f"features: the model needs a local head (model.local_head)")
        k = self.cfg.top_k if self.reranker is None else max(self.cfg.top_k, self.rerank_cfg.top_k)
        found = self.db.search(descriptor, k, query.stamp_ns, self.cfg.exclude_recent_count,
                               int(self.cfg.exclude_recent_s * 1e9)) if len(self.db) else []
        global_candidates, rerank_ms = [], 0.0
        if self.reranker is not None:
            t0 = time.perf_counter()
            head, tail = found[:self.rerank_cfg.top_k], found[self.rerank_cfg.top_k:]
            candidates = (rerank(query_local, head, self.db.local, self.reranker) + tail)[:self.cfg.top_k]
            rerank_ms = (time.perf_counter() - t0) * 1e3
            global_candidates = found
        else:
            candidates = found
        closure = self._decide(query, candidates)
        is_keyframe = self._want_keyframe(descriptor, query.stamp_ns)
        if is_keyframe:
            self.db.add(descriptor, query, query_local)  # validates the descriptor first; raises before any change
            d = np.asarray(descriptor, np.float32).reshape(-1)
            self._last_kf_stamp, self._last_kf_desc = query.stamp_ns, d / np.linalg.norm(d)
        self._next_id += 1
        self.db.id_floor = self._next_id  # saved with the map, so a restarted node never reuses an id
        return FrameResult(PlaceMatch(query, is_keyframe, candidates, global_candidates=global_candidates,
                                      rerank_ms=rerank_ms), closure)

    def _decide(self, query: Keyframe, candidates: List[Candidate]) -> Optional[LoopClosure]:
        best = candidates[0] if candidates else None
        unverified = self.reranker is not None and not (best is not None and best.verification is not None
                                                        and best.verification.verified)
        if best is None or best.score < self.cfg.loop_threshold or unverified:
            self._streak, self._last_match = 0, None
            return None
        agrees = self._last_match is not None and abs(best.id - self._last_match) <= self.cfg.consistency_window
        self._streak = self._streak + 1 if agrees else 1
        self._last_match = best.id
        if self._streak < self.cfg.temporal_consistency:
            return None
        return LoopClosure(query, best, best.verification if best.verification is not None else Verification())

    def _want_keyframe(self, descriptor: np.ndarray, stamp_ns: int) -> bool:
        if not self.cfg.mapping:
            return False
        if self._last_kf_stamp is None:
            return True
        if (stamp_ns - self._last_kf_stamp) < self.cfg.keyframe_min_interval_s * 1e9:
            return False
        if self.cfg.keyframe_max_similarity < 1.0:
            d = np.asarray(descriptor, np.float32).reshape(-1)
            sim = float(np.dot(self._last_kf_desc, d) / (np.linalg.norm(d) + 1e-12))  # cosine
            return sim < self.cfg.keyframe_max_similarity
        return True

    @property
    def next_id(self) -> int:
        """The id the next frame gets (ids only grow; the map saves it as its id floor)."""
        return self._next_id

    def skip_ids_below(self, floor: int) -> None:
        """Never hand out an id below `floor` (ids a previous run already used)."""
        self._next_id = max(self._next_id, int(floor))
        self.db.id_floor = max(self.db.id_floor, self._next_id)
