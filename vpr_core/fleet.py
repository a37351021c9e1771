"""Loops with other robots' keyframes, found in the fleet's shared map (`vpr_core.shared_map`) beside this
robot's own map. Their sequences are not here, so a fleet closure is decided frame by frame: the best
candidate (re-ranked with its local features, fetched from the shared map) must pass the same gates as an
own closure (verification, loop_threshold, margin, geometry) and then stay consistent over
`temporal_consistency` frames, in a streak of its own.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable, List, Optional

import numpy as np

from vpr_core.config import DetectorConfig
from vpr_core.consistency import Consistency
from vpr_core.decision import Decision, FleetResult, LoopClosure, PendingFrame
from vpr_core.keyframes import Candidate
from vpr_core.local_features import LocalFeatures, LocalFeatureStore, Verification
from vpr_core.rerank import Reranker, rerank
from vpr_core.sequence import best_other
from vpr_core.shared_map import SharedMap

# judge the geometry of a decided candidate against its stored features (the detector's own check)
GeometryCheck = Callable[[Decision, LocalFeatures, Optional[LocalFeatures], PendingFrame], None]


class FleetMatcher:
    """Decides fleet closures for one robot's stream; counts why frames closed none (`rejections`)."""

    def __init__(self, shared: SharedMap, cfg: DetectorConfig, top_k: int = 5) -> None:
        self.shared, self.cfg, self.top_k = shared, cfg, int(top_k)
        self.consistency = Consistency(cfg.consistency_window, cfg.sequence_velocities, cfg.temporal_consistency - 1)
        self.rejections: Counter = Counter()
        self._run: tuple = ()  # (robot, session) of the streak's matches

    def decide(self, p: PendingFrame, reranker: Optional[Reranker], geometry: GeometryCheck) -> FleetResult:
        """Search the shared map with the prepared frame, re-rank its `top_k` candidates (their local features
        travel from the shared map: fetched for these few only, and cached), judge the best."""
        t0 = time.perf_counter()
        found = self.shared.search(p.descriptor, self.top_k)
        stored: List[Optional[LocalFeatures]] = [None] * len(found)
        if found and p.query_local is not None:
            stored = self.shared.local_features([c.keyframe for c in found], LocalFeatureStore(p.query_local.dim))
        ms = (time.perf_counter() - t0) * 1e3
        candidates = found
        if reranker is not None and p.query_local is not None and found:
            candidates = rerank(p.query_local, found, stored, reranker)
            by_key = {(c.keyframe.robot, c.id): s for c, s in zip(found, stored)}
            stored = [by_key[(c.keyframe.robot, c.id)] for c in candidates]
        d = self._judge(p, candidates, stored, geometry)
        return FleetResult(candidates[:self.top_k], d, self._accept(p, d), ms)

    def _judge(self, p: PendingFrame, candidates: List[Candidate], stored: List[Optional[LocalFeatures]],
               geometry: GeometryCheck) -> Decision:
        if not candidates:
            return Decision(rejected="empty_map")
        best = candidates[0]
        scores = np.array([c.score for c in candidates], np.float32)
        window = self.cfg.margin_window * (p.period if p.period > 0 else 1)

        def same_place(i: int) -> bool:  # the same robot's same run, within the margin window of the best
            c = candidates[i].keyframe
            return (c.robot, c.session) == (best.keyframe.robot, best.keyframe.session) and \
                abs(c.stamp_ns - best.keyframe.stamp_ns) <= window
        other = best_other(scores, np.zeros(len(scores)), 0, -1, same_place)
        v = best.verification
        d = Decision(best, float(best.score), float(best.score) - (other if np.isfinite(other) else float(scores.min())),
                     v is None or v.verified)
        if p.contrast < self.cfg.min_image_contrast:
            d.rejected, d.detail = "uninformative", f"contrast {p.contrast:.3f}"
        elif not d.verified:
            d.rejected = "unverified"
        elif d.score < self.cfg.loop_threshold:
            d.rejected = "below_threshold"
        elif self.cfg.min_margin > 0 and not d.margin >= self.cfg.min_margin:
            d.rejected = "ambiguous"
        elif p.camera is not None and p.query_local is not None:
            geometry(d, p.query_local, stored[0], p)
        return d

    def _accept(self, p: PendingFrame, d: Decision) -> Optional[LoopClosure]:
        """Temporal consistency of the fleet's own streak (a switch of robot or run breaks it)."""
        self.consistency.window = self.cfg.consistency_window
        self.consistency.span = max(1, self.cfg.temporal_consistency - 1)
        match = None
        if not d.rejected:
            kf = d.candidate.keyframe
            match = kf.stamp_ns / p.period if p.period > 0 and kf.stamp_ns >= 0 else float(kf.id)
            if self.consistency.recent and self._run != (kf.robot, kf.session):
                self.consistency.reset()
            self._run = (kf.robot, kf.session)
        d.streak = self.consistency.update(match, p.frame_number)
        if not d.rejected and d.streak < self.cfg.temporal_consistency:
            d.rejected = "inconsistent"
        if d.rejected:
            self.rejections[d.rejected] += 1
            return None
        best = d.candidate
        return LoopClosure(p.query, best, best.verification if best.verification is not None else Verification(),
                           margin=d.margin)

    def reset(self) -> None:
        """Forget the streak (the own map was replaced: frames restart)."""
        self.consistency.reset()
