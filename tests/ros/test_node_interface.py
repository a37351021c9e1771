"""Issue #10's node interface with the real node on loopback, in one shared run: odometry-driven
keyframes, CameraInfo and depth paired with frames, the loop closure's relative pose, several cameras,
/diagnostics, ~/markers, ~/debug_image and the services query_place / set_mode / reset_map.

The scene with a known pose comes from offline_eval.pose_views: a corridor frame (the query) and a view
of it rendered through a known motion (the keyframe), with the query's depth. The default model's
local features are 16-px cells: without depth the 5-point pose is refused (coarse_keypoints) and the
closure is published without a pose; with depth PnP gives a metric pose (bounds as measured in
tests/unit/test_pose_real.py). Tests run in file order; the reset test is last.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from offline_eval.pose_views import known_view
from vpr_core.decision import REJECTIONS
from vpr_core.geometry import CameraModel, quaternion_xyzw
from vpr_msgs.srv import QueryPlace
from vpr_ros.conversions import rgb_to_image, to_ns, to_time
from vpr_ros.diagnostics import STATUS_NAME
from vpr_ros.inputs import camera_info_topic

CAMERA = CameraModel.from_fov(60.0, 160, 120)  # corridor frames are 160x120
MOTION = ([2.0, -4.0, 1.0], [-0.2, 0.05, 0.1])  # rotation vector (deg), translation (m): T_match_query
MIN_DISTANCE_M = 0.5
CAM2_TOPIC = "cam2/image"
OVERRIDES = {
    "model.local_head": {"name": "feature_map", "stride": 16},
    "rerank.method": "mnn", "rerank.top_k": 20, "rerank.match_threshold": 0.6, "rerank.min_inliers": 30,
    "detector.sequence_length": 1, "detector.exclude_recent_change": 0.0, "detector.exclude_recent_s": 0.0,
    "detector.exclude_recent_count": 3, "detector.temporal_consistency": 1, "detector.loop_threshold": 0.5,
    "detector.keyframe_min_distance_m": MIN_DISTANCE_M,
    "node.image_topics": ["image", CAM2_TOPIC], "node.odom_topic": "odom", "node.depth_topic": "depth",
    "node.diagnostics_period_s": 0.5, "node.markers_period_s": 0.5, "node.latency_budget_ms": 1.0,
    "node.debug_image": True, "map.autoload": False, "map.autosave": False,
}


def camera_info(cam: CameraModel, frame_id: str, stamp_ns: int = 0) -> CameraInfo:
    return CameraInfo(header=Header(stamp=to_time(stamp_ns), frame_id=frame_id), width=cam.width, height=cam.height,
                      k=[float(v) for v in cam.K.reshape(9)], distortion_model="plumb_bob", d=[0.0] * 5)


def odometry(x: float, stamp_ns: int) -> Odometry:
    msg = Odometry(header=Header(stamp=to_time(stamp_ns), frame_id="odom"), child_frame_id="base_link")
    msg.pose.pose.position.x = float(x)
    msg.pose.pose.orientation.w = 1.0
    return msg


def depth_image(depth_m: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "32FC1") -> Image:
    data = depth_m.astype(np.float32) if encoding == "32FC1" else np.round(depth_m * 1000).astype(np.uint16)
    return Image(header=Header(stamp=to_time(stamp_ns), frame_id=frame_id), height=data.shape[0],
                 width=data.shape[1], encoding=encoding, is_bigendian=0, step=data.shape[1] * data.itemsize,
                 data=data.tobytes())


def rotation_error_deg(orientation, R: np.ndarray) -> float:
    q = np.array([orientation.x, orientation.y, orientation.z, orientation.w])
    return math.degrees(2 * math.acos(min(1.0, abs(float(q @ quaternion_xyzw(R))))))


def check_known_pose(pose, view) -> None:
    """T_match_query against the rendered motion: the bounds tests/unit/test_pose_real.py measured."""
    t = np.array([pose.position.x, pose.position.y, pose.position.z])
    assert rotation_error_deg(pose.orientation, view.R) < 4.0
    cos = float(t @ view.t) / (np.linalg.norm(t) * np.linalg.norm(view.t))
    assert math.degrees(math.acos(np.clip(cos, -1, 1))) < 20.0
    assert abs(np.linalg.norm(t) / np.linalg.norm(view.t) - 1) < 0.35


def check_covariance(cov) -> None:
    c = np.asarray(cov, np.float64).reshape(6, 6)
    assert np.all(np.isfinite(c)) and np.allclose(c, c.T) and np.all(np.diag(c) > 0)


class Rig:
    """Sends one camera frame with its side streams (CameraInfo, odometry, depth) and waits for its
    PlaceMatch; remembers what was sent."""

    def __init__(self, client, node) -> None:
        self.client, self.node = client, node
        self.sent = []  # (x or None, PlaceMatch)

    def frame(self, rgb, x=None, depth=None, frame_id="camera", topic="image"):
        c = self.client
        stamp = c.next_stamp()
        c.publisher(CameraInfo, camera_info_topic(topic, "camera_info")).publish(
            camera_info(CAMERA, frame_id or "camera", stamp))
        if x is not None:
            c.publisher(Odometry, "odom").publish(odometry(x, stamp))
        if depth is not None:
            c.publisher(Image, "depth").publish(depth_image(depth, stamp, frame_id))
        time.sleep(0.1)  # side streams first, as a driver stamps them together
        pm = c.send(c.image_msg(rgb, "rgb8", frame_id, stamp), self.node, topic=topic)
        self.sent.append((x, pm))
        return pm


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interface")


@pytest.fixture(scope="module")
def node(start_node, workdir, images):
    run = start_node(workdir, "interface", OVERRIDES)
    yield run
    assert run.stop() == 0, f"node exited with an error:\n{run.log_tail()}"


@pytest.fixture(scope="module")
def stream(node, client, images):
    """Map 8 frames 1 m apart, the rendered view, 3 more; then stand still and revisit the view's place
    with and without depth; a frame without odometry; a second camera and an empty frame id."""
    rig = Rig(client, node)
    s = SimpleNamespace(rig=rig)
    s.view = known_view("corridor", images.query(100), CAMERA, *MOTION)
    s.mapped = [rig.frame(images.database(i), x=float(i)) for i in range(8)]
    s.view_kf = rig.frame(s.view.match, x=8.0)
    s.after = [rig.frame(images.database(20 + i), x=9.0 + i) for i in range(3)]
    s.posed = rig.frame(s.view.query, x=11.1, depth=s.view.depth_query)
    s.unposed = rig.frame(s.view.query, x=11.2)
    s.no_odom = rig.frame(images.database(30))
    s.cam2 = rig.frame(images.database(40), x=12.0, frame_id="cam2", topic=CAM2_TOPIC)
    s.blank = rig.frame(images.database(41), x=13.0, frame_id="")
    client.settle()
    return s


def closure_for(client, pm):
    found = client.closures_for(to_ns(pm.query_stamp))
    assert len(found) == 1, f"expected one loop closure for frame {pm.query_id}, got {len(found)}"
    return found[0]


# ---- keyframes from odometry -------------------------------------------------------------------------
def test_keyframes_follow_travelled_distance(stream):
    assert all(pm.is_keyframe for pm in stream.mapped + [stream.view_kf] + stream.after), "1 m apart: keyframes"
    assert not stream.posed.is_keyframe and not stream.unposed.is_keyframe, \
        f"moved {11.2 - 11.0:.1f} m < keyframe_min_distance_m {MIN_DISTANCE_M}: not keyframes"
    assert stream.cam2.is_keyframe and stream.blank.is_keyframe


# ---- the loop closure message ------------------------------------------------------------------------------
def test_closure_with_depth_carries_a_metric_pose(client, stream):
    lc = closure_for(client, stream.posed)
    assert lc.match_id == stream.view_kf.query_id, "the query revisits the rendered view's place"
    assert lc.pose_valid and lc.pose_metric and lc.pose_status == ""
    check_known_pose(lc.relative_pose.pose, stream.view)
    check_covariance(lc.relative_pose.covariance)
    assert lc.pose_num_inliers >= 20 and 0 < lc.inlier_ratio <= 1 and 0 <= lc.reprojection_error_px < 10
    assert lc.verification_method == "mnn" and lc.verified and lc.num_matches >= 30
    assert math.isnan(lc.sequence_score), "sequence matching is off"
    assert math.isfinite(lc.margin)


def test_closure_without_depth_says_why_it_has_no_pose(client, stream):
    lc = closure_for(client, stream.unposed)
    assert lc.match_id == stream.view_kf.query_id
    assert not lc.pose_valid and lc.pose_status == "coarse_keypoints", lc.pose_status


# ---- several cameras -------------------------------------------------------------------------------------
def test_each_camera_keeps_its_frame_id(stream):
    assert stream.cam2.header.frame_id == "cam2"
    assert stream.blank.header.frame_id == "camera", "an empty frame id becomes node.default_frame_id"
    assert stream.posed.header.frame_id == "camera"


def test_each_camera_has_its_own_camera_info(client, stream):
    """cam2's intrinsics come from cam2/camera_info: a query in frame cam2 gets a pose attempt, one in an
    unknown frame (and no camera.K) is told that intrinsics are missing."""
    answers = {}
    for frame_id in ("cam2", "cam9"):
        msg = rgb_to_image(stream.view.query, client.next_stamp(), frame_id)
        answers[frame_id] = client.query_place(QueryPlace.Request(image=msg, k=1))
    assert answers["cam2"].success and answers["cam2"].pose_status == "coarse_keypoints", answers["cam2"].message
    assert answers["cam9"].success and answers["cam9"].pose_status == "no_camera_info", answers["cam9"].message


# ---- /diagnostics ------------------------------------------------------------------------------------------
def values(array) -> dict:
    (status,) = [s for s in array.status if s.name == STATUS_NAME]
    return {kv.key: kv.value for kv in status.values} | {"_level": status.level, "_message": status.message}


def test_diagnostics_report_every_counter(client, stream):
    n = len(stream.rig.sent)
    first = values(client.diagnostics[0])
    d = values(client.wait_for(client.diagnostics, lambda a: values(a)["frames_processed"] == str(n),
                               what=f"/diagnostics with {n} frames processed"))
    assert int(first["frames_processed"]) < n, "counts move"
    for reason in REJECTIONS:
        assert f"rejected.{reason}" in d, f"rejected.{reason} missing: dashboards must see every reason"
    for key in ("dropped.queue_full", "dropped.bad_image", "frame_rate_in_hz", "processing_rate_hz",
                "latency_ms.median", "latency_ms.p95", "processing_ms.median", "queue_wait_ms.median",
                "map_size", "keyframes", "loop_closures", "mode"):
        assert key in d, key
    # latency counts from the image's arrival: it includes the processing of the same frames
    assert float(d["latency_ms.p95"]) >= float(d["queue_wait_ms.median"])
    keyframes = sum(pm.is_keyframe for _, pm in stream.rig.sent)
    assert int(d["map_size"]) == int(d["keyframes"]) == keyframes
    assert int(d["loop_closures"]) == len(client.loop_closures)
    assert sum(int(d[f"rejected.{r}"]) for r in REJECTIONS) + int(d["loop_closures"]) == n, \
        "every processed frame is a closure or a rejection with its reason"
    assert int(d["frames_received"]) == n and d["mode"] == "mapping"
    assert int(d["frames_without.pose"]) == 1, "only the frame sent without odometry"
    assert int(d["frames_without.depth"]) == n - 1, "only one frame came with depth"
    assert d["input.odometry"] == "odom" and "cam2/camera_info" in d["input.camera_info"]


def test_diagnostics_warn_on_latency_and_recover_when_idle(client, stream):
    """latency_budget_ms is 1 ms here: a period with frames warns; an idle period is OK again."""
    warned = [values(a) for a in client.diagnostics if values(a)["_level"] == DiagnosticStatus.WARN]
    assert warned and "latency p95" in warned[0]["_message"], "a period with frames over budget must WARN"
    idle = values(client.wait_for(client.diagnostics, lambda a: values(a)["processing_rate_hz"] == "0.00",
                                  after=len(client.diagnostics), what="an idle diagnostics period"))
    assert idle["_level"] == DiagnosticStatus.OK, idle["_message"]


# ---- ~/markers, ~/debug_image ---------------------------------------------------------------------------
def test_markers_show_keyframes_and_loop_edges(client, stream):
    posed_kf_x = sorted(x for x, pm in stream.rig.sent if pm.is_keyframe and x is not None)

    def complete(array) -> bool:
        kinds = {m.ns: m for m in array.markers}
        kf = kinds.get("vpr_keyframes")
        return kf is not None and len(kf.points) == len(posed_kf_x) and "vpr_loop_closures" in kinds

    array = client.wait_for(client.markers, complete, what="markers with every posed keyframe and loop edges")
    kinds = {m.ns: m for m in array.markers}
    kf, edges = kinds["vpr_keyframes"], kinds["vpr_loop_closures"]
    assert kf.type == Marker.SPHERE_LIST and kf.header.frame_id == "map"
    assert sorted(round(p.x, 3) for p in kf.points) == posed_kf_x
    assert edges.type == Marker.LINE_LIST and len(edges.points) % 2 == 0
    pairs = {(round(a.x, 3), round(b.x, 3)) for a, b in zip(edges.points[::2], edges.points[1::2])}
    assert (11.1, 8.0) in pairs, f"no edge from the revisit (x 11.1) to the rendered view (x 8): {pairs}"


def test_debug_image_shows_query_beside_match(client, stream):
    img = client.wait_for(client.debug_images, lambda m: to_ns(m.header.stamp) == to_ns(stream.posed.query_stamp),
                          what="the debug image of the posed frame")
    assert img.encoding == "rgb8" and img.width == 2 * 240 and img.height > 180
    assert img.header.frame_id == "camera"


# ---- ~/query_place ------------------------------------------------------------------------------------------
def test_query_place_finds_the_place_and_its_stored_pose(client, stream):
    msg = rgb_to_image(stream.view.query, client.next_stamp(), "camera")
    res = client.query_place(QueryPlace.Request(image=msg, k=3))
    assert res.success, res.message
    assert list(res.ids)[0] == stream.view_kf.query_id and len(res.ids) == 3
    assert list(res.num_matches) == sorted(res.num_matches, reverse=True), "re-ranked: best local match first"
    n = len(res.ids)
    assert len(res.stamps) == len(res.frame_ids) == len(res.stored_poses) == len(res.stored_pose_valid) == n
    assert len(res.num_matches) == len(res.num_inliers) == n
    assert res.stored_pose_valid[0] and res.stored_poses[0].position.x == pytest.approx(8.0)
    assert to_ns(res.stamps[0]) == to_ns(stream.view_kf.query_stamp) and res.frame_ids[0] == "camera"
    assert res.num_matches[0] >= 30, "re-ranked: mutual matches counted"
    assert not res.pose_valid and res.pose_status == "coarse_keypoints"


def test_query_place_with_depth_and_camera_info_gives_the_metric_pose(client, stream):
    stamp = client.next_stamp()
    req = QueryPlace.Request(image=rgb_to_image(stream.view.query, stamp, "somewhere"), k=2,
                             camera_info=camera_info(CAMERA, "somewhere"),
                             depth=depth_image(stream.view.depth_query, stamp, "somewhere", "16UC1"))
    res = client.query_place(req)
    assert res.success and res.pose_valid and res.pose_metric and res.pose_status == "", res.message
    check_known_pose(res.relative_pose.pose, stream.view)
    check_covariance(res.relative_pose.covariance)


@pytest.mark.parametrize("case", ["k0", "corrupt", "encoding", "camera_info", "depth"])
def test_query_place_refuses_bad_requests(client, stream, node, case):
    img = rgb_to_image(stream.view.query, client.next_stamp(), "camera")
    req = QueryPlace.Request(image=img, k=1)
    if case == "k0":
        req.k = 0
    elif case == "corrupt":
        req.image.data = bytes(req.image.data)[:100]
    elif case == "encoding":
        req.image.encoding = "no_such_encoding"
    elif case == "camera_info":
        req.camera_info = CameraInfo(width=160, height=120, k=[0.0] * 9)
    else:
        req.depth = Image(width=160, height=120, encoding="rgb8", step=480, data=bytes(160 * 120 * 3))
    res = client.query_place(req)
    expected = {"k0": "k must be >= 1", "corrupt": "image could not be decoded", "encoding": "unsupported image encoding",
                "camera_info": "camera_info is not usable", "depth": "unsupported depth encoding"}[case]
    assert not res.success and expected in res.message, res.message
    assert not res.ids and node.alive()


# ---- ~/set_mode ------------------------------------------------------------------------------------------------
def test_set_mode_switches_between_mapping_and_localization(client, stream, images):
    rig = stream.rig
    res = client.set_mode("localization")
    assert res.success and res.mode == "localization", res.message
    assert not rig.frame(images.database(50), x=30.0).is_keyframe, "localization adds no keyframe"
    bad = client.set_mode("exploring")
    assert not bad.success and bad.mode == "localization" and "unknown mode" in bad.message
    res = client.set_mode("mapping")
    assert res.success and res.mode == "mapping" and "was localization" in res.message
    assert rig.frame(images.database(51), x=40.0).is_keyframe


# ---- ~/reset_map (last: it empties the map) ----------------------------------------------------------------------
def test_reset_map_forgets_every_keyframe(client, stream, images):
    rig = stream.rig
    keyframes = sum(pm.is_keyframe for _, pm in rig.sent)
    last_id = max(pm.query_id for _, pm in rig.sent)
    markers_before = len(client.markers)
    res = client.reset_map()
    assert res.success and res.num_keyframes_before == keyframes, res.message
    empty = client.query_place(QueryPlace.Request(image=rgb_to_image(stream.view.query, client.next_stamp(), "camera"), k=1))
    assert not empty.success and "map is empty" in empty.message
    pm = rig.frame(images.database(0), x=50.0)
    assert pm.is_keyframe and not pm.candidate_ids and pm.query_id > last_id, "ids continue after a reset"
    client.wait_for(client.markers, lambda a: any(m.action == Marker.DELETEALL for m in a.markers),
                    after=markers_before, what="markers cleared after the reset")
    client.wait_for(client.diagnostics, lambda a: values(a)["map_size"] == "1", what="map_size 1 after the reset")
