"""ROS messages <-> vpr_core types. Image decoding itself lives in vpr_core.images (no cv_bridge:
the PyPI cv-bridge is broken with numpy 2; on a full ROS install these conversions agree with it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseWithCovariance
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from vpr_core.decision import LoopClosure as CoreLoopClosure
from vpr_core.decision import PlaceMatch as CorePlaceMatch
from vpr_core.depth import decode_depth
from vpr_core.geometry import CameraModel
from vpr_core.images import decode_compressed, decode_raw, encode_raw
from vpr_core.local_features import Verification
from vpr_msgs.msg import LoopClosure, PlaceMatch


def to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def to_time(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def image_to_rgb(msg: Image, max_pixels: int = 0) -> np.ndarray:
    """RGB uint8 from a raw Image; more than max_pixels (0 = no limit) raises ImageTooLarge undecoded."""
    return decode_raw(msg.data, msg.height, msg.width, msg.encoding, msg.step, bool(msg.is_bigendian), max_pixels)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = 0) -> np.ndarray:
    """RGB uint8 from a CompressedImage; the size is read from its header first when max_pixels is set."""
    return decode_compressed(msg.data, max_pixels)


def depth_to_array(msg: Image) -> np.ndarray:
    """A depth Image (32FC1 metres / 16UC1 millimetres) as HxW; raises ImageError for other encodings."""
    return decode_depth(msg.data, msg.height, msg.width, msg.encoding, msg.step, bool(msg.is_bigendian))


def camera_model(msg: CameraInfo) -> CameraModel:
    """CameraInfo -> CameraModel; raises ValueError for an uncalibrated (all-zero K) or unsupported camera."""
    return CameraModel.from_camera_info(list(msg.k), msg.width, msg.height, list(msg.d), msg.distortion_model)


def pose7(pose: Pose) -> list:
    """geometry_msgs/Pose -> [x, y, z, qx, qy, qz, qw] (vpr_core's pose layout)."""
    p, q = pose.position, pose.orientation
    return [p.x, p.y, p.z, q.x, q.y, q.z, q.w]


def pose_msg(values: Sequence[float]) -> Pose:
    """[x, y, z, qx, qy, qz, qw] -> geometry_msgs/Pose."""
    msg = Pose()
    p, q = msg.position, msg.orientation
    p.x, p.y, p.z, q.x, q.y, q.z, q.w = (float(v) for v in values[:7])
    return msg


def rgb_to_image(rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Image:
    data, step = encode_raw(rgb, encoding)
    return Image(header=Header(stamp=to_time(stamp_ns), frame_id=frame_id), height=rgb.shape[0],
                 width=rgb.shape[1], encoding=encoding, is_bigendian=0, step=step, data=data)


def place_match_msg(pm: CorePlaceMatch) -> PlaceMatch:
    """This robot's map candidates, then (with a fleet's shared map) the other robots', told apart by robot."""
    q = pm.query
    cands = pm.candidates + pm.fleet_candidates
    return PlaceMatch(
        header=Header(stamp=to_time(q.stamp_ns), frame_id=q.frame_id), query_id=q.id,
        query_stamp=to_time(q.stamp_ns), is_keyframe=pm.is_keyframe,
        candidate_ids=[c.id for c in cands],
        candidate_stamps=[to_time(c.keyframe.stamp_ns) for c in cands],
        candidate_frame_ids=[c.keyframe.frame_id for c in cands],
        scores=[float(c.score) for c in cands], latency_ms=float(pm.latency_ms),
        session=q.session, robot=q.robot, candidate_sessions=[c.keyframe.session for c in cands],
        candidate_robots=[c.keyframe.robot for c in cands])


@dataclass
class PoseFields:
    """The relative-pose part of a LoopClosure / QueryPlace answer, from one Verification."""
    valid: bool = False
    metric: bool = False
    status: str = ""  # "" when valid, else why there is no pose
    pose: PoseWithCovariance = field(default_factory=PoseWithCovariance)
    num_inliers: int = -1  # -1: no pose was attempted
    inlier_ratio: float = 0.0
    reprojection_error_px: float = float("nan")


def pose_fields(v: Optional[Verification], no_pose_reason: str) -> PoseFields:
    """What a pose-graph back end needs from a verification: T_match_query with its 6x6 covariance when
    the pose is ok; otherwise the pose's own reason, or `no_pose_reason` when none was attempted
    ("no_camera_info", "no_local_features")."""
    result = v.pose if v is not None else None
    if result is None:
        return PoseFields(status=no_pose_reason or "not_attempted")
    out = PoseFields(num_inliers=int(result.num_inliers), inlier_ratio=float(result.inlier_ratio),
                     reprojection_error_px=float(result.reproj_error_px))
    if not result.ok:
        out.status = result.reason or "rejected"
        return out
    cov = np.asarray(result.covariance, np.float64).reshape(36)
    if not np.all(np.isfinite(cov)):  # never hand a back end a pose without a usable covariance
        out.status = "no_covariance"
        return out
    out.valid, out.metric = True, bool(result.metric)
    out.pose = PoseWithCovariance(pose=pose_msg(result.as_pose7()), covariance=[float(c) for c in cov])
    return out


def loop_closure_msg(lc: CoreLoopClosure, no_pose_reason: str = "") -> LoopClosure:
    """A LoopClosure message; `no_pose_reason` names why no pose was attempted (see pose_fields)."""
    q, m, v = lc.query, lc.match.keyframe, lc.verification
    pf = pose_fields(v, no_pose_reason)
    msg = LoopClosure(
        header=Header(stamp=to_time(q.stamp_ns), frame_id=q.frame_id), query_id=q.id,
        query_stamp=to_time(q.stamp_ns), query_frame_id=q.frame_id, match_id=m.id,
        match_stamp=to_time(m.stamp_ns), match_frame_id=m.frame_id, score=float(lc.score),
        verification_method=v.method, verified=v.verified, num_matches=v.num_matches,
        num_inliers=v.num_inliers, pose_valid=pf.valid, relative_pose=pf.pose, pose_metric=pf.metric,
        pose_status=pf.status, pose_num_inliers=pf.num_inliers, inlier_ratio=pf.inlier_ratio,
        reprojection_error_px=pf.reprojection_error_px, sequence_score=float(lc.sequence_score),
        margin=float(lc.margin), query_session=q.session, match_session=m.session, query_robot=q.robot,
        match_robot=m.robot)
    if v.fundamental is not None:
        msg.fundamental_matrix = [float(x) for x in np.asarray(v.fundamental, np.float64).reshape(9)]
        msg.fundamental_valid = True
    if v.homography is not None:
        msg.homography = [float(x) for x in np.asarray(v.homography, np.float64).reshape(9)]
        msg.homography_valid = True
    return msg
