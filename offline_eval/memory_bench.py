"""`python -m offline_eval.memory_bench`: the process's memory over a long mapping run, local features kept in
memory (no budget) against `map.max_local_mb` (the rest spilled), and what reading a spilled keyframe back
costs. Keyframes carry the re-ranking default's real corridor local features (300 x 112-D, cycled, each
keyframe its own copy) and descriptors; each mode runs in a process of its own so the numbers do not mix.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _features(cache: Path):
    from offline_eval.protocol import extract_dataset
    from vpr_core.config import load_config
    from vpr_core.datasets import load_dataset
    from vpr_core.models import DescriptorExtractor
    cfg = load_config(REPO / "config" / "default_rerank.yaml", {"map.use_gpu": "false"})
    ex = DescriptorExtractor(cfg.model)
    f = extract_dataset(ex, load_dataset(REPO.parent / "shared" / "datasets" / "corridor"), progress=False, cache=cache)
    return f.database.global_desc, f.database.local


def _run(n: int, budget_mb: int, every: int, cache: str, out: "mp.Queue") -> None:
    from vpr_core.keyframes import Keyframe
    from vpr_core.local_features import LocalFeatures
    from vpr_core.map_database import MapDatabase
    descs, locals_ = _features(Path(cache))
    db = MapDatabase(descs.shape[1], "flat", "false")
    db.local.limit(budget_mb << 20)
    rng = np.random.default_rng(0)
    base = rss_mb()
    rows: List[tuple] = []
    for i in tqdm(range(n), desc=f"max_local_mb {budget_mb or 'off'}"):
        lf = locals_[i % len(locals_)]
        d = descs[i % len(descs)] + rng.normal(0, 0.01, descs.shape[1]).astype(np.float32)
        db.add(d, Keyframe(i, i * 10**8), LocalFeatures(lf.xy.copy(), lf.desc.copy(), lf.image_hw))
        if (i + 1) % every == 0:
            rows.append((i + 1, rss_mb() - base, db.local.resident_bytes / 2**20))
    old = rng.integers(0, max(1, n // 2), 200)  # keyframes long gone from memory when spilling
    t0 = time.perf_counter()
    for kid in old:
        db.local.get(int(kid))
    get_ms = (time.perf_counter() - t0) * 1e3 / len(old)
    out.put({"rows": rows, "get_ms": get_ms, "spilled": db.local.spilled, "reads": db.local.spill_reads,
             "bytes_per_keyframe": db.local.nbytes / n})


def measure(n: int, budget_mb: int, every: int, cache: Path) -> Dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(n, budget_mb, every, str(cache), q))
    p.start()
    result = q.get()
    p.join()
    return result


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m offline_eval.memory_bench", description=__doc__)
    ap.add_argument("--keyframes", type=int, default=20000)
    ap.add_argument("--max-local-mb", type=int, default=256, help="the budget compared with none")
    ap.add_argument("--every", type=int, default=2000, help="sample the memory every N keyframes")
    ap.add_argument("--budget-only", action="store_true",
                    help="skip the run without a budget (it needs ~72 kB of memory per keyframe)")
    args = ap.parse_args(argv)
    from offline_eval.feature_cache import default_cache
    on = measure(args.keyframes, args.max_local_mb, args.every, default_cache())
    if args.budget_only:
        print(f"| keyframes | max_local_mb {args.max_local_mb}: RSS grown (MB) | its features in memory (MB) |")
        print("|---|---|---|")
        for k, b, res in on["rows"]:
            print(f"| {k} | {b:.0f} | {res:.0f} |")
        return 0
    off = measure(args.keyframes, 0, args.every, default_cache())
    print(f"{args.keyframes} keyframes with real corridor local features "
          f"({off['bytes_per_keyframe'] / 1024:.1f} kB each), memory grown since the map was empty (MB):")
    print(f"| keyframes | no budget: RSS | max_local_mb {args.max_local_mb}: RSS | its features in memory | ratio |")
    print("|---|---|---|---|---|")
    for (k, a, _), (_, b, res) in zip(off["rows"], on["rows"]):
        print(f"| {k} | {a:.0f} | {b:.0f} | {res:.0f} | {a / max(b, 1e-9):.1f}x |")
    print(f"reading back a keyframe's features: {on['get_ms']:.3f} ms spilled ({on['reads']} reads; "
          f"{on['spilled']} keyframes spilled), {off['get_ms']:.3f} ms in memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
