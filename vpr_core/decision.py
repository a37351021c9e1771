"""What the loop-closure detector says about one frame: its PlaceMatch (the map's best candidates), the
LoopClosure when one is accepted, the Decision the gates reached (and, as reasons, REJECTIONS), where
the frame's time went (STAGES), a frame between the detector's two halves (PendingFrame), and what the
fleet's shared map gave it (FleetResult)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from vpr_core.geometry import CameraModel
from vpr_core.keyframes import Candidate, Keyframe
from vpr_core.local_features import LocalFeatures, Verification
from vpr_core.map_database import MapDatabase

# Where a frame's time goes, in flow order ("decode" is the node's, "model" the pipeline's).
STAGES = ("decode", "model", "preprocess", "forward", "search", "rerank", "decision", "pose",
          "fleet")  # model = preprocess + forward; fleet: the shared map's search and fetch (map.backend milvus)

# Why a frame did not become a loop closure, in the order the gates are applied.
# "map_replaced": the frame was searched in a map that a load or reset replaced before it was decided.
REJECTIONS = ("map_replaced", "uninformative", "empty_map", "too_recent", "short_sequence", "unverified",
              "below_threshold", "ambiguous", "degenerate_geometry", "inconsistent")


@dataclass
class PlaceMatch:
    """The best map candidates for one query frame."""
    query: Keyframe
    is_keyframe: bool
    candidates: List[Candidate] = field(default_factory=list)  # best first (re-ranked when re-ranking is on)
    latency_ms: float = 0.0
    global_candidates: List[Candidate] = field(default_factory=list)  # search order before re-ranking (re-ranked only)
    rerank_ms: float = 0.0  # time spent re-ranking this frame's candidates
    timings_ms: Dict[str, float] = field(default_factory=dict)  # stage -> ms (STAGES), measured stages only
    fleet_candidates: List[Candidate] = field(default_factory=list)  # other robots' keyframes (shared map), best first

    @property
    def best(self) -> Optional[Candidate]:
        return self.candidates[0] if self.candidates else None


@dataclass
class LoopClosure:
    """An accepted revisit: `query` is at the place of map keyframe `match`."""
    query: Keyframe
    match: Candidate
    verification: Verification = field(default_factory=Verification)
    sequence_score: float = float("nan")  # aligned-sequence score (NaN when sequence matching is off)
    margin: float = float("nan")  # decision score minus the best other place's (NaN when there was none)

    @property
    def score(self) -> float:
        return self.match.score


@dataclass
class Decision:
    """What the gates saw for one frame: the candidate they judged, its scores and the verdict."""
    candidate: Optional[Candidate] = None
    score: float = float("nan")  # the score loop_threshold applies to (cosine or sequence score)
    margin: float = float("nan")  # score minus the best other place's score
    verified: bool = True  # local/geometric verification passed (True when none is configured)
    supported: bool = False  # sequence support route: own cosine >= loop_threshold, score >= sequence_support
    streak: int = 0  # consecutive agreeing frames up to this one
    rejected: str = ""  # one of REJECTIONS, "" when a closure was published
    detail: str = ""  # e.g. the geometry's own reason


@dataclass
class SequencePick:
    """The best sequence end of a prepared frame, scored but not yet verified."""
    keyframe: Keyframe
    cosine: float  # its own cosine with the frame
    scores: np.ndarray  # every hypothesis's sequence score
    ends: np.ndarray  # their map positions
    best: int  # index of the pick in both


@dataclass
class PendingFrame:
    """A frame between `LoopClosureDetector.prepare` (searched, keyframe added) and `decide`."""
    query: Keyframe
    db: MapDatabase  # the map it was searched in (a replaced map closes nothing)
    found: List[Candidate]  # search order
    positions: Dict[int, int]  # candidate id -> map position
    sequence: Optional[SequencePick]
    no_candidate: str  # the rejection when nothing is picked: empty_map, too_recent or short_sequence
    query_local: Optional[LocalFeatures]
    camera: Optional[CameraModel]
    depth: Optional[np.ndarray]
    contrast: float
    frame_number: float  # its place in time, frame periods (Consistency)
    period: float  # the camera period it was prepared with (0 = unknown)
    timings_ms: Dict[str, float] = field(default_factory=dict)
    is_keyframe: bool = False
    busy_ms: float = 0.0  # time spent preparing it (the pipeline's: model included)
    descriptor: Optional[np.ndarray] = None  # its global descriptor (the fleet's shared map is searched with it)


@dataclass
class FleetResult:
    """What the fleet's shared map gave one frame (vpr_core.fleet): other robots' candidates (best first), the
    gates' verdict on the best, and the closure when one was accepted."""
    candidates: List[Candidate] = field(default_factory=list)
    decision: Decision = field(default_factory=Decision)
    closure: Optional[LoopClosure] = None
    ms: float = 0.0  # time the shared map took (search and local-feature fetch)


@dataclass
class FrameResult:
    place_match: PlaceMatch
    loop_closure: Optional[LoopClosure] = None
    decision: Decision = field(default_factory=Decision)
    fleet: Optional[FleetResult] = None  # with a shared map (map.backend milvus): loops with other robots
