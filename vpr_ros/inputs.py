"""Side inputs of each camera frame: odometry pose, CameraInfo intrinsics and aligned depth.

Executor callbacks store them; the worker asks `for_frame(stamp, frame_id)` when it processes a frame.
CameraInfo and depth are matched to a frame by header.frame_id (REP 104: an image, its CameraInfo and
depth aligned to it share the frame id); odometry by stamp alone. The odometry pose is the robot's
(its child frame), given to every camera as is: camera extrinsics are not applied, so stored keyframe
poses and markers are body poses in the odometry frame.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from vpr_core.config import NodeConfig
from vpr_core.geometry import CameraModel
from vpr_core.images import ImageError
from vpr_core.keyframes import check_pose
from vpr_ros.conversions import camera_model, depth_to_array, pose7, to_ns
from vpr_ros.sync import StampBuffer, seconds_to_ns

# What a frame can lack, counted when the input is configured but nothing fitting arrived (diagnostics)
MISSING = ("pose", "depth", "camera_info")


@dataclass
class FrameInputs:
    pose: Optional[list] = None  # odometry [x, y, z, qx, qy, qz, qw] nearest the frame's stamp
    camera: Optional[CameraModel] = None  # from the CameraInfo of the frame's frame_id
    depth: Optional[np.ndarray] = None  # HxW aligned depth (float metres or uint16 millimetres)


def image_topics(cfg: NodeConfig) -> List[str]:
    """The Image topics to subscribe: `image_topic` alone when set (compatibility), else `image_topics`,
    without blanks and duplicates."""
    topics = [cfg.image_topic] if cfg.image_topic else list(cfg.image_topics)
    out = list(dict.fromkeys(t.strip() for t in topics if t.strip()))
    if not out and not cfg.compressed_topic:
        raise ValueError("node.image_topics is empty and node.compressed_topic is '': the node would see no "
                         "images; list at least one sensor_msgs/Image topic")
    return out


def camera_info_topic(image_topic: str, name: str) -> str:
    """CameraInfo beside an image topic (image_transport's rule): `cam/image_raw` -> `cam/camera_info`,
    `image` -> `camera_info`; a `/compressed` transport suffix belongs to the image topic."""
    base = image_topic[:-len("/compressed")] if image_topic.endswith("/compressed") else image_topic
    namespace = base.rsplit("/", 1)[0] if "/" in base else ""
    return f"{namespace}/{name}" if namespace or base.startswith("/") else name


class SensorInputs:
    """Subscribes the side streams named in `node.*` and pairs them with frames."""

    def __init__(self, node: Node, cfg: NodeConfig, image_topics: List[str]) -> None:
        self.cfg, self.log = cfg, node.get_logger()
        self.missing: Counter = Counter()  # MISSING -> frames without it
        self.odom: Optional[StampBuffer] = StampBuffer(cfg.odom_buffer) if cfg.odom_topic else None
        self.depth: Dict[str, StampBuffer] = {}  # frame id -> depth Image messages (decoded when paired)
        self.cameras: Dict[str, Tuple[tuple, CameraModel]] = {}  # frame id -> (CameraInfo fields, model)
        self.info_topics: List[str] = []
        if cfg.camera_info_topic:
            sources = image_topics + ([cfg.compressed_topic] if cfg.compressed_topic else [])
            self.info_topics = list(dict.fromkeys(camera_info_topic(t, cfg.camera_info_topic) for t in sources))
            for topic in self.info_topics:
                node.create_subscription(CameraInfo, topic, self._on_camera_info, qos_profile_sensor_data)
        if cfg.odom_topic:
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)  # matches any publisher
            node.create_subscription(Odometry, cfg.odom_topic, self._on_odom, qos)
        if cfg.depth_topic:
            node.create_subscription(Image, cfg.depth_topic, self._on_depth, qos_profile_sensor_data)

    def _frame_id(self, header) -> str:
        return header.frame_id or self.cfg.default_frame_id

    # ---- callbacks (executor) ----------------------------------------------------------------
    def _on_camera_info(self, msg: CameraInfo) -> None:
        frame_id = self._frame_id(msg.header)
        key = (tuple(msg.k), tuple(msg.d), msg.distortion_model, msg.width, msg.height)
        known = self.cameras.get(frame_id)
        if known is not None and known[0] == key:
            return
        try:
            self.cameras[frame_id] = (key, camera_model(msg))
        except ValueError as exc:
            self.log.warning(f"ignoring CameraInfo of frame '{frame_id}': {exc}", throttle_duration_sec=10.0)

    def _on_odom(self, msg: Odometry) -> None:
        try:
            pose = check_pose(pose7(msg.pose.pose))
        except ValueError as exc:
            self.log.warning(f"ignoring odometry on {self.cfg.odom_topic}: {exc}", throttle_duration_sec=10.0)
            return
        self.odom.add(to_ns(msg.header.stamp), pose)

    def _on_depth(self, msg: Image) -> None:
        frame_id = self._frame_id(msg.header)
        buf = self.depth.get(frame_id)
        if buf is None:
            buf = self.depth.setdefault(frame_id, StampBuffer(self.cfg.depth_buffer))
        buf.add(to_ns(msg.header.stamp), msg)

    # ---- lookups (worker, services) ------------------------------------------------------------
    def camera_for(self, frame_id: str) -> Optional[CameraModel]:
        known = self.cameras.get(frame_id)
        return known[1] if known is not None else None

    def clear(self) -> None:
        """Forget buffered odometry and depth (their stamps are from another time line, e.g. a new bag)."""
        if self.odom is not None:
            self.odom.clear()
        for buf in list(self.depth.values()):
            buf.clear()

    def for_frame(self, stamp_ns: int, frame_id: str) -> FrameInputs:
        """Pose, intrinsics and depth for one frame; counts what a configured input failed to give."""
        c = self.cfg
        out = FrameInputs(camera=self.camera_for(frame_id))
        if c.camera_info_topic and out.camera is None:
            self.missing["camera_info"] += 1
        if self.odom is not None:
            hit = self.odom.nearest(stamp_ns, seconds_to_ns(c.odom_max_dt_s), c.sync_wait_s)
            out.pose = hit[1] if hit is not None else None
            if out.pose is None:
                self.missing["pose"] += 1
        if c.depth_topic:
            out.depth = self._depth(stamp_ns, frame_id)
            if out.depth is None:
                self.missing["depth"] += 1
        return out

    def _depth(self, stamp_ns: int, frame_id: str) -> Optional[np.ndarray]:
        buf = self.depth.get(frame_id)
        if buf is None:
            if self.depth:
                self.log.warning(f"depth on {self.cfg.depth_topic} carries frame ids {sorted(self.depth)} but this "
                                 f"image '{frame_id}': depth aligned to an image must carry the image's frame_id",
                                 throttle_duration_sec=10.0)
            return None
        hit = buf.nearest(stamp_ns, seconds_to_ns(self.cfg.depth_max_dt_s), self.cfg.sync_wait_s)
        if hit is None:
            return None
        try:
            return depth_to_array(hit[1])
        except ImageError as exc:
            self.log.warning(f"ignoring depth image of frame '{frame_id}': {exc}", throttle_duration_sec=10.0)
            return None
