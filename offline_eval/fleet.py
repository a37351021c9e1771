"""`python -m offline_eval.fleet DATASET`: two robots on one shared Milvus map find each other's loops.

Robot A drives the dataset's database traversal, robot B its query traversal (later, as another robot
revisiting A's places); each is a `PlaceRecognizer` with `map.backend: milvus` and its own FAISS map, both
talking to one `milvus-lite server` started here in its own process (or `--uri` of a running Milvus). It
reports B's fleet closures (published, correct by the dataset's ground truth, precision, recall over B's
frames), and what the shared map costs per frame beside B's own FAISS search.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
from tqdm import tqdm

from offline_eval.benchmark import parse_overrides
from offline_eval.protocol import contrast_of, extract_dataset, stream_stamps
from offline_eval.feature_cache import default_cache
from vpr_core.config import Config, ConfigError, config_from_dict, load_config
from vpr_core.datasets import DatasetError, load_dataset
from vpr_core.models import DescriptorExtractor
from vpr_core.models.vpr_model import Extracted
from vpr_core.pipeline import PlaceRecognizer

REPO = Path(__file__).resolve().parent.parent
B_OFFSET_NS = 3600 * 10**9  # robot B drives an hour after A (its own clock; only differences matter)


@contextmanager
def milvus_lite_server(data_dir: Path, port: int = 0, timeout_s: float = 60.0) -> Iterator[str]:
    """A `milvus-lite server` in its own process on `port` (0: a free local one); yields its URI, stops it after."""
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("milvus-lite")
    proc = subprocess.Popen([str(exe), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited ({proc.returncode}): {proc.stderr.read().decode()[-500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"milvus-lite server did not listen on port {port} within {timeout_s:.0f} s")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class FleetRun:
    """Robot B's loops with robot A's keyframes, and what the shared map cost."""
    dataset: str
    frames_a: int
    frames_b: int
    published_a: int  # A's keyframes written to the shared map
    closures: int  # fleet closures B published
    correct: int  # of them, at a true place of A's traversal
    revisits: int  # B's frames that have a true place in A's traversal
    own_closures_b: int  # loops B closed within its own map (none expected: B drives its route once)
    faiss_ms: float  # B's own-map search, median per frame
    fleet_ms: float  # B's shared-map search and fetch, median per frame
    fleet_ms_p95: float
    publish_s: float  # time for A's last batch to be written after its last frame
    rejections: dict  # B's frames that closed no fleet loop, by the first gate that stopped them

    @property
    def precision(self) -> float:
        return self.correct / self.closures if self.closures else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.revisits if self.revisits else 0.0


def drive(rec: PlaceRecognizer, feats: Extracted, offset_ns: int, reranking: bool, label: str) -> List:
    """Every frame of one traversal through `rec`, as the node would; the frames' results."""
    out = []
    stamps = stream_stamps(len(feats.global_desc), offset_ns)
    for i in tqdm(range(len(stamps)), desc=label):
        local = feats.local[i] if reranking and feats.local else None
        out.append(rec.process_descriptor(feats.global_desc[i], stamps[i], "camera", local=local,
                                          contrast=contrast_of(feats, i)))
    return out


def run(cfg: Config, dataset: str, uri: str, extractor: DescriptorExtractor, tolerance: int = 2) -> FleetRun:
    ds = load_dataset(dataset, tolerance)
    feats = extract_dataset(extractor, ds, cache=default_cache())
    reranking = cfg.rerank.method != "none"

    def robot(name: str) -> PlaceRecognizer:
        c = config_from_dict(cfg.to_dict())
        c.map.backend, c.map.milvus_uri, c.map.robot_id = "milvus", uri, name
        return PlaceRecognizer(c, extractor=extractor)

    a = robot("A")
    results_a = drive(a, feats.database, 0, reranking, "robot A (database)")
    t0 = time.perf_counter()
    a.shared.flush(120.0)
    publish_s = time.perf_counter() - t0
    kid_to_db = {r.place_match.query.id: i for i, r in enumerate(results_a) if r.place_match.is_keyframe}
    b = robot("B")
    results_b = drive(b, feats.queries, B_OFFSET_NS, reranking, "robot B (queries)")
    pos = [set(p.tolist()) for p in ds.positives]
    closures = [(q, r.fleet.closure) for q, r in enumerate(results_b) if r.fleet and r.fleet.closure]
    correct = sum(c.match.keyframe.robot == "A" and kid_to_db.get(c.match.id, -1) in pos[q] for q, c in closures)
    fleet_ms = np.array([r.fleet.ms for r in results_b if r.fleet is not None])
    search_ms = np.array([r.place_match.timings_ms.get("search", np.nan) for r in results_b])
    published = a.shared.stats.published
    a.close()
    b.close()
    return FleetRun(ds.name, len(results_a), len(results_b), published, len(closures), int(correct),
                    sum(1 for p in pos if p), sum(r.loop_closure is not None for r in results_b),
                    float(np.nanmedian(search_ms)), float(np.median(fleet_ms)), float(np.percentile(fleet_ms, 95)),
                    publish_s, dict(b.detector.fleet.rejections))


def table(r: FleetRun, label: str) -> str:
    return "\n".join([
        f"{r.dataset}: robot A drives the database ({r.frames_a} frames), robot B the queries ({r.frames_b}), "
        f"one Milvus map ({label})",
        "| fleet closures | correct | precision | recall | B's own closures | A's keyframes shared | "
        "FAISS search ms | shared map ms (p95) | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r.closures} | {r.correct} | {r.precision:.3f} | {r.recall:.3f} | {r.own_closures_b} | {r.published_a} | "
        f"{r.faiss_ms:.2f} | {r.fleet_ms:.1f} ({r.fleet_ms_p95:.1f}) | {r.fleet_ms / max(r.faiss_ms, 1e-9):.1f}x |",
        "rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(r.rejections.items(), key=lambda kv: -kv[1]))])


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m offline_eval.fleet", description=__doc__)
    ap.add_argument("dataset", nargs="?", default=str(REPO.parent / "shared" / "datasets" / "corridor"))
    ap.add_argument("--config", default=str(REPO / "config" / "default.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--uri", help="a running Milvus (default: a milvus-lite server started here)")
    ap.add_argument("--out", type=Path, help="folder for fleet.json (default: runs/fleet-<time>)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
    except (ConfigError, ValueError) as exc:
        print(f"offline_eval.fleet: {exc}", file=sys.stderr)
        return 2
    extractor = DescriptorExtractor(cfg.model)
    try:
        with tempfile.TemporaryDirectory(prefix="vpr-fleet-") as tmp:
            if args.uri:
                result, label = run(cfg, args.dataset, args.uri, extractor), args.uri
            else:
                with milvus_lite_server(Path(tmp) / "milvus.db") as uri:
                    result, label = run(cfg, args.dataset, uri, extractor), "milvus-lite server, own process"
    except (DatasetError, ConfigError) as exc:
        print(f"offline_eval.fleet: {exc}", file=sys.stderr)
        return 2
    print(table(result, label))
    out = args.out or REPO / "runs" / time.strftime("fleet-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps({**asdict(result), "precision": result.precision,
                                                "recall": result.recall, "store": label}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
