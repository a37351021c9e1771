"""`python -m offline_eval.memory_bench`: the process's memory over a long mapping run, everything kept in
memory (no budget) against the budgets (`map.max_local_mb` for local features; with `--index ivf_rabitq`,
`map.max_descriptor_mb` for the exact descriptors beside its codes), and what reading a spilled keyframe back
costs. Keyframes carry the re-ranking default's real corridor descriptors and local features (300 x 112-D,
cycled, each keyframe its own copy; `--no-local`: none); each mode runs in a process of its own so the numbers
do not mix.
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


def _run(n: int, budget_mb: int, every: int, cache: str, out: "mp.Queue", index: str = "flat",
         descriptor_mb: int = 0, local: bool = True) -> None:
    from vpr_core.keyframes import Keyframe
    from vpr_core.local_features import LocalFeatures
    from vpr_core.map_database import MapDatabase
    descs, locals_ = _features(Path(cache))
    db = MapDatabase(descs.shape[1], index, "false")
    db.local.limit(budget_mb << 20)
    if db.store is not None:
        db.store.limit(descriptor_mb << 20)
    rng = np.random.default_rng(0)
    base = rss_mb()
    rows: List[tuple] = []
    for i in tqdm(range(n), desc=f"{index}, budgets {budget_mb or 'off'} / {descriptor_mb or 'off'} MB"):
        lf = locals_[i % len(locals_)]
        d = descs[i % len(descs)] + rng.normal(0, 0.01, descs.shape[1]).astype(np.float32)
        db.add(d, Keyframe(i, i * 10**8), LocalFeatures(lf.xy.copy(), lf.desc.copy(), lf.image_hw) if local else None)
        if (i + 1) % every == 0:
            held = db.local.resident_bytes + (db.store.nbytes_in_memory if db.store is not None else 0)
            rows.append((i + 1, rss_mb() - base, held / 2**20))
    db.wait_rebuild()
    old = rng.integers(0, max(1, n // 2), 200)  # keyframes long gone from memory when spilling
    t0 = time.perf_counter()
    for kid in old:
        db.local.get(int(kid))
    get_ms = (time.perf_counter() - t0) * 1e3 / len(old)
    t0 = time.perf_counter()
    for kid in old:
        db.descriptors_at(np.array([db.position(int(kid))]))
    desc_ms = (time.perf_counter() - t0) * 1e3 / len(old)
    out.put({"rows": rows, "get_ms": get_ms, "desc_ms": desc_ms, "spilled": db.local.spilled,
             "reads": db.local.spill_reads, "bytes_per_keyframe": db.local.nbytes / n,
             "descriptors_spilled": db.store.spilled_rows if db.store is not None else 0})


def measure(n: int, budget_mb: int, every: int, cache: Path, index: str = "flat", descriptor_mb: int = 0,
            local: bool = True) -> Dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(n, budget_mb, every, str(cache), q, index, descriptor_mb, local))
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
    ap.add_argument("--index", default="flat", help="map.index of the map (ivf_rabitq: its descriptors can be budgeted)")
    ap.add_argument("--max-descriptor-mb", type=int, default=0, help="ivf_rabitq: the descriptor budget compared")
    ap.add_argument("--no-local", action="store_true", help="keyframes without local features (descriptors only)")
    args = ap.parse_args(argv)
    if args.max_descriptor_mb and args.index != "ivf_rabitq":
        ap.error("--max-descriptor-mb needs --index ivf_rabitq")
    from offline_eval.feature_cache import default_cache
    local_mb = 0 if args.no_local else args.max_local_mb
    budgets = f"max_local_mb {local_mb or 'off'}, max_descriptor_mb {args.max_descriptor_mb or 'off'}"
    run = dict(index=args.index, local=not args.no_local)
    on = measure(args.keyframes, local_mb, args.every, default_cache(), descriptor_mb=args.max_descriptor_mb, **run)
    if args.budget_only:
        print(f"| keyframes | {budgets}: RSS grown (MB) | map data in memory (MB) |")
        print("|---|---|---|")
        for k, b, res in on["rows"]:
            print(f"| {k} | {b:.0f} | {res:.0f} |")
        return 0
    off = measure(args.keyframes, 0, args.every, default_cache(), **run)
    print(f"{args.keyframes} keyframes, map.index {args.index}, "
          + ("no local features" if args.no_local else f"real corridor local features "
             f"({off['bytes_per_keyframe'] / 1024:.1f} kB each)") + ", memory grown since the map was empty (MB):")
    print(f"| keyframes | no budget: RSS | {budgets}: RSS | budgeted data in memory | ratio |")
    print("|---|---|---|---|---|")
    for (k, a, _), (_, b, res) in zip(off["rows"], on["rows"]):
        print(f"| {k} | {a:.0f} | {b:.0f} | {res:.0f} | {a / max(b, 1e-9):.1f}x |")
    if not args.no_local:
        print(f"reading back a keyframe's features: {on['get_ms']:.3f} ms spilled ({on['reads']} reads; "
              f"{on['spilled']} keyframes spilled), {off['get_ms']:.3f} ms in memory")
    if on["descriptors_spilled"]:
        print(f"reading back an old keyframe's descriptor: {on['desc_ms']:.3f} ms ({on['descriptors_spilled']} "
              f"descriptors spilled), {off['desc_ms']:.3f} ms in memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
