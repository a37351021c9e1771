"""ROS messages <-> vpr_core types. Image decoding itself lives in vpr_core.images (no cv_bridge:
the PyPI cv-bridge is broken with numpy 2; on a full ROS install these conversions agree with it)."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from vpr_core.detector import LoopClosure as CoreLoopClosure
from vpr_core.detector import PlaceMatch as CorePlaceMatch
from vpr_core.images import decode_compressed, decode_raw, encode_raw
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


def rgb_to_image(rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Image:
    data, step = encode_raw(rgb, encoding)
    return Image(header=Header(stamp=to_time(stamp_ns), frame_id=frame_id), height=rgb.shape[0],
                 width=rgb.shape[1], encoding=encoding, is_bigendian=0, step=step, data=data)


def place_match_msg(pm: CorePlaceMatch) -> PlaceMatch:
    q = pm.query
    return PlaceMatch(
        header=Header(stamp=to_time(q.stamp_ns), frame_id=q.frame_id), query_id=q.id,
        query_stamp=to_time(q.stamp_ns), is_keyframe=pm.is_keyframe,
        candidate_ids=[c.id for c in pm.candidates],
        candidate_stamps=[to_time(c.keyframe.stamp_ns) for c in pm.candidates],
        candidate_frame_ids=[c.keyframe.frame_id for c in pm.candidates],
        scores=[float(c.score) for c in pm.candidates], latency_ms=float(pm.latency_ms))


def loop_closure_msg(lc: CoreLoopClosure) -> LoopClosure:
    q, m, v = lc.query, lc.match.keyframe, lc.verification
    msg = LoopClosure(
        header=Header(stamp=to_time(q.stamp_ns), frame_id=q.frame_id), query_id=q.id,
        query_stamp=to_time(q.stamp_ns), query_frame_id=q.frame_id, match_id=m.id,
        match_stamp=to_time(m.stamp_ns), match_frame_id=m.frame_id, score=float(lc.score),
        verification_method=v.method, verified=v.verified, num_matches=v.num_matches,
        num_inliers=v.num_inliers, pose_valid=v.relative_pose is not None)
    if v.relative_pose is not None:
        p = msg.relative_pose.pose
        p.position.x, p.position.y, p.position.z = v.relative_pose[:3]
        p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = v.relative_pose[3:7]
    if v.fundamental is not None:
        msg.fundamental_matrix = [float(x) for x in np.asarray(v.fundamental, np.float64).reshape(9)]
        msg.fundamental_valid = True
    if v.homography is not None:
        msg.homography = [float(x) for x in np.asarray(v.homography, np.float64).reshape(9)]
        msg.homography_valid = True
    return msg
