#!/usr/bin/env python3
"""Kill the real node with SIGKILL at random points while it saves its map, many times over, and check
that nothing acknowledged is ever lost.

Each round: start the node on the same map file (seeded large, so a save takes a while), check the file
before the start (every keyframe of every successful save is in it, it loads), check after the start (no
temporary file of the killed save is left), map three frames, save (acknowledged: the service said
success), map two more, ask for a save and SIGKILL the node a random time into it. Ids are checked too:
no id published before a kill is handed out again after it.

    .venv/bin/python tools/kill_save_test.py [--rounds 30] [--seed-keyframes 20000]

Not part of CI: it takes ~10 minutes on 2 cores. Exit status 0 only if nothing was lost.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Set

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
from vpr_core.keyframes import Keyframe
from vpr_core.map_database import MapDatabase, MapError  # noqa: E402
from vpr_msgs.msg import PlaceMatch  # noqa: E402
from vpr_msgs.srv import SaveMap  # noqa: E402
from vpr_ros.conversions import rgb_to_image, to_ns  # noqa: E402

NODE = "loop_closure_node"


class Client(Node):
    """Publishes frames, records PlaceMatches, calls save_map. Each node run gets a namespace of its own,
    so the endpoints a killed node leaves in the graph for a while never answer for the next one."""

    def __init__(self) -> None:
        super().__init__("kill_save_client")
        self.matches: dict = {}
        self.cond = threading.Condition()
        self.pub = self.sub = self.save = None

    def attach(self, ns: str) -> None:
        for ent, destroy in ((self.pub, self.destroy_publisher), (self.sub, self.destroy_subscription),
                             (self.save, self.destroy_client)):
            if ent is not None:
                destroy(ent)
        self.pub = self.create_publisher(Image, f"{ns}/image", QoSProfile(depth=10))
        self.sub = self.create_subscription(PlaceMatch, f"{ns}/place_match", self._on_match, QoSProfile(depth=100))
        self.save = self.create_client(SaveMap, f"{ns}/{NODE}/save_map")

    def _on_match(self, msg: PlaceMatch) -> None:
        with self.cond:
            self.matches[to_ns(msg.query_stamp)] = msg
            self.cond.notify_all()

    def connected(self) -> bool:
        return self.pub.get_subscription_count() > 0 and self.save.service_is_ready()

    def send(self, rgb: np.ndarray, stamp: int, timeout: float = 60.0) -> PlaceMatch:
        self.pub.publish(rgb_to_image(rgb, stamp, "camera"))
        deadline = time.monotonic() + timeout
        with self.cond:
            while stamp not in self.matches:
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no PlaceMatch for stamp {stamp}")
            return self.matches[stamp]


@dataclass
class Record:
    acked: Set[int] = field(default_factory=set)  # keyframe ids inside a save the node said succeeded
    published: List[int] = field(default_factory=list)  # every query id the node published
    lost: int = 0
    reused: int = 0
    stale_before_start: int = 0  # temporary files a killed save left (the start must remove them)
    stale_after_start: int = 0
    unreadable: int = 0
    tmp_at_kill: int = 0
    kills: int = 0
    save_s: List[float] = field(default_factory=list)
    write_s: List[float] = field(default_factory=list)  # how long a save's temporary file exists


def seed_map(path: Path, n: int, dim: int) -> float:
    """A map of n random keyframes (so each save writes n * dim * 4 bytes); returns one save's seconds."""
    rng = np.random.default_rng(0)
    db = MapDatabase(dim, "flat", "false")
    for i in range(n):
        db.add(rng.normal(size=dim).astype(np.float32), Keyframe(i, (1_600_000_000 + i) * 10**9, "seed"))
    t0 = time.perf_counter()
    db.save(path)
    return time.perf_counter() - t0


def frames(count: int) -> List[np.ndarray]:
    """Distinct frames: real corridor pictures when the shared datasets are there, else textured noise."""
    folder = REPO.parent / "shared" / "datasets" / "corridor" / "database"
    if folder.is_dir():
        from vpr_core.images import load_image
        return [load_image(p) for p in sorted(folder.glob("*.jpg"))[:count]]
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(count)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed-keyframes", type=int, default=20000, help="keyframes in the map before the first round")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill_save_"))
    maps = work / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    map_path = maps / "robot.vprmap"
    tmp = maps / "robot.vprmap.tmp"
    cfg = load_config(overrides={"map.path": str(map_path), "map.autoload": True, "map.autosave": True,
                                 "map.autosave_period_s": 0.0, "map.use_gpu": "false"})
    params = write_params(cfg, work / "params.yaml")
    save_s = seed_map(map_path, args.seed_keyframes, 1280)
    print(f"work dir {work}; seeded map: {args.seed_keyframes} keyframes, {map_path.stat().st_size >> 20} MB, "
          f"one save {save_s:.2f} s here", flush=True)
    pics = frames(5 * args.rounds + 5)
    rec = Record(acked=set(range(args.seed_keyframes)))
    env = ros_env()
    rclpy.init(domain_id=int(env["ROS_DOMAIN_ID"]))
    client = Client()
    ex = SingleThreadedExecutor()
    ex.add_node(client)
    threading.Thread(target=ex.spin, daemon=True).start()
    stamp = 1_700_000_000 * 10**9
    try:
        for rnd_i in range(args.rounds + 1):
            last = rnd_i == args.rounds
            ids: Set[int] = set()
            try:  # the file the next start will read: everything acknowledged must be in it
                ids = set(MapDatabase.load(map_path, use_gpu="false").keyframes)
                rec.lost += len(rec.acked - ids)
            except MapError as exc:
                rec.unreadable += 1
                rec.lost += len(rec.acked)
                print(f"round {rnd_i}: map unreadable after the kill: {exc}", flush=True)
            rec.stale_before_start += len(list(maps.glob("*.tmp")))
            ns = f"/round{rnd_i}"
            client.attach(ns)
            proc = NodeProcess(params, work / f"node_{rnd_i:02d}.log", env, ["-r", f"__ns:={ns}"])
            proc.__enter__()
            deadline = time.monotonic() + 180
            while not client.connected():
                if not proc.alive() or time.monotonic() > deadline:
                    print(proc.log_tail(), flush=True)
                    raise RuntimeError(f"round {rnd_i}: the node did not start")
                time.sleep(0.1)
            time.sleep(0.5)
            stale = sorted(p.name for p in maps.glob("*.tmp"))
            rec.stale_after_start += len(stale)
            in_map = set(ids)  # what this run's map holds: the file it loaded, then its own keyframes
            for k in range(3 if not last else 1):
                stamp += 200_000_000
                pm = client.send(pics[(5 * rnd_i + k) % len(pics)], stamp)
                if rec.published and pm.query_id <= max(rec.published):
                    rec.reused += 1
                rec.published.append(pm.query_id)
                in_map |= {pm.query_id} if pm.is_keyframe else set()
            if last:
                rc = proc.stop()
                clean_tmp = sorted(p.name for p in maps.glob("*.tmp"))
                print(f"final clean stop: rc {rc}, temporary files left {clean_tmp}", flush=True)
                rec.stale_after_start += len(clean_tmp)
                break
            t0 = time.perf_counter()
            res = client.save.call_async(SaveMap.Request(path=""))
            tmp_seen = []  # when the temporary file exists: the write phase of the save
            while not res.done():
                if tmp.exists():
                    tmp_seen.append(time.perf_counter())
                time.sleep(0.001)
            rec.save_s.append(time.perf_counter() - t0)
            rec.write_s.append(tmp_seen[-1] - tmp_seen[0] if len(tmp_seen) > 1 else 0.01)
            if res.result().success:
                rec.acked |= in_map
            for k in (3, 4):
                stamp += 200_000_000
                pm = client.send(pics[(5 * rnd_i + k) % len(pics)], stamp)
                rec.published.append(pm.query_id)
            client.save.call_async(SaveMap.Request(path=""))  # this one is killed somewhere inside
            if rnd_i % 2:  # a random point of the whole call: request, copy, checksums, write, rename
                time.sleep(rnd.uniform(0.0, float(np.median(rec.save_s))))
            else:  # a random point of the write itself: once the temporary file is there
                until = time.monotonic() + 10.0
                while not tmp.exists() and time.monotonic() < until:
                    time.sleep(0.0005)
                time.sleep(rnd.uniform(0.0, float(np.median(rec.write_s))))
            rec.tmp_at_kill += int(tmp.exists())
            os.kill(proc.proc.pid, signal.SIGKILL)
            proc.proc.wait()
            proc.stop()
            rec.kills += 1
            print(f"round {rnd_i + 1}/{args.rounds}: acknowledged {len(rec.acked)} keyframes, last save "
                  f"{rec.save_s[-1]:.2f} s, temporary file at kill: {tmp.exists()}",
                  flush=True)
    finally:
        ex.shutdown()
        client.destroy_node()
        rclpy.try_shutdown()
    print(f"\nkills: {rec.kills}, half at a random point of the save call, half inside its write; the "
          f"temporary file existed at {rec.tmp_at_kill} of them. Save call median {np.median(rec.save_s):.2f} s, "
          f"write {np.median(rec.write_s):.2f} s")
    print(f"acknowledged keyframes lost: {rec.lost} (of {len(rec.acked)})")
    print(f"unreadable map files after a kill: {rec.unreadable}")
    print(f"stale temporary files: {rec.stale_before_start} before a start, {rec.stale_after_start} after it")
    print(f"query ids reused after a kill: {rec.reused} (of {len(rec.published)} published)")
    return 0 if rec.lost == rec.unreadable == rec.stale_after_start == rec.reused == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
