"""ROS 2 integration harness: the real loop-closure node in a subprocess, a test node in-process.

One ROS context per session, on loopback only, in a DDS domain of its own (derived from the pid)
with logs in a temp dir. The node under test is `python -m vpr_ros.node --ros-args --params-file F`
started through `offline_eval.replay.NodeProcess`; start-up costs ~5-10 s (torch + model), so
test modules share one node run where the node's state allows it.

The in-process `VprClient` publishes images (raw and compressed) and side streams (odometry,
CameraInfo, depth, more cameras), records every PlaceMatch, LoopClosure, /diagnostics, ~/markers and
~/debug_image message the node publishes, and calls its services; a SingleThreadedExecutor spins it
in a background thread, so tests simply block on events with timeouts.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from offline_eval.replay import NodeProcess, write_params
from vpr_core.config import load_config
from vpr_core.images import load_image
from vpr_msgs.msg import LoopClosure, PlaceMatch
from vpr_msgs.srv import LoadMap, QueryPlace, ResetMap, SaveMap, SetMode
from vpr_ros.conversions import rgb_to_image, to_ns, to_time

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
CORRIDOR = SHARED_DATASETS / "corridor"

NODE_NAME = "loop_closure_node"
START_TIMEOUT_S = 120.0  # torch import + model build on 2 slow cores, with margin
FRAME_TIMEOUT_S = 30.0  # one frame through the model on CPU is ~0.1 s; generous for loaded machines
STAMP_BASE_NS = 1_700_000_000 * 10**9
STAMP_STEP_NS = 200_000_000  # 5 Hz camera


# ---- session: environment and the ROS context ----------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def ros_context(tmp_path_factory) -> Iterator[Dict[str, str]]:
    """Loopback discovery, a domain id unique to this run (1..100), logs in a temp dir; rclpy.init()."""
    keys = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR", "AMENT_PREFIX_PATH",
            "RCUTILS_LOGGING_BUFFERED_STREAM", "PYTHONUNBUFFERED")
    saved = {k: os.environ.get(k) for k in keys}
    log_dir = tmp_path_factory.mktemp("ros_log")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
    os.environ["ROS_LOG_DIR"] = str(log_dir)
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)  # the venv holds the ament index (vpr_msgs)
    os.environ["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"  # node log lines reach the log file at once
    os.environ["PYTHONUNBUFFERED"] = "1"

    rclpy.init()
    try:
        yield {k: os.environ[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR")}
    finally:
        rclpy.try_shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- data -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def corridor() -> Path:
    if not (CORRIDOR / "database").is_dir() or not (CORRIDOR / "query").is_dir():
        pytest.skip(f"corridor dataset not found at {CORRIDOR} (expected database/ and query/ with "
                    f"0000000.jpg ... 0000110.jpg next to the repository, in ../shared/datasets)")
    return CORRIDOR


class Corridor:
    """Cached RGB images of the corridor dataset: query i shows the place of database i."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: Dict[tuple, np.ndarray] = {}

    def image(self, split: str, i: int) -> np.ndarray:
        key = (split, i)
        if key not in self._cache:
            self._cache[key] = load_image(self.root / split / f"{i:07d}.jpg")
        return self._cache[key]

    def database(self, i: int) -> np.ndarray:
        return self.image("database", i)

    def query(self, i: int) -> np.ndarray:
        return self.image("query", i)


@pytest.fixture(scope="session")
def images(corridor: Path) -> Corridor:
    return Corridor(corridor)


# ---- the in-process test node -----------------------------------------------------------------------
class VprClient:
    """Talks to the node under test: publishes frames, records its outputs, calls its services."""

    def __init__(self) -> None:
        self.node = Node("vpr_test_client")
        reliable = QoSProfile(depth=50)
        self.pub_image = self.node.create_publisher(Image, "image", reliable)
        self.pub_compressed = self.node.create_publisher(CompressedImage, "image/compressed", reliable)
        self.place_matches: List[Any] = []
        self.loop_closures: List[Any] = []
        self.diagnostics: List[Any] = []  # DiagnosticArray from /diagnostics
        self.markers: List[Any] = []  # MarkerArray from ~/markers
        self.debug_images: List[Any] = []  # Image from ~/debug_image
        self._pubs: Dict[tuple, Any] = {}  # (msg type, topic) -> publisher, see publisher()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.node.create_subscription(PlaceMatch, "place_match", self._on_match, QoSProfile(depth=1000))
        self.node.create_subscription(LoopClosure, "loop_closure", self._on_closure, QoSProfile(depth=1000))
        for kind, topic, record in ((DiagnosticArray, "/diagnostics", self.diagnostics),
                                    (MarkerArray, f"/{NODE_NAME}/markers", self.markers),
                                    (Image, f"/{NODE_NAME}/debug_image", self.debug_images)):
            self.node.create_subscription(kind, topic, functools.partial(self._record, record), QoSProfile(depth=100))
        self.save_client = self.node.create_client(SaveMap, f"/{NODE_NAME}/save_map")
        self.load_client = self.node.create_client(LoadMap, f"/{NODE_NAME}/load_map")
        self.query_client = self.node.create_client(QueryPlace, f"/{NODE_NAME}/query_place")
        self.mode_client = self.node.create_client(SetMode, f"/{NODE_NAME}/set_mode")
        self.reset_client = self.node.create_client(ResetMap, f"/{NODE_NAME}/reset_map")
        self._next_stamp = STAMP_BASE_NS
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, name="vpr_test_client_spin", daemon=True)
        self._spin.start()

    # callbacks (executor thread)
    def _on_match(self, msg) -> None:
        with self._cond:
            self.place_matches.append(msg)
            self._cond.notify_all()

    def _on_closure(self, msg) -> None:
        with self._cond:
            self.loop_closures.append(msg)
            self._cond.notify_all()

    def _record(self, record: List[Any], msg) -> None:
        with self._cond:
            record.append(msg)
            self._cond.notify_all()

    # bookkeeping
    def reset(self) -> None:
        with self._cond:
            for record in (self.place_matches, self.loop_closures, self.diagnostics, self.markers, self.debug_images):
                record.clear()

    def wait_for(self, record: List[Any], predicate: Callable[[Any], bool], timeout: float = FRAME_TIMEOUT_S,
                 what: str = "message", after: int = 0):
        """The first message of `record` (from index `after`) satisfying `predicate`, waiting up to `timeout`;
        fails the test naming `what` when none arrives."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in record[after:]:
                    if predicate(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        pytest.fail(f"no {what} within {timeout:.0f} s ({len(record)} received)")

    def next_stamp(self) -> int:
        """A fresh, strictly increasing image stamp (5 Hz spacing) unique within the session."""
        with self._lock:
            self._next_stamp += STAMP_STEP_NS
            return self._next_stamp

    def snapshot(self) -> List[Any]:
        """The PlaceMatches received so far (this node run), in arrival = processing order."""
        with self._lock:
            return list(self.place_matches)

    def matches_for(self, stamp_ns: int) -> List[Any]:
        with self._lock:
            return [m for m in self.place_matches if to_ns(m.query_stamp) == stamp_ns]

    def closures_for(self, stamp_ns: int) -> List[Any]:
        with self._lock:
            return [c for c in self.loop_closures if to_ns(c.query_stamp) == stamp_ns]

    def keyframes(self) -> List[Any]:
        with self._lock:
            return [m for m in self.place_matches if m.is_keyframe]

    # graph
    def connected(self) -> bool:
        n = self.node
        return (self.pub_image.get_subscription_count() > 0 and self.pub_compressed.get_subscription_count() > 0
                and n.count_publishers("/place_match") > 0 and n.count_publishers("/loop_closure") > 0
                and self.save_client.service_is_ready() and self.load_client.service_is_ready())

    def node_gone(self) -> bool:
        return self.node.count_publishers("/place_match") == 0 and self.pub_image.get_subscription_count() == 0

    # frames
    def image_msg(self, rgb: np.ndarray, encoding: str = "rgb8", frame_id: str = "camera",
                  stamp_ns: Optional[int] = None):
        return rgb_to_image(rgb, self.next_stamp() if stamp_ns is None else stamp_ns, frame_id, encoding)

    def compressed_msg(self, data: bytes, frame_id: str = "camera", stamp_ns: Optional[int] = None,
                       fmt: str = "jpeg"):
        stamp_ns = self.next_stamp() if stamp_ns is None else stamp_ns
        return CompressedImage(header=Header(stamp=to_time(stamp_ns), frame_id=frame_id), format=fmt,
                               data=bytes(data))

    def publish(self, msg, topic: Optional[str] = None) -> int:
        """Publish an Image or CompressedImage (on `topic`, default image / image/compressed); returns its
        stamp in ns."""
        if topic is not None:
            self.publisher(type(msg), topic).publish(msg)
        else:
            (self.pub_compressed if isinstance(msg, CompressedImage) else self.pub_image).publish(msg)
        return to_ns(msg.header.stamp)

    def publisher(self, msg_type, topic: str, timeout: float = 10.0):
        """A reliable publisher of `msg_type` on `topic` (created once), returned once the node under test
        subscribes to it, so the first message is not lost to discovery."""
        key = (msg_type, topic)
        created = key not in self._pubs
        if created:
            self._pubs[key] = self.node.create_publisher(msg_type, topic, QoSProfile(depth=50))
        pub = self._pubs[key]
        deadline = time.monotonic() + timeout
        while pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                pytest.fail(f"the node does not subscribe to {topic} ({msg_type.__name__}) within {timeout:.0f} s")
            created = True
            time.sleep(0.05)
        if created:
            time.sleep(0.5)  # the subscriber's side of the match may lag ours (as in NodeRun.start)
        return pub

    def wait_match(self, stamp_ns: int, timeout: float = FRAME_TIMEOUT_S, node: Optional["NodeRun"] = None):
        """Block until the PlaceMatch for `stamp_ns` arrives; fails the test (with the node log) if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.place_matches:
                    if to_ns(m.query_stamp) == stamp_ns:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        tail = node.log_tail() if node is not None else ""
        pytest.fail(f"no PlaceMatch for stamp {stamp_ns} within {timeout:.0f} s\nnode log:\n{tail}")

    def send(self, msg, node: Optional["NodeRun"] = None, timeout: float = FRAME_TIMEOUT_S, topic: Optional[str] = None):
        """Publish one frame and wait for its PlaceMatch (lockstep: nothing is dropped by the queue)."""
        return self.wait_match(self.publish(msg, topic), timeout, node)

    def settle(self, seconds: float = 0.5) -> None:
        """Give late (duplicate or closure) messages time to arrive before counting."""
        time.sleep(seconds)

    # services
    def call(self, client, request, timeout: float = 30.0):
        if not client.wait_for_service(timeout_sec=timeout):
            pytest.fail(f"service {client.srv_name} is not available within {timeout:.0f} s")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            client.remove_pending_request(future)
            pytest.fail(f"service {client.srv_name} did not answer within {timeout:.0f} s")
        return future.result()

    def save_map(self, path: str = ""):
        return self.call(self.save_client, SaveMap.Request(path=str(path)))

    def load_map(self, path: str = ""):
        return self.call(self.load_client, LoadMap.Request(path=str(path)))

    def query_place(self, request: QueryPlace.Request):
        return self.call(self.query_client, request)

    def set_mode(self, mode: str):
        return self.call(self.mode_client, SetMode.Request(mode=mode))

    def reset_map(self):
        return self.call(self.reset_client, ResetMap.Request())

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="session")
def client(ros_context) -> Iterator[VprClient]:
    c = VprClient()
    try:
        yield c
    finally:
        c.close()


# ---- the node under test ------------------------------------------------------------------------------
def write_node_params(cfg, path: Path) -> Path:
    """A parameters file for the node, as the benchmark harness writes it."""
    return write_params(cfg, path)


@pytest.fixture(scope="session")
def node_params():
    """node_params(cfg, path) -> a parameters file for the node (see write_node_params)."""
    return write_node_params


def node_config(overrides: Optional[Mapping[str, Any]] = None):
    """config/default.yaml with dotted overrides (validated by vpr_core.config)."""
    return load_config(overrides=dict(overrides or {}))


class NodeRun:
    """One run of the real node (offline_eval.replay.NodeProcess) with parameters from a Config."""

    def __init__(self, client: VprClient, workdir: Path, name: str, overrides: Optional[Mapping[str, Any]] = None,
                 params_file: Optional[Path] = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.client, self.name = client, name
        self.cfg = node_config(overrides)
        self.params_file = params_file or write_node_params(self.cfg, workdir / f"{name}_params.yaml")
        self.log_path = workdir / f"{name}.log"
        self.proc = NodeProcess(self.params_file, self.log_path, dict(os.environ))
        self.returncode: Optional[int] = None

    def start(self, wait: bool = True) -> "NodeRun":
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.client.node_gone():  # a previous run's endpoints must have left the graph
            if time.monotonic() > deadline:
                raise TimeoutError("endpoints of a previous node run are still in the ROS graph")
            time.sleep(0.1)
        self.client.reset()
        self.proc.__enter__()
        if wait:
            while not self.client.connected():
                if not self.proc.alive():
                    pytest.fail(f"node run '{self.name}' exited during start-up (rc {self.proc.proc.returncode}):\n"
                                f"{self.log_tail()}")
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"node run '{self.name}' did not connect within {START_TIMEOUT_S:.0f} s:\n"
                                f"{self.log_tail()}")
                time.sleep(0.1)
            time.sleep(0.5)  # let reliable endpoints finish matching both ways
        return self

    def alive(self) -> bool:
        return self.proc.alive()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_log(self, pattern: str, timeout: float = 10.0) -> Optional[re.Match]:
        """First match of regex `pattern` in the node log, polling until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text())
            if m or time.monotonic() > deadline:
                return m
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 60.0) -> Optional[int]:
        try:
            self.proc.proc.wait(timeout)
        except Exception:
            return None
        return self.proc.proc.returncode

    def stop(self) -> int:
        """SIGINT, wait for exit; returns the exit code (what `ros2 launch` / Ctrl-C would do)."""
        if self.returncode is None:
            self.returncode = self.proc.stop()
            deadline = time.monotonic() + 10.0
            while not self.client.node_gone() and time.monotonic() < deadline:
                time.sleep(0.1)
        return self.returncode


@pytest.fixture(scope="session")
def start_node(client):
    """Factory: start_node(workdir, name, overrides) -> a connected NodeRun, stopped at session end at
    the latest (tests that care about the exit code call .stop() themselves)."""
    runs: List[NodeRun] = []

    def _start(workdir: Path, name: str, overrides: Optional[Mapping[str, Any]] = None,
               params_file: Optional[Path] = None, wait: bool = True) -> NodeRun:
        run = NodeRun(client, workdir, name, overrides, params_file)
        runs.append(run)
        return run.start(wait)

    yield _start
    for run in runs:
        if run.proc.proc is not None:
            run.stop()


@pytest.fixture(scope="session")
def check_pm():
    """check_pm(place_match, top_k): the structural invariants every PlaceMatch must satisfy."""
    return check_place_match


def check_place_match(pm, top_k: int) -> None:
    """Structural invariants every PlaceMatch must satisfy."""
    n = len(pm.candidate_ids)
    assert len(pm.candidate_stamps) == n and len(pm.candidate_frame_ids) == n and len(pm.scores) == n, \
        (list(pm.candidate_ids), len(pm.candidate_stamps), len(pm.candidate_frame_ids), list(pm.scores))
    assert n <= top_k
    scores = [float(s) for s in pm.scores]
    assert scores == sorted(scores, reverse=True), f"scores not sorted best first: {scores}"
    assert all(-1.0 - 1e-4 <= s <= 1.0 + 1e-4 for s in scores), f"cosine scores outside [-1, 1]: {scores}"
    assert len(set(pm.candidate_ids)) == n, f"duplicate candidates: {list(pm.candidate_ids)}"
    assert pm.query_id not in list(pm.candidate_ids), "a frame matched itself"
    assert to_ns(pm.header.stamp) == to_ns(pm.query_stamp)
    assert pm.latency_ms >= 0.0
