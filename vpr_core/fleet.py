"""Loops with other robots' keyframes, found in the fleet's shared map (`vpr_core.shared_map`) beside this
robot's own map, judged by the same gates as an own closure. With sequence matching on, the stretch of the
other robot's route around each candidate is fetched from the shared map (once: keyframes never change)
and the candidate is scored as the end of an aligned sequence, as in the own map; otherwise frame by frame.
Either way the best candidate is verified with its local features (fetched from the shared map, cached)
and must stay consistent over `temporal_consistency` frames, in a streak of its own.
"""
from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from vpr_core.config import DetectorConfig
from vpr_core.consistency import Consistency, accept
from vpr_core.decision import Decision, FleetResult, LoopClosure, PendingFrame
from vpr_core.keyframes import Candidate, Keyframe
from vpr_core.local_features import LocalFeatures, LocalFeatureStore
from vpr_core.rerank import Reranker, rerank
from vpr_core.sequence import SequenceMatcher, best_other
from vpr_core.shared_map import SharedMap

# judge the geometry of a decided candidate against its stored features (the detector's own check)
GeometryCheck = Callable[[Decision, LocalFeatures, Optional[LocalFeatures], PendingFrame], None]


class RemoteRoute:
    """The fetched keyframes of one robot's session, in stamp order: what `SequenceMatcher.score` reads of a
    map (len, keyframe_at, descriptors_at), grown by each stretch fetched."""

    def __init__(self) -> None:
        self.keyframes: List[Keyframe] = []
        self._desc = np.zeros((0, 0), np.float32)
        self._spans: List[Tuple[int, int, float]] = []  # fetched (lo_ns, hi_ns, when)
        self._stamps = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.keyframes)

    def keyframe_at(self, position: int) -> Keyframe:
        return self.keyframes[int(position)]

    def descriptors_at(self, positions: np.ndarray) -> np.ndarray:
        return self._desc[np.asarray(positions, np.int64).reshape(-1)]

    def nearest(self, stamps: np.ndarray) -> np.ndarray:
        """The position of the keyframe nearest in time to each stamp."""
        st = self._stamps
        hi = np.clip(np.searchsorted(st, stamps), 0, len(st) - 1)
        lo = np.clip(hi - 1, 0, len(st) - 1)
        return np.where(np.abs(st[lo] - stamps) <= np.abs(st[hi] - stamps), lo, hi)

    def covers(self, lo_ns: int, hi_ns: int, fresh_s: float) -> bool:
        """Was [lo_ns, hi_ns] fetched within the last `fresh_s` (a robot still driving adds keyframes)?"""
        now = time.monotonic()
        return any(lo <= lo_ns and hi_ns <= hi and now - when < fresh_s for lo, hi, when in self._spans)

    def merge(self, rows: List[Tuple[Keyframe, np.ndarray]], lo_ns: int, hi_ns: int, limit: int = 20000) -> None:
        """Add a fetched stretch (keyframes already here are kept once); beyond `limit` keyframes the route
        keeps only this stretch (memory stays bounded however long the other robot's route)."""
        if len(self.keyframes) + len(rows) > limit:
            self.keyframes, self._spans = [], []
        known = {kf.id: (kf, d) for kf, d in zip(self.keyframes, self._desc)}
        known.update({kf.id: (kf, d) for kf, d in rows})
        ordered = sorted(known.values(), key=lambda kd: (kd[0].stamp_ns, kd[0].id))
        self.keyframes = [kf for kf, _ in ordered]
        self._stamps = np.array([kf.stamp_ns for kf in self.keyframes], np.int64)
        self._desc = np.stack([d for _, d in ordered]).astype(np.float32) if ordered else self._desc
        self._spans = [s for s in self._spans if not (lo_ns <= s[0] and s[1] <= hi_ns)] + [(lo_ns, hi_ns, time.monotonic())]


class FleetMatcher:
    """Decides fleet closures for one robot's stream; counts why frames closed none (`rejections`)."""

    def __init__(self, shared: SharedMap, cfg: DetectorConfig, top_k: int = 5, max_routes: int = 64,
                 fresh_s: float = 30.0) -> None:
        self.shared, self.cfg, self.top_k = shared, cfg, int(top_k)
        self.consistency = Consistency(cfg.consistency_window, cfg.sequence_velocities, cfg.temporal_consistency - 1)
        self.sequence = SequenceMatcher(cfg.sequence_length, cfg.sequence_velocities, cfg.sequence_contrast_window,
                                        cfg.sequence_trim)
        self.routes: "OrderedDict[Tuple[str, int], RemoteRoute]" = OrderedDict()  # (robot, session), LRU
        self.max_routes, self.fresh_s = int(max_routes), float(fresh_s)
        self.rejections: Counter = Counter()
        self._run: tuple = ()  # (robot, session) of the streak's matches
        self._recent: Deque[List[Keyframe]] = deque(maxlen=max(1, cfg.sequence_length))  # recent frames' hits

    def reset(self) -> None:
        """Forget the streak and the recent frames (the own map was replaced: the stream restarts)."""
        self.consistency.reset()
        self.sequence.reset()
        self._recent.clear()

    def decide(self, p: PendingFrame, reranker: Optional[Reranker], geometry: GeometryCheck) -> FleetResult:
        """Search the shared map with the prepared frame, pick (by sequence or frame), verify and judge."""
        t0 = time.perf_counter()
        sequences = self.cfg.sequence_length > 1
        found = self.shared.search(p.descriptor, max(self.top_k, self.cfg.sequence_candidates if sequences else 0))
        self.sequence.push(p.descriptor, (), p.query.stamp_ns)
        self._recent.append([c.keyframe for c in found])
        store = LocalFeatureStore(p.query_local.dim) if p.query_local is not None else None
        if sequences:
            candidates = found
            picked = self._by_sequence(p, found)
            stored = None
            if picked is not None and store is not None:
                stored = self.shared.local_features([picked[0].keyframe], store)[0]
                if reranker is not None:
                    picked[0].verification = (reranker.verify(p.query_local, stored) if stored is not None
                                              else reranker.unverifiable())
        else:
            stored_all = self.shared.local_features([c.keyframe for c in found], store) if store and found else []
            candidates = found
            if reranker is not None and store is not None and found:
                candidates = rerank(p.query_local, found, stored_all, reranker)
                by_key = {(c.keyframe.robot, c.id): s for c, s in zip(found, stored_all)}
                stored_all = [by_key[(c.keyframe.robot, c.id)] for c in candidates]
            picked = self._by_frame(candidates)
            stored = stored_all[0] if stored_all else None
        d = self._judge(p, picked, stored, geometry)
        return FleetResult(candidates[:self.top_k], d, self._accept(p, d), (time.perf_counter() - t0) * 1e3)

    # ---- picking a candidate ------------------------------------------------------------------
    def _by_frame(self, candidates: List[Candidate]) -> Optional[tuple]:
        """The first candidate, its cosine, and the best other place's (another run, or farther in time)."""
        if not candidates:
            return None
        best = candidates[0]
        scores = np.array([c.score for c in candidates], np.float32)
        window = self.cfg.margin_window * max(self.sequence.period(), 1.0)

        def same_place(i: int) -> bool:  # the same robot's same run, within the margin window of the best
            c = candidates[i].keyframe
            return (c.robot, c.session) == (best.keyframe.robot, best.keyframe.session) and \
                abs(c.stamp_ns - best.keyframe.stamp_ns) <= window
        other = best_other(scores, np.zeros(len(scores)), 0, -1, same_place)
        return best, float(best.score), other if np.isfinite(other) else float(scores.min())

    def _by_sequence(self, p: PendingFrame, found: List[Candidate]) -> Optional[tuple]:
        """The best sequence end, each scored on the stretch of its robot's route that ends there. Ends: this
        frame's candidates and the recent frames' carried forward along each velocity (as in the own map);
        NaN margin when no other place of that route was scored."""
        period = self.sequence.period()
        if period <= 0 or not self.sequence.full:
            return None
        c = self.cfg
        before = int((c.sequence_length * max(c.sequence_velocities) + c.sequence_contrast_window + 2) * period)
        after = int((c.sequence_contrast_window + 2) * period)
        targets: Dict[Tuple[str, int], List[int]] = {}  # route -> stamps a sequence may end at
        for back, hits in enumerate(reversed(self._recent)):
            shifts = np.unique(np.rint(np.asarray(c.sequence_velocities) * back)) * period
            for kf in hits:
                targets.setdefault((kf.robot, kf.session), []).extend(int(kf.stamp_ns + s) for s in shifts)
        best: Optional[tuple] = None
        for key, stamps in targets.items():
            st = np.sort(np.asarray(stamps, np.int64))
            for part in np.split(st, np.flatnonzero(np.diff(st) > before + after) + 1):  # far apart: fetched apart
                route = self._route(key, int(part[0]) - before, int(part[-1]) + after)
            if not len(route):
                continue
            ends = np.unique(route.nearest(np.asarray(stamps, np.int64)))
            self.sequence.forget_map()
            scores = self.sequence.score(route, ends)
            if not np.isfinite(scores).any():
                continue
            i = int(np.nanargmax(scores))
            if best is None or scores[i] > best[1]:
                other = best_other(scores, ends, i, c.margin_window, lambda j: False)
                kf = route.keyframe_at(int(ends[i]))
                cosine = float(route.descriptors_at(ends[i:i + 1])[0] @ self.sequence.current)
                best = (Candidate(kf, cosine), float(scores[i]), other)
        return best

    def _route(self, key: Tuple[str, int], lo_ns: int, hi_ns: int) -> RemoteRoute:
        """The stretch [lo_ns, hi_ns] of a robot's session, fetched unless fetched lately."""
        route = self.routes.pop(key, None) or RemoteRoute()
        self.routes[key] = route
        while len(self.routes) > self.max_routes:
            self.routes.popitem(last=False)
        if not route.covers(lo_ns, hi_ns, self.fresh_s):
            rows = self.shared.route(key[0], key[1], lo_ns, hi_ns)
            if rows is not None:
                route.merge(rows, lo_ns, hi_ns)
        return route

    # ---- the gates ----------------------------------------------------------------------------
    def _judge(self, p: PendingFrame, picked: Optional[tuple], stored: Optional[LocalFeatures],
               geometry: GeometryCheck) -> Decision:
        if picked is None:
            return Decision(rejected="empty_map" if self.cfg.sequence_length == 1 else "short_sequence")
        cand, score, other = picked
        c, v = self.cfg, cand.verification
        d = Decision(cand, score, score - other, v is None or v.verified,
                     supported=(c.sequence_length > 1 and c.sequence_support > 0 and score >= c.sequence_support
                                and cand.score >= c.loop_threshold))
        enough = score >= (c.sequence_threshold if c.sequence_length > 1 else c.loop_threshold) or d.supported
        if p.contrast < c.min_image_contrast:
            d.rejected, d.detail = "uninformative", f"contrast {p.contrast:.3f}"
        elif not d.verified:
            d.rejected = "unverified"
        elif not enough:
            d.rejected = "below_threshold"
        elif c.min_margin > 0 and not d.margin >= c.min_margin:
            d.rejected = "ambiguous"
        elif p.camera is not None and p.query_local is not None:
            geometry(d, p.query_local, stored, p)
        return d

    def _accept(self, p: PendingFrame, d: Decision) -> Optional[LoopClosure]:
        """The own map's consistency rule on the fleet's own streak, which a switch of robot or run breaks."""
        if not d.rejected:
            kf = d.candidate.keyframe
            if self.consistency.recent and self._run != (kf.robot, kf.session):
                self.consistency.reset()
            self._run = (kf.robot, kf.session)
        return accept(p, d, self.consistency, self.cfg, self.rejections)

