"""~/debug_image: each processed frame beside the candidate it was judged against, with the verdict.

Off by default (node.debug_image). Keyframe thumbnails are cached as keyframes are added (bounded LRU,
node.debug_thumbnails); the picture is drawn only while someone subscribes.
"""
from __future__ import annotations

from typing import List

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from vpr_core.debug_view import DebugView, ThumbnailCache, compose
from vpr_core.decision import FrameResult
from vpr_ros.conversions import pose_fields, rgb_to_image


def describe(result: FrameResult, no_pose_reason: str) -> DebugView:
    """The text of one frame's decision: score, margin and streak, verification, verdict, pose."""
    d, q = result.decision, result.place_match.query
    lines: List[str] = [f"score {d.score:.3f}  margin {d.margin:.3f}  streak {d.streak}"]
    v = d.candidate.verification if d.candidate is not None else None
    if v is not None and v.method != "none":
        lines.append(f"{v.method}: {v.num_matches} matches" + (f", {v.num_inliers} inliers" if v.num_inliers >= 0 else "")
                     + ("" if v.verified else " (not verified)"))
    closed = result.loop_closure is not None
    lines.append("LOOP CLOSURE" if closed else f"rejected: {d.rejected}" + (f" ({d.detail})" if d.detail else ""))
    if closed:
        pf = pose_fields(result.loop_closure.verification, no_pose_reason)
        t = pf.pose.pose.position
        lines.append(f"pose: t=({t.x:.2f}, {t.y:.2f}, {t.z:.2f}){' m' if pf.metric else ' (direction)'}, "
                     f"{pf.num_inliers} inliers" if pf.valid else f"no pose: {pf.status}")
    return DebugView(q.id, d.candidate.id if d.candidate is not None else None, closed, lines)


class DebugImagePublisher:
    """Caches keyframe thumbnails as keyframes are added; draws and publishes a frame's picture only
    while ~/debug_image has a subscriber (the drawing costs ~1 ms, the cache a resize per keyframe)."""

    def __init__(self, node: Node, thumbnails: int) -> None:
        self.pub = node.create_publisher(Image, "~/debug_image", 2)
        self.cache = ThumbnailCache(thumbnails)

    def frame(self, rgb: np.ndarray, result: FrameResult, no_pose_reason: str) -> None:
        pm = result.place_match
        if pm.is_keyframe:
            self.cache.put(pm.query.id, rgb)
        if self.pub.get_subscription_count() == 0:
            return
        view = describe(result, no_pose_reason)
        match = self.cache.get(view.match_id) if view.match_id is not None else None
        self.pub.publish(rgb_to_image(compose(rgb, match, view), pm.query.stamp_ns, pm.query.frame_id))

    def reset(self) -> None:
        self.cache.clear()
