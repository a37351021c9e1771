"""`python -m offline_eval.realtime`: does the node keep up with a camera on this CPU? Prints two tables.

1. Inference runtimes (`model.runtime`): forward ms at batch 1 and images/s at batch 16, the median over
   `--rounds` rounds, each against eager torch measured in the same run (ratio), on real corridor images.
2. The real node (a subprocess, as a robot runs it) fed the corridor stream from a bag at 10 and 30 Hz:
   latency from the image's arrival to its PlaceMatch (median, p95; queue wait included), frames dropped,
   per-stage medians (decode, preprocess, forward, search, re-rank, decision) from the node's own stats,
   and the forward pass as a share of the end-to-end median. Cases: the default decision per runtime,
   and re-ranking the top 20 and 100 (`config/default_rerank.yaml`, on openvino when it is listed).

Thread counts come from each config's `runtime` section (1 torch thread on this 2-core machine). Numbers
move with whatever else the machine runs: compare rows of one run, not runs.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from offline_eval.benchmark import parse_overrides
from vpr_core.config import Config, ConfigError, config_from_dict, load_config
from vpr_core.datasets import load_dataset
from vpr_core.images import load_image

REPO = Path(__file__).resolve().parent.parent
RUNTIMES = ("torch", "onnxruntime", "openvino", "compile")


@dataclass
class ForwardRow:
    runtime: str
    b1_ms: float = float("nan")
    b16_img_s: float = float("nan")
    error: str = ""


@dataclass
class NodeRow:
    case: str
    rate_hz: float
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    e2e_median_ms: float = float("nan")
    e2e_p95_ms: float = float("nan")
    stages: Dict[str, float] = field(default_factory=dict)  # stage -> median ms (node's own stats)
    closures: int = 0
    error: str = ""

    @property
    def forward_share(self) -> float:
        return self.stages.get("forward", float("nan")) / self.e2e_median_ms


def with_runtime(cfg: Config, runtime: str, cache: Path, overrides: Optional[Dict[str, object]] = None) -> Config:
    """A copy of `cfg` running `runtime`, its exported files cached under `cache` (inside the repository)."""
    data = cfg.to_dict()
    data["model"].update(runtime=runtime, runtime_cache=str(cache))
    for key, value in (overrides or {}).items():
        section, leaf = key.split(".")
        data[section][leaf] = value
    return config_from_dict(data)


def forward_rows(cfg: Config, runtimes: Sequence[str], images: List[np.ndarray], rounds: int, cache: Path,
                 repeats: int = 10) -> List[ForwardRow]:
    """Each runtime's forward pass alone, as the extractor times it (`Extracted.timings_ms["forward"]`:
    preprocessed tensors in, descriptors out): rounds interleave the runtimes so a burst of outside load
    hits them alike; medians over rounds."""
    from vpr_core.models import DescriptorExtractor
    from vpr_core.runtime import apply_threads

    apply_threads(cfg.runtime)
    built, rows = {}, {r: ForwardRow(r) for r in runtimes}
    one, sixteen = images[:1], (images * 16)[:16]
    for r in runtimes:
        try:
            ex = DescriptorExtractor(with_runtime(cfg, r, cache, {"model.batch_size": 16}).model)
        except (ConfigError, ImportError, RuntimeError) as exc:
            rows[r].error = str(exc).splitlines()[0][:80]
            continue
        forward_ms = lambda batch, ex=ex: ex.extract(batch, with_local=False).timings_ms["forward"]  # noqa: E731
        forward_ms(one), forward_ms(sixteen)  # warm-up (allocations, lazy compilation)
        built[r] = forward_ms
    b1: Dict[str, List[float]] = {r: [] for r in built}
    b16: Dict[str, List[float]] = {r: [] for r in built}
    for _ in range(rounds):
        for r, forward_ms in built.items():
            b1[r].append(float(np.median([forward_ms(one) for _ in range(repeats)])))
            b16[r].append(16e3 / forward_ms(sixteen))
    for r in built:
        rows[r].b1_ms, rows[r].b16_img_s = float(np.median(b1[r])), float(np.median(b16[r]))
    return [rows[r] for r in runtimes]


def node_row(case: str, cfg: Config, bag: Path, rate: float, out: Path) -> NodeRow:
    """One run of the real node on the bag at `rate` Hz; the node's stats line gives the stage medians."""
    from offline_eval.replay import NodeProcess, replay, ros_env, write_params

    row = NodeRow(case, rate)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "node.log"
    try:
        with NodeProcess(write_params(cfg, out / "params.yaml"), log, ros_env()) as node:
            rec = replay(bag, node, rate_hz=rate)
    except (RuntimeError, TimeoutError) as exc:
        row.error = str(exc).splitlines()[0][:80]
        return row
    lat = np.array([m.latency_ms for m in rec.place_matches], np.float64)
    row.sent, row.answered, row.closures = rec.sent, len(rec.place_matches), len(rec.loop_closures)
    row.dropped = row.sent - row.answered
    if len(lat):
        row.e2e_median_ms, row.e2e_p95_ms = float(np.median(lat)), float(np.percentile(lat, 95))
    found = re.findall(r"stats (\{.*\})", log.read_text(errors="replace"))
    if found:
        row.stages = json.loads(found[-1]).get("stage_ms_median", {})
    return row


def print_forward(rows: List[ForwardRow], rounds: int) -> None:
    base = next((r for r in rows if r.runtime == "torch" and not r.error), None)
    print(f"\nForward pass, 1 image and 16 images (median of {rounds} rounds; ratio = eager torch / runtime)")
    print("| runtime | batch 1 ms | vs torch | batch 16 img/s | vs torch |\n|---|---|---|---|---|")
    for r in rows:
        if r.error:
            print(f"| {r.runtime} | - | - | - | - | ({r.error})")
            continue
        s1 = f"{base.b1_ms / r.b1_ms:.2f}x" if base else "-"
        s16 = f"{r.b16_img_s / base.b16_img_s:.2f}x" if base else "-"
        print(f"| {r.runtime} | {r.b1_ms:.1f} | {s1} | {r.b16_img_s:.1f} | {s16} |")


STAGES = ("decode", "preprocess", "forward", "search", "rerank", "decision")


def print_node(rows: List[NodeRow]) -> None:
    print("\nThe node on the corridor stream (222 frames): arrival -> PlaceMatch, per-stage medians (ms)")
    print("| case | rate | median ms | p95 ms | dropped | " + " | ".join(STAGES) + " | forward share | closures |")
    print("|" + "---|" * (8 + len(STAGES)))
    for r in rows:
        if r.error:
            print(f"| {r.case} | {r.rate_hz:g} Hz | failed: {r.error} |")
            continue
        st = " | ".join(f"{r.stages[s]:.1f}" if s in r.stages else "-" for s in STAGES)
        print(f"| {r.case} | {r.rate_hz:g} Hz | {r.e2e_median_ms:.1f} | {r.e2e_p95_ms:.1f} | {r.dropped} of {r.sent} "
              f"| {st} | {r.forward_share:.0%} | {r.closures} |")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="realtime", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "datasets" / "corridor")
    ap.add_argument("--config", help="base config (default: config/default.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--runtimes", default="torch,onnxruntime,openvino", help=f"any of {','.join(RUNTIMES)}")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the forward table (medians over rounds)")
    ap.add_argument("--rates", default="10,30", help="camera rates of the node table (Hz)")
    ap.add_argument("--cases", default="runtimes,rerank20,rerank100",
                    help="node rows: runtimes (the default decision per runtime), rerank20, rerank100; '' = none")
    ap.add_argument("--out", type=Path, help="folder for bags and node logs (default: runs/realtime-<time>)")
    args = ap.parse_args(argv)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if set(runtimes) - set(RUNTIMES):
        ap.error(f"--runtimes accepts {RUNTIMES}")
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
        ds = load_dataset(args.dataset)
    except (ConfigError, ValueError) as exc:
        print(f"realtime: {exc}", file=sys.stderr)
        return 2
    out = args.out or REPO / "runs" / time.strftime("realtime-%Y%m%d-%H%M%S")
    cache = REPO / "runs" / "cache" / "runtimes"
    paths = list(ds.database) + list(ds.queries)
    images = [load_image(p) for p in paths]
    print(f"{ds.name}: {len(paths)} images {images[0].shape[1]}x{images[0].shape[0]}; model {cfg.model.name}, "
          f"input {cfg.model.preprocess.image_size[1]}x{cfg.model.preprocess.image_size[0]}; runtime.threads {cfg.runtime.threads}")
    print_forward(forward_rows(cfg, runtimes, images[:16], args.rounds, cache), args.rounds)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases:
        return 0
    from offline_eval.bags import write_image_bag_frames

    rerank = load_config(str(REPO / "config" / "default_rerank.yaml"), parse_overrides(args.set))
    todo = []
    if "runtimes" in cases:
        todo += [(f"default, {r}", with_runtime(cfg, r, cache)) for r in runtimes]
    rr_runtime = "openvino" if "openvino" in runtimes else runtimes[0]  # the default's pick on a CPU
    for k in (20, 100):
        if f"rerank{k}" in cases:
            todo.append((f"re-rank K={k}, {rr_runtime}", with_runtime(rerank, rr_runtime, cache, {"rerank.top_k": k})))
    rows = []
    for rate in (float(r) for r in args.rates.split(",") if r.strip()):
        period = int(1e9 / rate)
        bag = write_image_bag_frames([lambda im=im: im for im in images], [(i + 1) * period for i in range(len(images))],
                                     out / f"bag_{rate:g}hz", progress=False)
        for name, c in todo:
            rows.append(node_row(name, c, bag, rate, out / re.sub(r"\W+", "_", f"{name}_{rate:g}")))
            print(f"  {name} at {rate:g} Hz: median {rows[-1].e2e_median_ms:.1f} ms, dropped {rows[-1].dropped}",
                  flush=True)
    print_node(rows)
    print(f"\nlogs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
