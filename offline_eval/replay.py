"""Bag path: start the real node in a subprocess, play a bag into it over DDS, record its output.

Lockstep mode publishes the next frame only when the node answered the previous one (exact,
for recall); rate mode paces frames like a camera (for latency and drop behaviour).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from offline_eval.bags import read_image_bag
from vpr_core.config import Config, write_params_file
from vpr_msgs.msg import LoopClosure, PlaceMatch
from vpr_ros.conversions import to_ns


def ros_env(domain_id: Optional[int] = None) -> Dict[str, str]:
    """Environment for node and player: loopback-only discovery, one domain for the run.

    Set in this process too, so the in-process player joins the same domain as the node.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if domain_id is not None or not os.environ.get("ROS_DOMAIN_ID"):
        os.environ["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.randint(1, 100))
    return dict(os.environ)


def write_params(cfg: Config, path: Path) -> Path:
    """A ROS 2 parameters file for the node from a vpr_core Config."""
    return write_params_file(cfg, path)


class NodeProcess:
    """`python -m vpr_ros.node --ros-args --params-file F` as a context manager; SIGINT on exit."""

    def __init__(self, params_file: Path, log_path: Path, env: Dict[str, str], extra_args: List[str] = ()) -> None:
        self.cmd = [sys.executable, "-m", "vpr_ros.node", "--ros-args", "--params-file", str(params_file), *extra_args]
        self.log_path, self.env = Path(log_path), env
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "NodeProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 60.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass
class ReplayRecord:
    place_matches: List[PlaceMatch] = field(default_factory=list)
    loop_closures: List[LoopClosure] = field(default_factory=list)
    sent: int = 0
    missing: int = 0  # frames the node never answered (dropped as bad, or queue overflow)
    seconds: float = 0.0


class Player(Node):
    """Publishes images and records what the node publishes back."""

    def __init__(self, image_topic: str, namespace: str = "", context=None) -> None:
        super().__init__("vpr_bag_player", namespace=namespace, context=context)
        self.pub = self.create_publisher(Image, image_topic, QoSProfile(depth=100))
        self.record = ReplayRecord()
        self._answered: Dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.create_subscription(PlaceMatch, "place_match", self._on_match, QoSProfile(depth=1000))
        self.create_subscription(LoopClosure, "loop_closure", self._on_closure, QoSProfile(depth=1000))
        self.on_closure = None

    def _on_match(self, msg: PlaceMatch) -> None:
        with self._lock:
            self.record.place_matches.append(msg)
            ev = self._answered.setdefault(to_ns(msg.query_stamp), threading.Event())
        ev.set()

    def _on_closure(self, msg: LoopClosure) -> None:
        self.record.loop_closures.append(msg)
        if self.on_closure is not None:
            self.on_closure(msg)

    def expect(self, stamp_ns: int) -> threading.Event:
        with self._lock:
            return self._answered.setdefault(stamp_ns, threading.Event())

    def connected(self) -> bool:
        return self.pub.get_subscription_count() > 0 and self.count_publishers(
            self.resolve_topic_name("place_match")) > 0


def replay(bag_dir: Path, node: NodeProcess, image_topic: str = "image", rate_hz: Optional[float] = None,
           frame_timeout_s: float = 60.0, startup_timeout_s: float = 180.0, on_closure=None) -> ReplayRecord:
    """Play `bag_dir` into the running node; lockstep when rate_hz is None. The player runs in a context of
    its own on the node's ROS domain, whatever else this process has initialised (a context already up on
    another domain would never see the node)."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(node.env["ROS_DOMAIN_ID"]))
    player = Player(image_topic, context=context)
    player.on_closure = on_closure
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(player)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not player.connected():
            if not node.alive():
                raise RuntimeError(f"the node exited during start-up:\n{node.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the node did not connect within {startup_timeout_s:.0f} s:\n{node.log_tail()}")
            time.sleep(0.1)
        time.sleep(0.5)  # let both ends finish matching their reliable endpoints
        t0 = time.perf_counter()
        pending: List[threading.Event] = []
        for i, (_, msg) in enumerate(read_image_bag(bag_dir)):
            answered = player.expect(to_ns(msg.header.stamp))
            if rate_hz:
                time.sleep(max(0.0, t0 + i / rate_hz - time.perf_counter()))
            player.pub.publish(msg)
            player.record.sent += 1
            if rate_hz:
                pending.append(answered)
            elif not answered.wait(frame_timeout_s):
                player.record.missing += 1
            if not node.alive():
                raise RuntimeError(f"the node died during replay:\n{node.log_tail()}")
        end = time.monotonic() + frame_timeout_s
        for ev in pending:  # rate mode: wait for the tail; frames dropped by the node never come
            if not ev.wait(max(0.0, end - time.monotonic())):
                player.record.missing += 1
        time.sleep(0.3)  # a closure is published right after its PlaceMatch
        player.record.seconds = time.perf_counter() - t0
        return player.record
    finally:
        executor.shutdown()
        player.destroy_node()
        rclpy.try_shutdown(context=context)


def run_replay(cfg: Config, ds, workdir: Path, top_k: int = 20, progress: bool = True):
    """Bag path of the benchmark: node run 1 maps the database bag and saves the map on shutdown;
    node run 2 loads it with mapping off and localises the query bag. Same metrics as run_direct."""
    import numpy as np

    from offline_eval.bags import write_image_bag
    from offline_eval.protocol import QUERY_OFFSET_NS, PathResult, benchmark_config, ranked_from_ids, stream_stamps

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db_bag = write_image_bag(ds.database, stream_stamps(len(ds.database)), workdir / "database_bag", progress=progress)
    q_bag = write_image_bag(ds.queries, stream_stamps(len(ds.queries), QUERY_OFFSET_NS), workdir / "query_bag",
                            progress=progress)
    cfg = benchmark_config(cfg, top_k)  # a copy: the node runs below set their own mapping and map keys on it
    cfg.map.path, cfg.map.autosave = str(workdir / "benchmark.vprmap"), True
    cfg.node.queue_size = max(cfg.node.queue_size, 4)
    env = ros_env()
    t0 = time.perf_counter()
    cfg.detector.mapping, cfg.map.autoload = True, False
    with NodeProcess(write_params(cfg, workdir / "map_params.yaml"), workdir / "node_map.log", env) as node:
        mapped = replay(db_bag, node)
    stamp_to_db = {s: i for i, s in enumerate(stream_stamps(len(ds.database)))}
    id_to_db = {m.query_id: stamp_to_db[to_ns(m.query_stamp)] for m in mapped.place_matches if m.is_keyframe}
    cfg.detector.mapping, cfg.map.autoload, cfg.map.autosave = False, True, False
    with NodeProcess(write_params(cfg, workdir / "query_params.yaml"), workdir / "node_query.log", env) as node:
        located = replay(q_bag, node)
    by_stamp = {to_ns(m.query_stamp): m for m in located.place_matches}
    q_stamps = stream_stamps(len(ds.queries), QUERY_OFFSET_NS)
    cand_ids = [list(by_stamp[s].candidate_ids) if s in by_stamp else [] for s in q_stamps]
    scores = np.zeros((len(q_stamps), top_k), np.float32)
    for i, s in enumerate(q_stamps):
        if s in by_stamp:
            sc = list(by_stamp[s].scores)[:top_k]
            scores[i, :len(sc)] = sc
    ranked = ranked_from_ids(cand_ids, id_to_db, top_k)
    return PathResult.scored("bag replay", ranked, scores, ds.positives, time.perf_counter() - t0,
                             missing=mapped.missing + located.missing)
