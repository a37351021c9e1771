"""The loop-closure node: camera images in, vpr_msgs/PlaceMatch and LoopClosure out.

The executor thread only converts and enqueues; a model worker decodes, runs the model, searches
and adds the keyframe; a decision worker re-ranks, verifies, decides and publishes, so the next
frame's model pass never waits for this frame's verification. The input queue is bounded: when the
model falls behind, the oldest frame is dropped and counted. Bad frames are dropped and counted by
reason, never fatal; oversized frames are refused before decoding; the map survives restarts and
crashes (vpr_ros.map_service). Issue #10's interface lives in its own modules: side inputs (odometry, CameraInfo, depth) in
vpr_ros.inputs, services in vpr_ros.services, /diagnostics, ~/markers and ~/debug_image in
vpr_ros.diagnostics, vpr_ros.markers and vpr_ros.debug_image; a MultiThreadedExecutor lets
relocalisation run beside the image callbacks.
"""
from __future__ import annotations

import faulthandler
import json
import queue
import signal
import sys
import threading
import time
import weakref
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from vpr_core.config import ConfigError
from vpr_core.frame_gaps import GapEstimator
from vpr_core.map_paths import MapPathError
from vpr_core.pipeline import PlaceRecognizer, drop_reason
from vpr_msgs.msg import LoopClosure, PlaceMatch
from vpr_msgs.srv import LoadMap, SaveMap
from vpr_ros.conversions import (compressed_to_rgb, image_to_rgb, loop_closure_msg, place_match_msg, to_ns)
from vpr_ros.debug_image import DebugImagePublisher
from vpr_ros.diagnostics import DiagnosticsReporter, Snapshot, retry
from vpr_ros.inputs import SensorInputs, image_topics
from vpr_ros.map_service import MapFiles
from vpr_ros.markers import LoopGraphMarkers
from vpr_ros.parameters import declare_config, parameter_changes
from vpr_ros.qos import subscription_qos
from vpr_ros.services import LoopClosureServices, guarded, no_pose_reason

Frame = tuple  # (decode: Callable[[], np.ndarray], stamp_ns: int, frame_id: str, arrival: perf_counter s)
MAX_STREAMS = 64  # (input, frame id) streams whose stamp gaps are tracked for the lost-frame estimate


class LoopClosureNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("loop_closure_node", **kwargs)
        self.cfg = declare_config(self, getattr(self, "_parameter_overrides", {}))
        self.recognizer = PlaceRecognizer(self.cfg)
        rr = self.cfg.rerank
        self.get_logger().info(f"model {self.cfg.model.name}: {self.recognizer.extractor.dim}-D descriptors on "
                               f"{self.recognizer.extractor.device}; map index {self.cfg.map.index}"
                               f"{self._gpu_note()}; re-ranking "
                               + (f"{rr.method} of the top {rr.top_k}, closures need >= {rr.min_inliers} "
                                  f"{'inliers' if rr.method == 'degensac' else 'mutual matches'}"
                                  if rr.method != "none" else "off"))
        self.maps = MapFiles(self.recognizer, self.cfg.map, self.get_logger())
        self.maps.start()  # stale temporaries removed, map autoloaded (or moved aside), ids made durable
        reliable = QoSProfile(depth=100)
        n = self.cfg.node
        self.pub_match = self.create_publisher(PlaceMatch, n.place_match_topic, reliable)
        self.pub_closure = self.create_publisher(LoopClosure, n.loop_closure_topic, reliable)
        qos = subscription_qos(n.qos, n.queue_size)
        self._gaps: Dict[Tuple[str, str], GapEstimator] = {}  # (input, frame id) -> stamp-gap estimator
        topics = image_topics(n)
        for topic in topics:
            self.create_subscription(Image, topic, self._on_image, qos)
        if n.compressed_topic:
            self.create_subscription(CompressedImage, n.compressed_topic, self._on_compressed, qos)
        self.create_service(SaveMap, "~/save_map", guarded(self.maps.handle_save, self.get_logger()))
        self.create_service(LoadMap, "~/load_map", guarded(self.maps.handle_load, self.get_logger()))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.sensors = SensorInputs(self, n, topics)
        self._received = 0  # frames that reached a callback (diagnostics: rate in)
        self._setup_interface(topics)
        self._queue: "queue.Queue[Optional[Frame]]" = queue.Queue(maxsize=max(1, n.queue_size))
        # prepared frames (model, search, keyframe done) waiting for re-ranking and the decision; when
        # full, the model worker waits, so frames back up (and are dropped, counted) only at the input
        self._decisions: "queue.Queue[Optional[tuple]]" = queue.Queue(maxsize=max(1, n.queue_size))
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="vpr_model", daemon=True)
        self._decider = threading.Thread(target=self._decide, name="vpr_decide", daemon=True)
        self._worker.start()
        self._decider.start()

    # ---- input -------------------------------------------------------------------------------
    def _gpu_note(self) -> str:
        db = self.recognizer.db
        return f" (searched on the GPU, {db.gpu_backend})" if db.on_gpu else ""

    def _stamp(self, header, stream: str) -> int:
        ns = to_ns(header.stamp)
        if ns > 0:  # frames that never arrived show as gaps in a camera's stamps
            key = (stream, header.frame_id)
            gaps = self._gaps.get(key)
            if gaps is None and len(self._gaps) < MAX_STREAMS:
                gaps = self._gaps[key] = GapEstimator(self.cfg.node.loss_gap_factor, self.cfg.node.loss_window)
            if gaps is not None:
                self.recognizer.count_lost(gaps.observe(ns))
        return ns if ns > 0 else self.get_clock().now().nanoseconds

    def _on_image(self, msg: Image) -> None:
        limit = self.cfg.node.max_image_pixels
        arrival = time.perf_counter()  # latency is counted from here: queue wait and decode included
        self._enqueue((lambda: image_to_rgb(msg, limit), self._stamp(msg.header, "raw"), msg.header.frame_id,
                       arrival))

    def _on_compressed(self, msg: CompressedImage) -> None:
        limit = self.cfg.node.max_image_pixels
        arrival = time.perf_counter()
        self._enqueue((lambda: compressed_to_rgb(msg, limit), self._stamp(msg.header, "compressed"),
                       msg.header.frame_id, arrival))

    def _enqueue(self, frame: Frame) -> None:
        self._received += 1
        while True:
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # drop the oldest: the newest frame is the most useful
                    count = self.recognizer.drop("queue_full")
                    self.get_logger().warning(f"model is behind: dropped oldest frame ({count} so far); "
                                              f"raise node.queue_size or lower the camera rate",
                                              throttle_duration_sec=5.0)
                except queue.Empty:
                    pass

    # ---- processing: the model's worker prepares frames, the decision worker finishes them -------
    def _work(self) -> None:
        """Decode, model, search, keyframe: the next frame starts while the last one is re-ranked."""
        while not self._stop.is_set():
            try:
                frame = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if frame is None:
                break
            prepared = self._prepare(*frame)
            if prepared is not None:
                self._decisions.put(prepared)  # blocks while the decision worker is a queue behind
        self._decisions.put(None)

    def _decide(self) -> None:
        """Re-rank, verify, decide and publish, in the order the frames were prepared."""
        while True:
            item = self._decisions.get()
            if item is None:
                break
            self._finish(*item)

    def _prepare(self, decode: Callable[[], np.ndarray], stamp_ns: int, frame_id: str,
                 arrival: float) -> Optional[tuple]:
        try:
            t_decode = time.perf_counter()
            waited_ms = (t_decode - arrival) * 1e3
            rgb = decode()
            self.recognizer.record_stage("decode", (time.perf_counter() - t_decode) * 1e3)
            frame_id = frame_id or self.cfg.node.default_frame_id
            side = self.sensors.for_frame(stamp_ns, frame_id)  # odometry pose, intrinsics, depth
            pending = self.recognizer.prepare(rgb, stamp_ns, frame_id, pose=side.pose, camera=side.camera,
                                              depth=side.depth)
        except Exception as exc:  # never let one frame kill the node: drop it, counted by reason
            self._dropped(exc, stamp_ns)
            return None
        return pending, rgb, side, arrival, waited_ms

    def _dropped(self, exc: BaseException, stamp_ns: int) -> None:
        reason = drop_reason(exc)
        count = self.recognizer.drop(reason)
        why = str(exc).strip() if reason != "error" else f"{type(exc).__name__}: {exc}"
        self.get_logger().warning(f"dropped frame at {stamp_ns} ns ({reason}, {count} so far): {why}",
                                  throttle_duration_sec=2.0)

    def _finish(self, pending, rgb: np.ndarray, side, arrival: float, waited_ms: float) -> None:
        try:
            result = self.recognizer.finish(pending)
        except Exception as exc:  # the keyframe is stored; the frame's match is lost, counted
            self._dropped(exc, pending.query.stamp_ns)
            return
        if not self.context.ok():  # shutting down: the map keeps the frame, nobody is listening
            return
        # PlaceMatch.latency_ms: image arrival -> this publish (queue wait, decode and processing)
        result.place_match.latency_ms = (time.perf_counter() - arrival) * 1e3
        self.recognizer.record_delivery(result.place_match.latency_ms, waited_ms)
        self.pub_match.publish(place_match_msg(result.place_match))
        no_pose = no_pose_reason(self.recognizer, side.camera)
        if self.debug is not None:
            self.debug.frame(rgb, result, no_pose)
        if result.fleet is not None and result.fleet.closure is not None:  # a loop with another robot's keyframe
            fc = result.fleet.closure
            self.pub_closure.publish(loop_closure_msg(fc, no_pose))
            self.get_logger().info(f"fleet loop closure: frame {fc.query.id} <-> robot {fc.match.keyframe.robot}'s "
                                   f"keyframe {fc.match.id} (session {fc.match.keyframe.session}, score {fc.score:.3f})")
        if result.loop_closure is not None:
            lc = result.loop_closure
            self.pub_closure.publish(loop_closure_msg(lc, no_pose))
            self.markers.add_closure(lc.query.pose, lc.match.keyframe.pose)
            v = lc.verification
            checked = "" if v.method == "none" else (f", {v.method}: {v.num_matches} matches"
                                                     + (f", {v.num_inliers} inliers" if v.num_inliers >= 0 else ""))
            self.get_logger().info(f"loop closure: frame {lc.query.id} <-> keyframe {lc.match.id} "
                                   f"(score {lc.score:.3f}{checked})")

    # ---- issue #10: services, diagnostics, markers, debug image ---------------------------------
    def _setup_interface(self, topics) -> None:
        n = self.cfg.node
        LoopClosureServices(self, self.recognizer, self.sensors, self._on_map_reset)
        self.debug = DebugImagePublisher(self, n.debug_thumbnails) if n.debug_image else None
        self.diagnostics = DiagnosticsReporter(self.get_fully_qualified_name(), n.latency_budget_ms)
        self.markers = LoopGraphMarkers(n.map_frame)
        self._marked_db = weakref.ref(self.recognizer.db)  # a map swapped (load, reset) clears the markers
        if n.diagnostics_period_s > 0:
            self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(n.diagnostics_period_s, self._publish_diagnostics)
        if n.markers_period_s > 0:
            self.pub_markers = self.create_publisher(MarkerArray, "~/markers", QoSProfile(depth=2))
            self.create_timer(n.markers_period_s, self._publish_markers)
        self._inputs = {"input.images": ", ".join(topics), "input.camera_info": ", ".join(self.sensors.info_topics),
                        "input.odometry": n.odom_topic, "input.depth": n.depth_topic}
        self.get_logger().info("inputs: " + "; ".join(f"{k[6:]} {v or 'off'}" for k, v in self._inputs.items()))

    def _on_map_reset(self) -> None:
        self.markers.reset()
        if self.debug is not None:
            self.debug.reset()

    def _publish_diagnostics(self) -> None:
        try:
            rec = self.recognizer
            snap = Snapshot(retry(rec.stats.summary), retry(lambda: list(rec.stats.delivery_ms or rec.stats.latencies_ms)),
                            self._received,
                            len(rec.db), rec.mode, retry(lambda: dict(self.sensors.missing)), self._inputs,
                            fleet=rec.shared.stats if rec.shared is not None else None)
            self.pub_diagnostics.publish(self.diagnostics.array(snap, self.get_clock().now().to_msg()))
        except Exception as exc:  # a report must never take the node down
            self.get_logger().error(f"diagnostics failed: {type(exc).__name__}: {exc}", throttle_duration_sec=30.0)

    def _publish_markers(self) -> None:
        try:
            db = self.recognizer.db
            if db is not self._marked_db():
                self.markers.reset()
                self._marked_db = weakref.ref(db)
            poses = retry(lambda: [kf.pose for kf in db.keyframes.values()])
            msg = self.markers.message(poses, self.get_clock().now().to_msg())
            if msg is not None:
                self.pub_markers.publish(msg)
        except Exception as exc:  # a drawing must never take the node down
            self.get_logger().error(f"markers failed: {type(exc).__name__}: {exc}", throttle_duration_sec=30.0)

    # ---- run-time parameters ---------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        """`ros2 param set`: detector thresholds, top_k, temporal consistency, min_inliers and map.path apply
        from the next frame (checked by the same rules as at start); any other config parameter is refused."""
        try:
            changes = parameter_changes(self.cfg, params)
            if changes.get("map.path"):
                self.maps.resolve(changes["map.path"])  # confined to map.directory, or refused
            self.recognizer.apply_settings({k: v for k, v in changes.items() if k != "map.path"})
            if "map.path" in changes:
                self.maps.set_path(changes["map.path"])
        except (ConfigError, MapPathError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if changes:
            self.get_logger().info(f"parameters changed at run time: {changes}")
        return SetParametersResult(successful=True)

    def shutdown(self) -> None:
        """Finish queued frames, stop the workers, save the map if configured."""
        self._queue.put(None)
        self._worker.join(timeout=30.0)
        self._decider.join(timeout=30.0)  # the model worker's last act is to end the decision queue
        self._stop.set()
        self.recognizer.close()  # keyframes still queued for a fleet's shared map are written
        self.maps.shutdown()  # autosave (never over a foreign or unreadable file), exact next id recorded
        s = self.recognizer.stats.summary()
        self.get_logger().info(f"processed {s['frames']} frames, {s['keyframes']} keyframes, "
                               f"{s['loop_closures']} loop closures, dropped {s['dropped']}, lost (estimated) "
                               f"{s['lost_estimate']}; latency (arrival to PlaceMatch) median "
                               f"{s.get('end_to_end_ms_median', 0.0):.1f} ms, p95 {s.get('end_to_end_ms_p95', 0.0):.1f} ms; "
                               f"processing median {s['latency_ms_median']:.1f} ms, p95 {s['latency_ms_p95']:.1f} ms")
        self.get_logger().info("stats " + json.dumps(s))  # one machine-readable line (offline_eval.realtime reads it)


def main(args=None) -> int:
    """Spin until SIGINT/SIGTERM (or an external shutdown), then stop in order: callbacks, the workers (queued
    frames finished), the map save, the node, and only then the ROS context. rclpy's own signal handler
    would shut the context down first, under the workers' publishers and the save: the node then died with
    SIGSEGV now and then (seen in CI twice) instead of saving its map and exiting 0."""
    faulthandler.enable()  # a crash in native code (rmw, FAISS, OpenCV) leaves every thread's stack in the log
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    executor = MultiThreadedExecutor()  # ~/query_place runs beside the image callbacks

    def on_signal(signum, frame) -> None:
        stop.set()
        executor.wake()  # the spin below notices at once instead of at its next timeout

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    try:
        node = LoopClosureNode()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # configuration errors: one clear line, non-zero exit
        print(f"loop_closure_node: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        executor.shutdown()  # callbacks still running on its threads (a timer mid-publish) end before the node goes
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
