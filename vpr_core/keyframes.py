"""Keyframes: what the map remembers about one (`Keyframe`), a search hit (`Candidate`), and which
frames join the map (`KeyframePolicy`): by time, by travelled distance or rotation (when odometry gives
a pose), and by novelty (not too similar to the last keyframe). Every rule is off at its neutral value."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from vpr_core.config import DetectorConfig
from vpr_core.local_features import Verification


@dataclass
class Keyframe:
    """What the map remembers about a keyframe besides its descriptor."""
    id: int
    stamp_ns: int
    frame_id: str = ""
    pose: Optional[List[float]] = None  # [x, y, z, qx, qy, qz, qw] in the map frame, when known
    local_features: str = ""  # where its local features live ("local.npz" in the map file), "" = none
    session: int = 0  # the map's session that added it (a new one starts each time a map is loaded)
    robot: str = ""  # the robot that added it (map.robot_id), "" = not named


@dataclass
class Candidate:
    """One search hit: a keyframe and its cosine similarity to the query (and, once re-ranked, how its
    local features matched the query's)."""
    keyframe: Keyframe
    score: float
    verification: Optional["Verification"] = field(default=None, compare=False)

    @property
    def id(self) -> int:
        return self.keyframe.id


def pose_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance (m) between the positions of two [x, y, z, qx, qy, qz, qw] poses."""
    return float(np.linalg.norm(np.asarray(a[:3], np.float64) - np.asarray(b[:3], np.float64)))


def pose_angle_deg(a: Sequence[float], b: Sequence[float]) -> float:
    """Rotation angle (degrees) between the orientations of two [x, y, z, qx, qy, qz, qw] poses."""
    qa = np.asarray(a[3:7], np.float64)
    qb = np.asarray(b[3:7], np.float64)
    qa, qb = qa / np.linalg.norm(qa), qb / np.linalg.norm(qb)
    return math.degrees(2.0 * math.acos(min(1.0, abs(float(np.dot(qa, qb))))))


def check_pose(pose: Optional[Sequence[float]]) -> Optional[list]:
    """A pose as 7 finite floats with a non-zero quaternion, or None; raises ValueError naming the problem."""
    if pose is None:
        return None
    p = [float(v) for v in pose]
    if len(p) != 7 or not all(math.isfinite(v) for v in p):
        raise ValueError(f"a pose is [x, y, z, qx, qy, qz, qw] of finite numbers, got {pose}")
    if np.linalg.norm(p[3:]) < 1e-9:
        raise ValueError(f"a pose's quaternion must not be zero, got {p[3:]}")
    return p


class KeyframePolicy:
    """Stateful: remembers the last keyframe's stamp, descriptor and pose."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self._stamp: Optional[int] = None
        self._desc: Optional[np.ndarray] = None
        self._pose: Optional[list] = None

    def wants(self, descriptor: np.ndarray, stamp_ns: int, pose: Optional[list]) -> bool:
        """Should this frame become a keyframe? Time gate first, then motion (with poses), then novelty."""
        c = self.cfg
        if self._stamp is None:
            return True
        if (stamp_ns - self._stamp) < c.keyframe_min_interval_s * 1e9:
            return False
        moving_rule = c.keyframe_min_distance_m > 0 or c.keyframe_min_rotation_deg > 0
        if moving_rule and pose is not None and self._pose is not None:
            moved = c.keyframe_min_distance_m > 0 and pose_distance(pose, self._pose) >= c.keyframe_min_distance_m
            turned = c.keyframe_min_rotation_deg > 0 and pose_angle_deg(pose, self._pose) >= c.keyframe_min_rotation_deg
            if not (moved or turned):
                return False
        if c.keyframe_max_similarity < 1.0:
            d = np.asarray(descriptor, np.float32).reshape(-1)
            return float(np.dot(self._desc, d) / (np.linalg.norm(d) + 1e-12)) < c.keyframe_max_similarity
        return True

    def added(self, descriptor: np.ndarray, stamp_ns: int, pose: Optional[list]) -> None:
        d = np.asarray(descriptor, np.float32).reshape(-1)
        self._stamp, self._desc = stamp_ns, d / np.linalg.norm(d)
        if pose is not None:
            self._pose = pose
