"""`python -m offline_eval.map_bench`: how the map's search scales, and what each index option costs in recall.

1. Search time at one query per call (the node's hot path) in maps of `--sizes` keyframes, per index
   option (`map.index`), beside numpy brute force, a bare FAISS flat search (no exclusion: the floor) and
   the map's previous search (exclusion filtered after the search) measured in the same run: median and
   p95 ms over `--queries` queries, each with the config's exclusion windows (`exclude_recent_count`,
   `exclude_recent_s`; keyframes 0.1 s apart), build time and index bytes per keyframe. Maps are filled
   with real descriptors (corridor and the Nordland test stretch through the configured model), repeated
   with small noise up to the size; the map's most recent keyframes are real descriptors held out of
   that filler, and the queries are noisy copies of them (a robot sees what it saw a moment ago): what
   makes the exclusion windows costly. "longest add" is the slowest single `add` while building: for the
   IVF options, the rebuild a camera would wait for (vpr_core.map_ivf).
2. Recall@1 of each option against exact search on the real datasets (corridor; Nordland test stretch
   2700:3576, winter queries against the summer database; `--nordland 2050:2650`: the validation stretch,
   where settings are chosen), with the benchmark's positives; then again
   with `--distractors` keyframes in the map before the database (the other dataset's real descriptors,
   repeated with small noise: never a right answer), where an approximate index can lose the place; and
   once more with the database first and the distractors after it. IVF options are also measured at each
   of `--nprobes` (the same map, searched with that many lists).

3. IVF only (offline_eval.map_bench_ivf): `--large N` streams N distractors into each option's map (no second
   copy held: 1M keyframes fit in ~7 GB) and reports search time, Recall@1 against exact search (numpy over
   the same stream) and the longest rebuild; `--rebuild N` times one retraining of an N-keyframe map in the
   adding thread and in the background with keyframes arriving at 10 Hz.

Thread counts come from the config's `runtime` section (FAISS: `runtime.search_threads`, 1 by default).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import faiss
import numpy as np
from tqdm import tqdm

from offline_eval.benchmark import parse_overrides
from offline_eval.feature_cache import default_cache
from offline_eval.protocol import extract_dataset
from vpr_core.config import ConfigError, load_config
from vpr_core.datasets import PlaceDataset, load_dataset
from vpr_core.gpu_search import gpu_usable
from vpr_core.keyframes import Keyframe
from vpr_core.map_database import GPU_TYPES, MapDatabase
from vpr_core.map_index import INDEX_TYPES
from vpr_core.map_ivf import IvfSettings
from vpr_core.metrics import recall_at_k
from vpr_core.runtime import apply_threads

REPO = Path(__file__).resolve().parent.parent
DATASETS = REPO.parent / "shared" / "datasets"
NORDLAND_TEST, NORDLAND_VALIDATION = "2700:3576", "2050:2650"  # route positions (README, Training)
PERIOD_NS = 100_000_000  # keyframes 0.1 s apart (10 Hz), so the 5 s window holds the last 50


@dataclass
class SpeedRow:
    size: int
    option: str
    build_s: float = float("nan")
    median_ms: float = float("nan")
    p95_ms: float = float("nan")
    bytes_per_kf: float = float("nan")
    note: str = ""
    longest_add_ms: float = float("nan")  # slowest single add while building (an IVF rebuild)


def filler(real: np.ndarray, n: int, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """n unit descriptors: the real ones repeated, each copy moved by a little noise (float32)."""
    out = np.empty((n, real.shape[1]), np.float32)
    for a, chunk in filler_chunks(real, n, noise, seed):
        out[a:a + len(chunk)] = chunk
    return out


def filler_chunks(real: np.ndarray, n: int, noise: float = 0.05, seed: int = 0) -> Iterator[Tuple[int, np.ndarray]]:
    """`filler`, 65536 descriptors at a time as (first index, chunk): the same values, never all in memory."""
    rng = np.random.default_rng(seed)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        x = real[np.arange(a, b) % len(real)] + noise * rng.standard_normal((b - a, real.shape[1]), np.float32) \
            / np.sqrt(real.shape[1])
        yield a, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _timed(fn, queries: np.ndarray) -> np.ndarray:
    fn(queries[0])  # warm-up
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        ms.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(ms)


def map_bytes(db: MapDatabase) -> int:
    """Bytes of a map's descriptors as its file stores them: the FAISS index, counted as FAISS writes it (no
    copy: 2.6 GB at 1M), and a compressed index's exact descriptors beside it."""
    size = 0

    def count(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
    faiss.write_index(db._cpu_index, faiss.PyCallbackIOWriter(count))
    return size + (len(db.store) * db.store.row_bytes if db.store is not None else 0)


def build_map(descs: np.ndarray, option: str, progress: bool = False) -> MapDatabase:
    """A map of these descriptors, keyframe i stamped i * 0.1 s."""
    return build_timed(descs, option, progress)[0]


def build_timed(descs: np.ndarray, option: str, progress: bool = False,
                ivf: IvfSettings = IvfSettings(background=False), use_gpu: str = "false") -> Tuple[MapDatabase, float]:
    """`build_map`, and the longest single add in ms (IVF rebuilds in the adding thread by default, so it is
    the longest rebuild: what a camera would wait for without the background rebuild)."""
    db = MapDatabase(descs.shape[1], option, use_gpu, ivf=ivf)
    longest = 0.0
    for i in tqdm(range(len(descs)), desc=f"build {option} {len(descs)}", disable=not progress, mininterval=2):
        t0 = time.perf_counter()
        db.add(descs[i], Keyframe(i, (i + 1) * PERIOD_NS))
        longest = max(longest, time.perf_counter() - t0)
    return db, longest * 1e3


def filtered_after(index: faiss.Index, stamps: np.ndarray, q: np.ndarray, k: int, count: int, window_ns: int,
                   stamp: int) -> List[int]:
    """The map's search before this benchmark's change, kept as a baseline: fetch k + the count-excluded
    keyframes, drop the excluded ones after the search, and search again twice as deep while too few are
    left (a frame that looks like its recent past rescans the map)."""
    n = index.ntotal
    fetch = min(n, k + count)
    while True:
        _, ids = index.search(q[None], fetch)
        out = [int(i) for i in ids[0] if i < n - count and abs(stamp - int(stamps[i])) >= window_ns]
        if len(out) >= k or fetch >= n:
            return out[:k]
        fetch = min(n, fetch * 2)


def speed_rows(real: np.ndarray, sizes: Sequence[int], options: Sequence[str], k: int, count: int,
               window_s: float, n_queries: int, progress: bool, gpu: bool = False) -> List[SpeedRow]:
    """Per map size: the baselines and each option (`gpu`: the exact ones also searched on the GPU, map.use_gpu);
    queries look like the map's last keyframes (a robot sees what it saw a moment ago), so the exclusion
    windows decide what the search may return."""
    rows: List[SpeedRow] = []
    window_ns = int(window_s * 1e9)
    for n in sizes:
        recent = max(count, int(window_ns // PERIOD_NS))
        # the map's last `recent` keyframes are the robot's last seconds: real descriptors found nowhere
        # else in the map (held out of the filler), and the queries look like them
        x = np.concatenate([filler(real[recent:], n - recent), filler(real[:recent], recent, seed=1)])
        stamps = (np.arange(n, dtype=np.int64) + 1) * PERIOD_NS
        stamp = int(stamps[-1]) + PERIOD_NS  # the query comes right after the last keyframe
        queries = filler(x[n - recent:], n_queries, noise=0.3, seed=2)
        usable = n - recent  # what the exclusion windows leave (stamps are 0.1 s apart)

        def brute(q):
            s = x[:usable] @ q  # the recent ones left out by slicing: numpy's best case
            top = np.argpartition(-s, k)[:k]
            return top[np.argsort(-s[top])]
        rows.append(SpeedRow(n, "numpy brute force", 0.0, *_stats(_timed(brute, queries)), x.nbytes / n))
        flat = faiss.IndexFlatIP(x.shape[1])
        t0 = time.perf_counter()
        flat.add(x)
        rows.append(SpeedRow(n, "faiss flat, no exclusion", time.perf_counter() - t0,
                             *_stats(_timed(lambda q: flat.search(q[None], k), queries)), x.nbytes / n))
        rows.append(SpeedRow(n, "flat, exclusion filtered after the search (before)", 0.0, *_stats(_timed(
            lambda q: filtered_after(flat, stamps, q, k, count, window_ns, stamp), queries)), x.nbytes / n))
        flat.reset()  # frees its vectors before the maps are built
        runs = [(o, g) for o in options for g in (("false", "true") if gpu and o in GPU_TYPES else ("false",))]
        for option, use_gpu in runs:
            t0 = time.perf_counter()
            db, longest = build_timed(x, option, progress, use_gpu=use_gpu)
            build = time.perf_counter() - t0
            size = map_bytes(db) / n
            ms = _timed(lambda q: db.search(q, k, stamp, count, window_ns), queries)
            lists = f" ({db.ivf_lists} lists, nprobe {db.ivf_nprobe})" if db.ivf_lists else ""
            where = f" on the GPU ({db.gpu_backend}, float16)" if db.on_gpu else ""
            rows.append(SpeedRow(n, f"map {option}{lists}{where}", build, *_stats(ms), size, longest_add_ms=longest))
            db = None  # freed before the next option is built
    return rows


@dataclass
class IoRow:
    keyframes: int
    local: bool
    option: str
    file_mb: float
    read_s: float  # the file read into memory, nothing else: the floor
    save_s: float
    load_s: float
    save_peak_mb: float  # Python/numpy allocations at their peak during the save (tracemalloc)
    load_peak_mb: float


def io_row(real: np.ndarray, n: int, local: bool, folder: Path, option: str = "flat") -> IoRow:
    """Save and load time of a map of n keyframes (index `option`; with 300 x 112-D local features each, the
    re-ranking default's, when `local`), against reading the file's bytes, and the peak extra memory."""
    from vpr_core.local_features import LocalFeatures
    rng = np.random.default_rng(5)
    pool = []  # a few distinct feature sets, shared by the keyframes: memory here, full bytes in the file
    for _ in range(16 if local else 0):
        d = rng.standard_normal((300, 112)).astype(np.float32)
        pool.append(LocalFeatures(rng.uniform(0, 320, (300, 2)).astype(np.float32),
                                  (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float16), (240, 320)))
    db = MapDatabase(real.shape[1], option, "false", ivf=IvfSettings(background=False))
    with tqdm(total=n, desc=f"io {option} {n}", disable=n < 100_000, mininterval=2) as bar:
        for a, chunk in filler_chunks(real, n):  # never the whole filler in memory (5 GB at 1M x 1280-D)
            for j, d in enumerate(chunk):
                db.add(d, Keyframe(a + j, (a + j + 1) * PERIOD_NS), pool[(a + j) % len(pool)] if pool else None)
            bar.update(len(chunk))
    path = folder / f"io_{n}_{int(local)}.vprmap"
    save_s, save_peak, _ = _time_then_peak(lambda: db.save(path, max_bytes=1 << 40))
    db = None
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        fh.read()
    read_s = time.perf_counter() - t0
    load_s, load_peak, back = _time_then_peak(lambda: MapDatabase.load(path, use_gpu="false", max_bytes=1 << 40))
    assert len(back) == n
    mb = path.stat().st_size / 1e6
    path.unlink()
    return IoRow(n, local, option, mb, read_s, save_s, load_s, save_peak / 1e6, load_peak / 1e6)


def _time_then_peak(fn: Callable[[], Any]) -> Tuple[float, int, Any]:
    """Seconds `fn` takes, then (run again under tracemalloc, which slows Python-heavy work several-fold: 40 s
    instead of ~10 for a 1M-keyframe save) the peak bytes it allocates, and what that second run returned."""
    import tracemalloc
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    try:
        out = fn()
        return seconds, tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def print_io(rows: List[IoRow]) -> None:
    print("\nSave and load (local features: 300 x 112-D per keyframe, float16; peak = Python/numpy "
          "allocations during the call)")
    print("| keyframes | index | local features | file MB | read s | save s | load s | load / read | save peak MB | "
          "load peak MB |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.keyframes:,} | {r.option} | {r.local and 'yes' or 'no'} | {r.file_mb:,.0f} | {r.read_s:.2f} | {r.save_s:.2f} | "
              f"{r.load_s:.2f} | {r.load_s / r.read_s:.1f}x | {r.save_peak_mb:,.0f} | {r.load_peak_mb:,.0f} |")


def _stats(ms: np.ndarray) -> tuple:
    return float(np.median(ms)), float(np.percentile(ms, 95))


def recall_rows(features: Dict[str, tuple], options: Sequence[str], distractors: int = 0,
                progress: bool = False, database_first: bool = False, nprobes: Sequence[int] = (),
                ivf: Optional[IvfSettings] = None) -> Dict[str, Dict[str, float]]:
    """Recall@1 per dataset and option (database mapped, queries searched, no exclusion). With
    `distractors`, the map first holds that many descriptors of the *other* datasets (repeated with small
    noise), so a query must find its place among them: real descriptors that are never a right answer
    (`database_first`: the database, then the distractors). IVF options (`ivf` settings) are measured
    again at each of `nprobes`, as "<option> nprobe <n>"."""
    out: Dict[str, Dict[str, float]] = {}
    for name, (db_desc, q_desc, positives) in features.items():
        others = [np.concatenate(f[:2]) for other, f in features.items() if other != name]
        extra = filler(np.concatenate(others), distractors, seed=3) if distractors and others else None
        out[name] = {}
        for option in options:
            db = MapDatabase(db_desc.shape[1], option, "false", ivf=ivf or IvfSettings())
            parts = [(db_desc, 0)]  # (descriptors, first id): database keyframe i has id i, distractor j after them
            if extra is not None:
                parts.insert(len(parts) if database_first else 0, (extra, len(db_desc)))
            for descs, first in parts:
                for j in tqdm(range(len(descs)), desc=f"{name} {option}", disable=not progress or len(descs) < 10_000,
                              mininterval=2):
                    db.add(descs[j], Keyframe(first + j, (len(db) + 1) * PERIOD_NS))
            db.wait_rebuild()  # searched as trained
            probes = [(option, db.ivf)] + [(f"{option} nprobe {p}", replace(db.ivf, nprobe=p, probe_share=0.0))
                                           for p in (nprobes if db.ivf_lists else ())]
            for label, settings in probes:
                db.set_ivf(settings)
                ranked = np.array([[c.id for c in db.search(q, 1)] for q in q_desc], np.int64)
                out[name][label] = recall_at_k(ranked, positives, (1,))[1]
    return out


def print_speed(rows: List[SpeedRow], k: int, count: int, window_s: float) -> None:
    print(f"\nSearch at one query per call, top {k}, excluding the last {count} keyframes and those within "
          f"{window_s:g} s (keyframes at 10 Hz; ms; ratios = baseline's median / option's, same map, same run)")
    print("| keyframes | option | build s | median ms | p95 ms | vs faiss flat | vs numpy | index bytes / keyframe "
          "| longest add ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    floor = {r.size: r.median_ms for r in rows if r.option.startswith("faiss flat")}
    numpy_ms = {r.size: r.median_ms for r in rows if r.option.startswith("numpy")}
    for r in rows:
        print(f"| {r.size:,} | {r.option} | {r.build_s:.1f} | {r.median_ms:.2f} | {r.p95_ms:.2f} | "
              f"{floor[r.size] / r.median_ms:.2f}x | {numpy_ms.get(r.size, float('nan')) / r.median_ms:.2f}x | "
              f"{r.bytes_per_kf:,.0f} | {r.longest_add_ms:.0f} |")


def print_recall(recalls: Dict[str, Dict[str, float]], distractors: int = 0, database_first: bool = False) -> None:
    options = list(next(iter(recalls.values())))
    print("\nRecall@1 on real datasets (database mapped, queries searched" +
          (f"; the map also holds {distractors:,} distractors: the other dataset's descriptors repeated with noise, "
           f"{'after' if database_first else 'before'} the database)" if distractors else ")"))
    print("| dataset | " + " | ".join(options) + " |\n|---|" + "---|" * len(options))
    for name, by in recalls.items():
        print(f"| {name} | " + " | ".join(f"{by[o]:.3f}" for o in options) + " |")


def _features(ex, ds: PlaceDataset, progress: bool) -> tuple:
    f = extract_dataset(ex, ds, progress=progress, cache=default_cache())
    return f.database.global_desc, f.queries.global_desc, ds.positives


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="map_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="model config (default: config/default.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--sizes", default="10000,100000", help="map sizes of the speed table (keyframes)")
    ap.add_argument("--options", default=",".join(INDEX_TYPES.names()), help="map.index options to compare")
    ap.add_argument("--queries", type=int, default=200, help="queries timed per map")
    ap.add_argument("--distractors", type=int, default=100_000,
                    help="Recall@1 again with this many distractor keyframes in the map (0 = skip)")
    ap.add_argument("--large", type=int, default=0, help="only the streamed crowded-map table (large_rows) at this "
                    "many distractors, for the --options given (the IVF ones: no second copy of the map is held)")
    ap.add_argument("--rebuild", type=int, default=0, help="only the rebuild table (map_bench_ivf.rebuild_rows): "
                    "a map of this many keyframes retrained in the adding thread and in the background at 10 Hz")
    ap.add_argument("--nordland", default=NORDLAND_TEST, metavar="FIRST:END", help="the Nordland stretch "
                    f"(test {NORDLAND_TEST}: what the README reports; validation {NORDLAND_VALIDATION}: what settings "
                    "are chosen on)")
    ap.add_argument("--large-datasets", default="corridor,nordland",
                    help="--large: the datasets whose maps are built (the other's descriptors are still the filler)")
    ap.add_argument("--shortlists", default="", help="--large, ivf_rabitq: Recall@1 and time again with each of "
                    "these map.ivf_shortlist values")
    ap.add_argument("--nprobes", default="16,32,64,128", help="IVF options' recall again at each of these nprobe")
    ap.add_argument("--io", default="20000:local,100000",
                    help="save/load table: KEYFRAMES[:local][:INDEX],... ('' = skip); local = with local features, "
                         "INDEX a map.index option (default flat)")
    ap.add_argument("--gpu", action="store_true", help="also search the exact options on the GPU (map.use_gpu)")
    ap.add_argument("--save-descriptors", metavar="FILE.npy", help="write the real descriptors the tables use and "
                    "stop (for --descriptors on a machine without the datasets or the model)")
    ap.add_argument("--descriptors", metavar="FILE.npy", help="real descriptors saved by --save-descriptors: the "
                    "speed and save/load tables only (the recall tables need the datasets)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = set(options) - set(INDEX_TYPES.names())
    if unknown:
        ap.error(f"unknown --options {sorted(unknown)}; known: {', '.join(INDEX_TYPES.names())}")
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        if args.gpu and not gpu_usable():
            raise ValueError("--gpu: no GPU is usable here (FAISS sees none, torch has no CUDA)")
        if not args.descriptors:  # the recall tables' datasets
            corridor = load_dataset(DATASETS / "corridor")
            nordland = load_dataset(DATASETS / "nordland_summer_winter_64x32").segment_of(args.nordland)
    except (ConfigError, ValueError) as exc:
        print(f"map_bench: {exc}", file=sys.stderr)
        return 2
    apply_threads(cfg.runtime)
    from vpr_core.models import DescriptorExtractor
    progress = not args.no_progress
    d = cfg.detector
    k = max(d.top_k, d.sequence_candidates)
    if args.descriptors:
        real = _load_descriptors(args.descriptors)
        print(f"{len(real)} real descriptors ({real.shape[1]}-D, from {args.descriptors}); "
              f"FAISS threads {faiss.omp_get_max_threads()}")
        return _speed_and_io(args, real, sizes, options, k, d)
    ex = DescriptorExtractor(cfg.model)
    stretch = {NORDLAND_TEST: "test", NORDLAND_VALIDATION: "validation"}.get(args.nordland, "stretch")
    features = {"corridor": _features(ex, corridor, progress),
                f"Nordland {stretch} {args.nordland}": _features(ex, nordland, progress)}
    real = np.concatenate([np.concatenate(f[:2]) for f in features.values()])
    if args.save_descriptors:
        np.save(args.save_descriptors, real)
        print(f"wrote {len(real)} descriptors ({ex.dim}-D, {cfg.model.name}) to {args.save_descriptors}")
        return 0
    print(f"{len(real)} real descriptors ({ex.dim}-D, {cfg.model.name}); FAISS threads {faiss.omp_get_max_threads()}")
    nprobes = [int(p) for p in args.nprobes.split(",") if p.strip()]
    ivf = IvfSettings.of(cfg.map)
    if args.large or args.rebuild:
        from offline_eval.map_bench_ivf import large_rows, print_large, print_rebuild, rebuild_rows
        if args.rebuild:
            print_rebuild(rebuild_rows(real, args.rebuild, options, ivf, progress))
        if args.large:
            only = [n.strip().lower() for n in args.large_datasets.split(",") if n.strip()]
            shortlists = [int(n) for n in args.shortlists.split(",") if n.strip()]
            rows = large_rows(features, args.large, options, k, d.exclude_recent_count, d.exclude_recent_s, nprobes,
                              ivf, progress, only, shortlists)
            print_large(rows, k, d.exclude_recent_count, d.exclude_recent_s)
        return 0
    print_recall(recall_rows(features, options, nprobes=nprobes, ivf=ivf))
    for first in (False, True) if args.distractors else ():
        print_recall(recall_rows(features, options, args.distractors, progress, first, nprobes, ivf),
                     args.distractors, first)
    return _speed_and_io(args, real, sizes, options, k, d)


def _speed_and_io(args: argparse.Namespace, real: np.ndarray, sizes: List[int], options: List[str], k: int,
                  d: Any) -> int:
    """The speed table, then the save/load table, as the command line asks."""
    rows = speed_rows(real, sizes, options, k, d.exclude_recent_count, d.exclude_recent_s, args.queries,
                      not args.no_progress, args.gpu)
    print_speed(rows, k, d.exclude_recent_count, d.exclude_recent_s)
    io_cases = [c.strip().split(":") for c in args.io.split(",") if c.strip()]
    if io_cases:
        folder = REPO / "runs" / "map_bench"
        folder.mkdir(parents=True, exist_ok=True)
        print_io([io_row(real, int(c[0]), "local" in c[1:], folder, next((o for o in c[1:] if o != "local"), "flat"))
                  for c in io_cases])
    return 0


def _load_descriptors(path: str) -> np.ndarray:
    """Unit-norm float32 rows from a .npy file; a clear error for anything else."""
    try:
        real = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"map_bench: --descriptors {path}: {exc}") from None
    if real.ndim != 2 or not len(real) or not np.all(np.isfinite(real)) or \
            not np.allclose(np.linalg.norm(real, axis=1), 1.0, atol=1e-3):
        raise SystemExit(f"map_bench: --descriptors {path}: expected unit-norm finite rows (n, dim), got "
                         f"{real.dtype} {real.shape}")
    return np.ascontiguousarray(real, np.float32)


if __name__ == "__main__":
    sys.exit(main())
