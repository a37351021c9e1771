"""The loop-closure decision: search result -> PlaceMatch, and -> LoopClosure when it is trustworthy.

A false loop closure wrecks a SLAM map, so a closure needs a score over threshold *and*
agreement over consecutive frames (temporal consistency, as DBoW2 loop detectors do).
The keyframe policy decides which frames join the map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from vpr_core.config import DetectorConfig
from vpr_core.map_database import Candidate, Keyframe, MapDatabase


@dataclass
class Verification:
    """How a closure was checked beyond the global score; -1 means "not computed"."""
    method: str = "none"  # none | mnn | degensac
    verified: bool = False
    num_matches: int = -1
    num_inliers: int = -1
    fundamental: Optional[np.ndarray] = None  # 3x3, when estimated
    relative_pose: Optional[List[float]] = None  # [x,y,z,qx,qy,qz,qw] query in match frame, when known


@dataclass
class PlaceMatch:
    """The best map candidates for one query frame."""
    query: Keyframe
    is_keyframe: bool
    candidates: List[Candidate] = field(default_factory=list)
    latency_ms: float = 0.0

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

    def __init__(self, cfg: DetectorConfig, db: MapDatabase) -> None:
        if not 0.0 <= cfg.loop_threshold <= 1.0:
            raise ValueError(f"detector.loop_threshold must be a cosine similarity in [0, 1], got {cfg.loop_threshold}")
        if cfg.top_k < 1 or cfg.temporal_consistency < 1:
            raise ValueError("detector.top_k and detector.temporal_consistency must be >= 1")
        self.cfg = cfg
        self.db = db
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

    def process(self, descriptor: np.ndarray, stamp_ns: int, frame_id: str,
                pose: Optional[List[float]] = None) -> FrameResult:
        """Search the map with one frame's descriptor, decide on a closure, maybe add a keyframe."""
        query = Keyframe(self._next_id, int(stamp_ns), frame_id, pose)
        candidates = self.db.search(descriptor, self.cfg.top_k, query.stamp_ns, self.cfg.exclude_recent_count,
                                    int(self.cfg.exclude_recent_s * 1e9)) if len(self.db) else []
        closure = self._decide(query, candidates)
        is_keyframe = self._want_keyframe(descriptor, query.stamp_ns)
        if is_keyframe:
            self.db.add(descriptor, query)  # validates the descriptor first; raises before any change
            d = np.asarray(descriptor, np.float32).reshape(-1)
            self._last_kf_stamp, self._last_kf_desc = query.stamp_ns, d / np.linalg.norm(d)
        self._next_id += 1
        self.db.id_floor = self._next_id  # saved with the map, so a restarted node never reuses an id
        return FrameResult(PlaceMatch(query, is_keyframe, candidates), closure)

    def _decide(self, query: Keyframe, candidates: List[Candidate]) -> Optional[LoopClosure]:
        best = candidates[0] if candidates else None
        if best is None or best.score < self.cfg.loop_threshold:
            self._streak, self._last_match = 0, None
            return None
        agrees = self._last_match is not None and abs(best.id - self._last_match) <= self.cfg.consistency_window
        self._streak = self._streak + 1 if agrees else 1
        self._last_match = best.id
        if self._streak < self.cfg.temporal_consistency:
            return None
        return LoopClosure(query, best)

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
