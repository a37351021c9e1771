#!/usr/bin/env python3
"""Soak the real node with a camera-like stream: 640x480 rgb8 at 30 Hz for N minutes.

Prints frames sent / processed, the node's drops by reason and its estimate of frames lost on the way
(from its shutdown summary), the node's RSS at start and end (and peak), and latency: image published
to PlaceMatch received (p50/p95) and the node's own per-frame latency. The picture sequence is the
corridor dataset scaled to 640x480 (textured noise without it), cycled.

    .venv/bin/python tools/stream_soak.py [--minutes 10] [--rate 30] [--qos sensor_data]

Not part of CI. On a shared 2-core CPU the model keeps up with well under 30 Hz, so most dropped
frames are `queue_full` (the oldest waiting frame is dropped when the model falls behind): by design.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from offline_eval.replay import NodeProcess, ros_env, write_params  # noqa: E402
from vpr_core.config import load_config  # noqa: E402
from vpr_msgs.msg import PlaceMatch  # noqa: E402
from vpr_ros.conversions import rgb_to_image, to_ns  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024.0


class Camera(Node):
    """Publishes frames at a fixed rate with real stamps; records when each PlaceMatch comes back."""

    def __init__(self, frames: List[np.ndarray], rate: float) -> None:
        super().__init__("soak_camera")
        self.frames, self.period = frames, 1.0 / rate
        self.pub = self.create_publisher(Image, "image", QoSProfile(depth=10))
        self.sent: Dict[int, float] = {}  # stamp -> monotonic publish time
        self.received: Dict[int, tuple] = {}  # stamp -> (monotonic receive time, node latency ms)
        self.create_subscription(PlaceMatch, "place_match", self._on_match, QoSProfile(depth=1000))

    def _on_match(self, msg: PlaceMatch) -> None:
        self.received[to_ns(msg.query_stamp)] = (time.monotonic(), msg.latency_ms)

    def stream(self, seconds: float) -> None:
        t0 = time.monotonic()
        k = 0
        while True:
            due = t0 + k * self.period
            now = time.monotonic()
            if due - t0 > seconds:
                return
            if due > now:
                time.sleep(due - now)
            stamp = time.time_ns()
            msg = rgb_to_image(self.frames[k % len(self.frames)], stamp, "camera")
            self.sent[stamp] = time.monotonic()
            self.pub.publish(msg)
            k += 1


def frames(width: int, height: int) -> List[np.ndarray]:
    folder = REPO.parent / "shared" / "datasets" / "corridor" / "database"
    if folder.is_dir():
        from vpr_core.images import load_image
        return [cv2.resize(load_image(p), (width, height), interpolation=cv2.INTER_LINEAR)
                for p in sorted(folder.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    return [cv2.resize(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (width, height)) for _ in range(50)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--qos", default="sensor_data", help="node.qos: sensor_data | reliable")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stream_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(overrides={"node.qos": args.qos, "map.use_gpu": "false"})
    params = write_params(cfg, work / "params.yaml")
    pics = frames(args.width, args.height)
    env = ros_env()
    rclpy.init(domain_id=int(env["ROS_DOMAIN_ID"]))
    cam = Camera(pics, args.rate)
    ex = SingleThreadedExecutor()
    ex.add_node(cam)
    threading.Thread(target=ex.spin, daemon=True).start()
    node = NodeProcess(params, work / "node.log", env).__enter__()
    try:
        deadline = time.monotonic() + 180
        while cam.pub.get_subscription_count() == 0 or cam.count_publishers("/place_match") == 0:
            if not node.alive() or time.monotonic() > deadline:
                print(node.log_tail())
                return 1
            time.sleep(0.1)
        time.sleep(1.0)
        rss_start = rss_mb(node.proc.pid)
        peak = [rss_start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                peak.append(rss_mb(node.proc.pid))
        threading.Thread(target=sample, daemon=True).start()
        print(f"streaming {args.width}x{args.height} rgb8 at {args.rate:g} Hz for {args.minutes:g} min "
              f"(node.qos {args.qos}); node RSS at start {rss_start:.0f} MB", flush=True)
        cam.stream(args.minutes * 60.0)
        time.sleep(3.0)  # the queue drains
        rss_end = rss_mb(node.proc.pid)
        stop.set()
        rc = node.stop()
    finally:
        if node.alive():
            node.stop()
        ex.shutdown()
        cam.destroy_node()
        rclpy.try_shutdown()
    log = Path(work / "node.log").read_text(errors="replace")
    m = re.search(r"processed (\d+) frames, (\d+) keyframes.*dropped (\{.*?\}), lost \(estimated\) (\d+)", log)
    dropped = ast.literal_eval(m.group(3)) if m else {}
    e2e = np.array([(cam.received[s][0] - t) * 1e3 for s, t in cam.sent.items() if s in cam.received])
    own = np.array([v[1] for v in cam.received.values()])
    sent, processed = len(cam.sent), len(cam.received)
    print(f"\nsent {sent}, processed {processed} ({processed / max(sent, 1):.0%}); node exit code {rc}")
    print(f"dropped by reason: {dropped or '{}'} (sum {sum(dropped.values())})")
    print(f"lost before arrival (estimated from stamp gaps): {m.group(4) if m else '?'}; never answered: "
          f"{sent - processed - sum(dropped.values())}")
    print(f"node RSS: start {rss_start:.0f} MB, end {rss_end:.0f} MB, peak {max(peak):.0f} MB; "
          f"map keyframes {m.group(2) if m else '?'}")
    if len(e2e):
        print(f"latency publish -> PlaceMatch: p50 {np.percentile(e2e, 50):.0f} ms, p95 {np.percentile(e2e, 95):.0f} ms; "
              f"node's own per-frame latency p50 {np.percentile(own, 50):.0f} ms, p95 {np.percentile(own, 95):.0f} ms")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
