"""The loop-closure decision: search result -> PlaceMatch, and -> LoopClosure when it is trustworthy.

A false loop closure wrecks a SLAM map, so a closure passes a chain of gates, each of which can
reject it with a reason that is counted (`LoopClosureDetector.rejections`), so "it never fires" can
be diagnosed: a candidate outside the exclusion windows (count, time, travelled distance, appearance
change); its local features verified (re-ranking, `rerank.min_inliers`); its score high enough
(single frame: cosine >= `loop_threshold`; sequence: `sequence_threshold`, or `sequence_support` for a
keyframe whose own cosine reaches `loop_threshold`); optionally a margin over the best *other* place
(`min_margin`); a non-degenerate relative pose when intrinsics and local features allow one; and
agreement over consecutive frames (temporal consistency).
"""
from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional

import numpy as np

from vpr_core.config import DetectorConfig, RerankConfig
from vpr_core.consistency import Consistency, PlaceLinks, accept, frame_number
from vpr_core.decision import Decision, FrameResult, PendingFrame, PlaceMatch, SequencePick
from vpr_core.fleet import FleetMatcher
from vpr_core.geometry import CameraModel, PoseConfig
from vpr_core.geometry.loop import NOT_ATTEMPTED, loop_pose
from vpr_core.keyframes import Candidate, Keyframe, KeyframePolicy, check_pose, pose_distance
from vpr_core.local_features import LocalFeatures, Verification
from vpr_core.map_database import MapDatabase, too_recent
from vpr_core.rerank import build_reranker, rerank
from vpr_core.sequence import SequenceMatcher, best_other

__all__ = ["LoopClosureDetector"]

class LoopClosureDetector:
    """Stateful per-stream decision logic over one MapDatabase; plain Python, no ROS."""

    def __init__(self, cfg: DetectorConfig, db: MapDatabase, rerank_cfg: Optional[RerankConfig] = None,
                 pose_cfg: Optional[PoseConfig] = None, fleet: Optional[FleetMatcher] = None) -> None:
        if not 0.0 <= cfg.loop_threshold <= 1.0:
            raise ValueError(f"detector.loop_threshold must be a cosine similarity in [0, 1], got {cfg.loop_threshold}")
        if cfg.top_k < 1 or cfg.temporal_consistency < 1:
            raise ValueError("detector.top_k and detector.temporal_consistency must be >= 1")
        if not cfg.min_margin >= 0 or cfg.margin_window < 0:
            raise ValueError(f"detector.min_margin and detector.margin_window must be >= 0, "
                             f"got {cfg.min_margin} and {cfg.margin_window}")
        self.cfg = cfg
        self.db = db
        self.rerank_cfg = rerank_cfg if rerank_cfg is not None else RerankConfig()
        self.reranker = build_reranker(self.rerank_cfg)  # None for rerank.method 'none'
        self.sequence = SequenceMatcher(cfg.sequence_length, cfg.sequence_velocities, cfg.sequence_contrast_window,
                                        cfg.sequence_trim)
        self.keyframes = KeyframePolicy(cfg)
        self.links = PlaceLinks()
        self.pose_cfg = pose_cfg if pose_cfg is not None else PoseConfig()
        self.cameras: Dict[str, CameraModel] = {}  # frame id -> intrinsics, from the frames that brought one
        self.rejections: Counter = Counter()  # reason -> frames rejected for it (REJECTIONS)
        self._next_id = db.next_id
        self.session = db.next_session  # stamped on every frame: a loaded map's previous runs keep theirs
        self.robot = ""  # map.robot_id, stamped on every frame
        self.consistency = Consistency(cfg.consistency_window, cfg.sequence_velocities,
                                       cfg.temporal_consistency - 1)
        self._odometer = np.zeros(2)  # [metres along the odometry poses, appearance change] since the start
        self._last_pose: Optional[list] = None
        self._last_desc: Optional[np.ndarray] = None
        self._kf_odometer: Dict[int, np.ndarray] = {}  # keyframe id -> odometer when it was added
        self._excluded = 0  # newest keyframes excluded from this frame's matches
        self.fleet = fleet  # the fleet's shared map: keyframes published to it, other robots' searched in it

    @property
    def threshold(self) -> float:
        """The score a closure needs: sequence_threshold with sequence matching on, else loop_threshold."""
        return self.cfg.sequence_threshold if self.cfg.sequence_length > 1 else self.cfg.loop_threshold

    @property
    def mapping(self) -> bool:
        """True: frames may become keyframes; False: localise against a fixed map."""
        return self.cfg.mapping

    @mapping.setter
    def mapping(self, value: bool) -> None:
        self.cfg.mapping = bool(value)

    def reset_map(self, db: MapDatabase) -> None:
        """Switch to another map (after a load or a reset); ids keep increasing so they never collide."""
        self.db = db
        self._next_id = max(self._next_id, db.next_id)
        self.session = db.next_session  # a loaded map continues in a new session
        self.consistency.reset()
        self.keyframes.reset()
        self.sequence.reset()
        self.links = PlaceLinks()
        self._kf_odometer.clear()
        if self.fleet is not None:
            self.fleet.reset()

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
                pose: Optional[List[float]] = None, local: Optional[LocalFeatures] = None,
                camera: Optional[CameraModel] = None, depth: Optional[np.ndarray] = None,
                contrast: float = float("nan")) -> FrameResult:
        """Search the map with one frame's descriptor, re-rank with its local features (when configured),
        decide on a closure, maybe add a keyframe (with its local features, when given): `prepare` then
        `decide`.

        `pose`: the camera's odometry pose [x, y, z, qx, qy, qz, qw] (keyframe policy, distance exclusion,
        stored with the keyframe). `camera` (intrinsics) and `depth` (aligned depth image of this frame)
        let the closure carry a relative pose, and let degenerate geometry reject it. `contrast` (the
        image's grey-level std, NaN = unknown): below `min_image_contrast` the frame is searched only."""
        pending = self.prepare(descriptor, stamp_ns, frame_id, pose, local, camera, depth, contrast)
        return self.decide_fleet(pending, self.decide(pending))

    def prepare(self, descriptor: np.ndarray, stamp_ns: int, frame_id: str,
                pose: Optional[List[float]] = None, local: Optional[LocalFeatures] = None,
                camera: Optional[CameraModel] = None, depth: Optional[np.ndarray] = None,
                contrast: float = float("nan")) -> PendingFrame:
        """The ordered, cheap half of `process`: validate, search, score sequences, maybe add a keyframe.
        What is left (re-ranking, verification, the gates, temporal consistency) is `decide`'s, which may
        run later on another thread: frames must be decided in the order they were prepared."""
        pose = check_pose(pose)
        query = Keyframe(self._next_id, int(stamp_ns), frame_id, pose, session=self.session, robot=self.robot)
        query_local = None
        if local is not None:
            query_local = self.db.local.check(local)  # bad local features raise before any change
        elif self.reranker is not None:
            raise ValueError(f"rerank.method is '{self.rerank_cfg.method}' but the frame came without local "
                             f"features: the model needs a local head (model.local_head)")
        self.db._check(descriptor)  # a bad descriptor raises before the sequence history changes
        self._advance_odometer(descriptor, pose)
        if camera is not None:
            self.cameras[frame_id] = camera
        t_search = time.perf_counter()
        found = self._search(descriptor, query.stamp_ns)
        timings = {"search": (time.perf_counter() - t_search) * 1e3}
        t_seq = time.perf_counter()
        positions = {c.id: self.db.position(c.id) for c in found}
        self.sequence.push(descriptor, list(positions.values()), query.stamp_ns)
        seq = self._sequence_pick(query.stamp_ns) if self.cfg.sequence_length > 1 else None
        why = "empty_map" if not len(self.db) else "too_recent" if not found else "short_sequence"
        period = self.sequence.period()
        pending = PendingFrame(query, self.db, found, positions, seq, why, query_local,
                               camera or self.cameras.get(frame_id), depth, contrast,
                               frame_number(query, period), period, timings,
                               descriptor=np.asarray(descriptor, np.float32).reshape(-1))
        timings["decision"] = (time.perf_counter() - t_seq) * 1e3  # sequence scoring; decide adds the gates
        pending.is_keyframe = self.mapping and self.keyframes.wants(descriptor, query.stamp_ns, pose)
        if pending.is_keyframe:
            self.db.add(descriptor, query, query_local)  # validated above; raises before any change
            self.keyframes.added(descriptor, query.stamp_ns, pose)
            self._kf_odometer[query.id] = self._odometer.copy()
            if self.fleet is not None:
                self.fleet.shared.publish(query, descriptor, query_local)  # queued, written in the background
        self._next_id += 1
        self.db.id_floor = self._next_id  # saved with the map, so a restarted node never reuses an id
        return pending

    def decide(self, p: PendingFrame) -> FrameResult:
        """The rest of `process` for a prepared frame: re-rank, verify, apply the gates and temporal
        consistency. A frame searched in a map that has since been replaced (load, reset) closes nothing."""
        timings = p.timings_ms
        replaced = p.db is not self.db
        candidates, global_candidates, rerank_ms = p.found, [], 0.0
        if self.reranker is not None and not replaced:
            t0 = time.perf_counter()
            head, tail = p.found[:self.rerank_cfg.top_k], p.found[self.rerank_cfg.top_k:]
            candidates = rerank(p.query_local, head, [p.db.local.get(c.id) for c in head], self.reranker) + tail
            rerank_ms = timings["rerank"] = (time.perf_counter() - t0) * 1e3
            global_candidates = p.found
        t_decide = time.perf_counter()
        decision = Decision(rejected="map_replaced") if replaced else self._judge(p, candidates)
        if not replaced and p.contrast < self.cfg.min_image_contrast:  # NaN passes
            # a dark frame looks like every other dark frame: it closes no loop itself, but stays in the
            # sequence and the map (a tunnel's dark run at its place is a sequence's strongest signature)
            decision.rejected, decision.detail = "uninformative", f"contrast {p.contrast:.3f}"
        timings["decision"] = timings.get("decision", 0.0) + (time.perf_counter() - t_decide) * 1e3
        v = decision.candidate.verification if decision.candidate is not None else None
        if v is not None and v.pose is not None:
            timings["pose"] = float(v.pose.time_ms)
        closure = accept(p, decision, self.consistency, self.cfg, self.rejections)
        if p.is_keyframe and closure is not None:
            self.links.link(p.query.id, closure.match.id)  # the new keyframe shows the matched place
        return FrameResult(PlaceMatch(p.query, p.is_keyframe, candidates[:self.cfg.top_k],
                                      global_candidates=global_candidates, rerank_ms=rerank_ms, timings_ms=timings),
                           closure, decision)

    def decide_fleet(self, p: PendingFrame, result: FrameResult) -> FrameResult:
        """The fleet's part of a decided frame (with a shared map): other robots' candidates and closure into
        `result`. It reads only the fleet's own state and the shared map, so the pipeline runs it outside its
        lock (a shared-map search takes milliseconds); frames must still go through it in order."""
        if self.fleet is None or p.db is not self.db:
            return result
        fleet = self.fleet.decide(p, self.reranker,
                                  lambda d, q, stored, pf: self._check_geometry(d, q, stored, pf.camera, pf.depth))
        result.fleet = fleet
        result.place_match.fleet_candidates = fleet.candidates
        result.place_match.timings_ms["fleet"] = fleet.ms
        return result

    def relocalise(self, descriptor: np.ndarray, k: int, local: Optional[LocalFeatures] = None,
                   camera: Optional[CameraModel] = None, depth: Optional[np.ndarray] = None) -> List[Candidate]:
        """Where is this image in the map? Top-k over the whole map (no exclusion windows), re-ranked
        with local features when configured, the best with a relative pose when `camera` is known.
        Stateless: the stream's history, streak and ids are untouched."""
        if not len(self.db):
            return []
        query_local = self.db.local.check(local) if local is not None else None
        found = self.db.search(descriptor, max(k, self.rerank_cfg.top_k if self.reranker else k))
        if self.reranker is not None and query_local is not None:
            head, tail = found[:self.rerank_cfg.top_k], found[self.rerank_cfg.top_k:]
            found = rerank(query_local, head, [self.db.local.get(c.id) for c in head], self.reranker) + tail
        found = found[:k]
        if found and camera is not None and query_local is not None:
            d = Decision(found[0])
            self._check_geometry(d, query_local, self.db.local.get(found[0].id), camera, depth)
        return found

    # ---- the gates ---------------------------------------------------------------------------
    def _advance_odometer(self, descriptor: np.ndarray, pose: Optional[list]) -> None:
        """Travelled distance (from poses) and appearance change (from consecutive frames) since the start."""
        if pose is not None and self._last_pose is not None:
            self._odometer[0] += pose_distance(pose, self._last_pose)
        self._last_pose = pose if pose is not None else self._last_pose
        d = np.asarray(descriptor, np.float32).reshape(-1)
        d = d / max(float(np.linalg.norm(d)), 1e-12)
        if self._last_desc is not None:
            self._odometer[1] += max(0.0, 1.0 - float(d @ self._last_desc))
        self._last_desc = d

    def _recent_count(self) -> int:
        """How many of the newest keyframes lie inside the exclusion windows: the count window, and the
        travelled-distance and appearance-change windows (both grow monotonically, so the keyframes
        inside them are a suffix of the insertion order; keyframes of a loaded map never are)."""
        c = self.cfg
        n = max(0, c.exclude_recent_count)
        if c.exclude_recent_m <= 0 and c.exclude_recent_change <= 0:
            return n
        limit = np.array([c.exclude_recent_m if c.exclude_recent_m > 0 else -np.inf,
                          c.exclude_recent_change if c.exclude_recent_change > 0 else -np.inf])
        count = 0
        for pos in range(len(self.db) - 1, -1, -1):
            then = self._kf_odometer.get(self.db.keyframe_at(pos).id)
            if then is None or not np.any(self._odometer - then < limit):
                break
            count += 1
        return max(n, count)

    def _search(self, descriptor: np.ndarray, stamp_ns: int) -> List[Candidate]:
        k = self.cfg.top_k if self.reranker is None else max(self.cfg.top_k, self.rerank_cfg.top_k)
        if self.cfg.sequence_length > 1:
            k = max(k, self.cfg.sequence_candidates)
        self._excluded = self._recent_count()
        if not len(self.db):
            return []
        return self.db.search(descriptor, k, stamp_ns, self._excluded, int(self.cfg.exclude_recent_s * 1e9))

    def _judge(self, p: PendingFrame, candidates: List[Candidate]) -> Decision:
        """Apply the gates to this frame's candidates; the verdict ignores temporal consistency."""
        if self.cfg.sequence_length > 1:
            picked = self._by_sequence(p)
        else:
            picked = self._by_frame(candidates, np.array([p.positions[c.id] for c in candidates], np.int64))
        if picked is None:
            return Decision(rejected=p.no_candidate)
        cand, score, other = picked
        v = cand.verification
        c = self.cfg
        d = Decision(cand, score, score - other, v is None or v.verified,
                     supported=(c.sequence_length > 1 and c.sequence_support > 0 and score >= c.sequence_support
                                and cand.score >= c.loop_threshold))
        if not d.verified:
            d.rejected = "unverified"
        elif not self._scores_enough(d):
            d.rejected = "below_threshold"
        elif self.cfg.min_margin > 0 and not d.margin >= self.cfg.min_margin:  # NaN: no other place to compare
            d.rejected = "ambiguous"
        elif p.camera is not None and p.query_local is not None:
            self._check_geometry(d, p.query_local, p.db.local.get(cand.id), p.camera, p.depth)
        return d

    def _check_geometry(self, d: Decision, query_local: LocalFeatures, stored: Optional[LocalFeatures],
                        camera: CameraModel, depth: Optional[np.ndarray]) -> None:
        """Relative pose of the judged candidate (into its Verification); degenerate geometry rejects.
        A pose that could not be attempted (keypoints too coarse without depth) leaves the closure
        to the other gates and unposed."""
        cand = d.candidate
        if stored is None:
            d.rejected, d.detail = "degenerate_geometry", "no_local_features"
            return
        v = cand.verification if cand.verification is not None else Verification()
        cand.verification = v
        r = self.rerank_cfg
        result = loop_pose(query_local, stored, camera, self.cameras.get(cand.keyframe.frame_id, camera),
                           self.pose_cfg, r.match_threshold, r.ratio, depth_query=depth, fundamental=v.fundamental)
        v.pose = result
        if result.ok:
            v.relative_pose = result.as_pose7()
        elif result.reason not in NOT_ATTEMPTED:
            d.rejected, d.detail = "degenerate_geometry", result.reason

    def _scores_enough(self, d: Decision) -> bool:
        """Single frame: cosine >= loop_threshold. Sequence: score >= sequence_threshold, or a keyframe whose
        own cosine reaches loop_threshold supported by a sequence score >= sequence_support."""
        c = self.cfg
        if c.sequence_length == 1:
            return d.score >= c.loop_threshold
        return d.score >= c.sequence_threshold or d.supported

    def _by_frame(self, candidates: List[Candidate], positions: np.ndarray) -> Optional[tuple]:
        """Single-frame decision: the first (re-ranked) candidate, its cosine, and the best other place's
        cosine (bounded by the last candidate's when every candidate is this place)."""
        if not candidates:
            return None
        scores = np.array([c.score for c in candidates], np.float32)
        other = best_other(scores, positions, 0, self.cfg.margin_window,
                           lambda i: self.links.same(candidates[i].id, candidates[0].id))
        if np.isnan(other):
            other = float(scores.min())
        return candidates[0], float(scores[0]), other

    def _sequence_pick(self, stamp_ns: int) -> Optional[SequencePick]:
        """The best-scoring sequence end among the hypotheses outside the exclusion windows, before
        verification (None when there is none or the history is too short to score)."""
        ends = [p for p in self.sequence.hypotheses(len(self.db)) if self._matchable(int(p), stamp_ns)]
        if not ends:
            return None
        ends = np.asarray(ends, np.int64)
        scores = self.sequence.score(self.db, ends)
        if not np.isfinite(scores).any():
            return None  # the history is shorter than a sequence, or no line has enough map behind it
        best = int(np.nanargmax(scores))
        kf = self.db.keyframe_at(int(ends[best]))
        cosine = float(self.db.descriptors_at(ends[best:best + 1])[0] @ self.sequence.current)
        return SequencePick(kf, cosine, scores, ends, best)

    def _by_sequence(self, p: PendingFrame) -> Optional[tuple]:
        """Sequence decision: the prepared pick, verified with local features when re-ranking is on, and
        the best other place's score (NaN: no competing place, margin unknown)."""
        s = p.sequence
        if s is None:
            return None
        cand = Candidate(s.keyframe, s.cosine)
        if self.reranker is not None and p.query_local is not None:
            stored = p.db.local.get(s.keyframe.id)
            cand.verification = (self.reranker.verify(p.query_local, stored) if stored is not None
                                 else self.reranker.unverifiable())
        other = best_other(s.scores, s.ends, s.best, self.cfg.margin_window,
                           lambda i: self.links.same(p.db.keyframe_at(int(s.ends[i])).id, s.keyframe.id))
        return cand, float(s.scores[s.best]), other

    def _matchable(self, position: int, stamp_ns: int) -> bool:
        """Outside every exclusion window: the newest keyframes (count, distance, appearance change: this
        frame's `_excluded`) and the time window, by the map search's own rule."""
        if position >= len(self.db) - self._excluded:
            return False
        return not too_recent(self.db.keyframe_at(position), stamp_ns, int(self.cfg.exclude_recent_s * 1e9))

    @property
    def next_id(self) -> int:
        """The id the next frame gets (ids only grow; the map saves it as its id floor)."""
        return self._next_id

    def skip_ids_below(self, floor: int) -> None:
        """Never hand out an id below `floor` (ids a previous run already used)."""
        self._next_id = max(self._next_id, int(floor))
        self.db.id_floor = max(self.db.id_floor, self._next_id)
