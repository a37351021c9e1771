"""The parts of the node's issue-#10 interface that need no running node: the diagnostics report,
the map markers and the topic rules of several cameras."""
from __future__ import annotations

import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from visualization_msgs.msg import Marker

from vpr_core.config import NodeConfig
from vpr_core.decision import REJECTIONS
from vpr_ros.diagnostics import STATUS_NAME, DiagnosticsReporter, Snapshot
from vpr_ros.inputs import camera_info_topic, image_topics
from vpr_ros.markers import LoopGraphMarkers


def summary(frames=0, dropped=None, rejections=None, keyframes=0, closures=0):
    return {"frames": frames, "keyframes": keyframes, "loop_closures": closures, "dropped": dropped or {},
            "rejections": rejections or {}, "latency_ms_median": 50.0, "latency_ms_p95": 90.0}


def report(reporter, t, received, latencies, **kw):
    snap = Snapshot(summary(**kw), latencies, received, kw.get("keyframes", 0), "mapping", {"pose": 2})
    status = reporter.status(snap, now_s=t)
    return status, {v.key: v.value for v in status.values}


def test_rates_counters_and_every_reason():
    r = DiagnosticsReporter("/loop_closure_node", latency_budget_ms=200.0)
    report(r, 0.0, 0, [])
    status, kv = report(r, 2.0, 20, [40.0] * 18, frames=18, keyframes=5, closures=1,
                        rejections={"below_threshold": 12, "too_recent": 5})
    assert status.name == STATUS_NAME and status.level == DiagnosticStatus.OK and status.hardware_id == "/loop_closure_node"
    assert kv["frame_rate_in_hz"] == "10.00" and kv["processing_rate_hz"] == "9.00"
    assert kv["latency_ms.median"] == "40.0" and kv["map_size"] == "5" and kv["loop_closures"] == "1"
    assert {f"rejected.{x}" for x in REJECTIONS} <= set(kv) and kv["rejected.ambiguous"] == "0"
    assert kv["rejected.below_threshold"] == "12" and kv["frames_without.pose"] == "2"
    assert kv["dropped.queue_full"] == "0", "known drop reasons are always listed"


def test_warns_on_new_drops_and_on_latency_over_budget_only_while_it_lasts():
    r = DiagnosticsReporter("n", latency_budget_ms=100.0)
    report(r, 0.0, 0, [])
    status, kv = report(r, 1.0, 10, [50.0] * 8, frames=8, dropped={"queue_full": 2, "too_large": 1})
    assert status.level == DiagnosticStatus.WARN and "3 frame(s) dropped" in status.message
    assert kv["dropped.too_large"] == "1", "a reason the pipeline adds appears as it is counted"
    status, _ = report(r, 2.0, 20, [50.0] * 8 + [300.0] * 10, frames=18, dropped={"queue_full": 2, "too_large": 1})
    assert status.level == DiagnosticStatus.WARN and "latency p95 300 ms" in status.message, status.message
    status, kv = report(r, 3.0, 20, [50.0] * 8 + [300.0] * 10, frames=18, dropped={"queue_full": 2, "too_large": 1})
    assert status.level == DiagnosticStatus.OK, "an idle period with old slow frames is not a warning"
    assert kv["processing_rate_hz"] == "0.00" and kv["latency_ms.p95"] == "90.0", "idle: the history's figures"


def test_latency_is_end_to_end_with_processing_and_queue_wait_beside_it():
    r = DiagnosticsReporter("n", latency_budget_ms=100.0)
    report(r, 0.0, 0, [])
    snap = Snapshot({**summary(frames=3), "end_to_end_ms_median": 120.0, "end_to_end_ms_p95": 150.0,
                     "queue_ms_median": 70.0, "queue_ms_p95": 90.0}, [120.0, 130.0, 150.0], 3, 0, "mapping")
    status = r.status(snap, now_s=1.0)
    kv = {v.key: v.value for v in status.values}
    assert kv["latency_ms.median"] == "130.0" and kv["processing_ms.median"] == "50.0"
    assert kv["queue_wait_ms.median"] == "70.0" and kv["queue_wait_ms.p95"] == "90.0"
    assert status.level == DiagnosticStatus.WARN and "latency p95" in status.message, "the budget applies to end to end"


def test_markers_only_when_something_changed_and_cleared_on_reset():
    stamp = Time(sec=1)
    m = LoopGraphMarkers("map")
    assert m.message([None, None], stamp) is None, "no poses: nothing to draw"
    poses = [[0, 0, 0, 0, 0, 0, 1], None, [2, 0, 0, 0, 0, 0, 1]]
    first = m.message(poses, stamp)
    (kf,) = first.markers
    assert kf.type == Marker.SPHERE_LIST and [p.x for p in kf.points] == [0, 2] and kf.header.frame_id == "map"
    assert m.message(poses, stamp) is None, "unchanged: no message"
    m.add_closure([2, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1])
    m.add_closure(None, [0, 0, 0, 0, 0, 0, 1])  # the query had no pose: no edge
    edges = {x.ns: x for x in m.message(poses, stamp).markers}["vpr_loop_closures"]
    assert edges.type == Marker.LINE_LIST and [(p.x, p.y) for p in edges.points] == [(2, 0), (0, 0)]
    m.reset()
    cleared = m.message([], stamp)
    assert [x.action for x in cleared.markers] == [Marker.DELETEALL]
    assert m.message([], stamp) is None


@pytest.mark.parametrize("image,info", [("image", "camera_info"), ("cam/image_raw", "cam/camera_info"),
                                        ("/robot/left/image_rect", "/robot/left/camera_info"),
                                        ("/image", "/camera_info"), ("cam/image/compressed", "cam/camera_info")])
def test_camera_info_beside_each_image_topic(image, info):
    assert camera_info_topic(image, "camera_info") == info


def test_image_topic_list_and_the_compatibility_alias():
    assert image_topics(NodeConfig()) == ["image"]
    assert image_topics(NodeConfig(image_topics=["a/image", " ", "b/image", "a/image"])) == ["a/image", "b/image"]
    assert image_topics(NodeConfig(image_topic="/cam/image_raw", image_topics=["a", "b"])) == ["/cam/image_raw"]
    with pytest.raises(ValueError, match="no images"):
        image_topics(NodeConfig(image_topics=[""], compressed_topic=""))
