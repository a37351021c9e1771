"""The main job (`make demo`): the real node, default config, a camera sequence played into it at
camera rate; prints every loop closure as it is published and a summary against ground truth."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from offline_eval.benchmark import parse_overrides
from offline_eval.demo_sequence import build_sequence
from offline_eval.replay import NodeProcess, replay, ros_env, write_params
from vpr_core.config import load_config
from vpr_ros.conversions import to_ns


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr-demo", description=__doc__)
    ap.add_argument("--dataset", type=Path, help="dataset folder to drive through (default: packaged photographs)")
    ap.add_argument("--config", help="parameters YAML (default: config/default.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz")
    ap.add_argument("--out", type=Path, help="folder for the bag, params and node log (default: runs/demo-<time>)")
    args = ap.parse_args(argv)

    from offline_eval.bags import write_image_bag_frames

    cfg = load_config(args.config, parse_overrides(args.set))
    seq = build_sequence(args.dataset)
    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    period = int(1e9 / args.rate)
    stamps = [(i + 1) * period for i in range(len(seq.frames))]
    frame_of = {s: i for i, s in enumerate(stamps)}
    print(f"demo: {seq.name}: {len(seq.frames)} frames at {args.rate:g} Hz; model {cfg.model.name}")
    bag = write_image_bag_frames(seq.frames, stamps, out / "camera_bag")

    def show(msg) -> None:
        q, m = frame_of.get(to_ns(msg.query_stamp), -1), frame_of.get(to_ns(msg.match_stamp), -1)
        verdict = "correct" if seq.is_true_revisit(q, m) else "WRONG"
        print(f"  loop closure: frame {q:4d} -> map frame {m:4d}  score {msg.score:.3f}  [{verdict}]", flush=True)

    with NodeProcess(write_params(cfg, out / "params.yaml"), out / "node.log", ros_env()) as node:
        rec = replay(bag, node, rate_hz=args.rate, on_closure=show)
    lat = np.array([m.latency_ms for m in rec.place_matches]) if rec.place_matches else np.zeros(1)
    correct = sum(seq.is_true_revisit(frame_of.get(to_ns(c.query_stamp), -1), frame_of.get(to_ns(c.match_stamp), -1))
                  for c in rec.loop_closures)
    n_lc = len(rec.loop_closures)
    print(f"\nsummary ({seq.name})")
    print(f"  frames sent {rec.sent}, processed {len(rec.place_matches)}, dropped {rec.missing}")
    print(f"  keyframes {sum(m.is_keyframe for m in rec.place_matches)}")
    print(f"  loop closures {n_lc}, correct {correct} (precision {correct / n_lc if n_lc else float('nan'):.2f}); "
          f"frames with a true revisit: {seq.revisit_frames}")
    print(f"  per-frame latency: median {np.median(lat):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms")
    print(f"  node log: {node.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
