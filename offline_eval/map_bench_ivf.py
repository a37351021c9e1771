"""map_bench's IVF measurements: crowded maps too big to hold twice (`--large N`), and what a rebuild costs the
frame that triggers it, in the adding thread and in the background at 10 Hz (`--rebuild N`)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Sequence

import numpy as np
from tqdm import tqdm

from offline_eval.map_bench import PERIOD_NS, _timed, build_timed, filler, filler_chunks, map_bytes
from vpr_core.keyframes import Keyframe
from vpr_core.map_database import MapDatabase
from vpr_core.map_ivf import IvfSettings, lists_for, rebuild, trained_size
from vpr_core.metrics import recall_at_k


def large_rows(features: Dict[str, tuple], n: int, options: Sequence[str], k: int, count: int, window_s: float,
               nprobes: Sequence[int], ivf: IvfSettings, progress: bool,
               only: Sequence[str] = (), shortlists: Sequence[int] = ()) -> List[dict]:
    """Maps too big to hold twice (`--large`): per dataset, `n` distractors of the other dataset streamed into
    each option's map (never all in memory), then the database; its Recall@1 against exact search (numpy over
    the same stream, batched), at each nprobe, and the search time with the exclusion windows. `only`: the
    datasets (name prefixes) whose maps are built; every other one is still a source of distractors.
    `shortlists`: a compressed option's Recall@1 and median time again with each of these shortlists."""
    rows = []
    window_ns = int(window_s * 1e9)
    for name, (db_desc, q_desc, positives) in features.items():
        if only and not any(name.lower().startswith(o) for o in only):
            continue
        other = np.concatenate([np.concatenate(f[:2]) for o, f in features.items() if o != name])
        best = (q_desc @ db_desc.T).max(axis=1)  # exact top-1: database best unless a distractor beats it
        beaten = np.zeros(len(q_desc), bool)
        for _, chunk in filler_chunks(other, n, seed=3):
            beaten |= (chunk @ q_desc.T).max(axis=0) > best
        exact_ids = np.where(beaten, -1, np.argmax(q_desc @ db_desc.T, axis=1))[:, None]
        exact = recall_at_k(exact_ids, positives, (1,))[1]
        for option in options:
            settings = replace(ivf, background=False)
            db = MapDatabase(db_desc.shape[1], option, "false", ivf=settings)
            t0, longest = time.perf_counter(), 0.0
            for a, chunk in tqdm(filler_chunks(other, n, seed=3), total=-(-n // 65536), desc=f"{name} {option}",
                                 disable=not progress):
                for j, d in enumerate(chunk):
                    t1 = time.perf_counter()
                    db.add(d, Keyframe(len(db_desc) + a + j, (len(db) + 1) * PERIOD_NS))
                    longest = max(longest, time.perf_counter() - t1)
            for i, d in enumerate(db_desc):
                db.add(d, Keyframe(i, (len(db) + 1) * PERIOD_NS))
            build = time.perf_counter() - t0  # rebuilds in the adding thread: the longest add is the longest rebuild
            stamp = (len(db) + 1) * PERIOD_NS
            ms = _timed(lambda q: db.search(q, k, stamp, count, window_ns), q_desc)
            row = {"keyframes": len(db), "dataset": name, "option": option, "build_s": build,
                   "longest_add_ms": longest * 1e3, "lists": db.ivf_lists, "median_ms": float(np.median(ms)),
                   "p95_ms": float(np.percentile(ms, 95)), "bytes_per_kf": map_bytes(db) / len(db),
                   "exact": exact, "recall": {}}
            row["nprobe"] = db.ivf_nprobe  # the default settings' for this list count
            row["nprobe_ms"] = {}  # the median search time at each nprobe
            for p in [None, *nprobes]:  # None: the default settings; p: exactly p lists
                db.set_ivf(replace(settings, nprobe=p, probe_share=0.0) if p else settings)
                ranked = np.array([[c.id for c in db.search(q, 1)] for q in q_desc], np.int64)
                row["recall"][p or row["nprobe"]] = recall_at_k(ranked, positives, (1,))[1]
                if p:
                    row["nprobe_ms"][p] = float(np.median(_timed(lambda q: db.search(q, k, stamp, count, window_ns),
                                                                 q_desc)))
            row["shortlist"] = {}  # compressed options: recall and time at the default nprobe with other shortlists
            for n_short in (shortlists if db.store is not None else ()):
                db.set_ivf(replace(settings, shortlist=n_short))
                ranked = np.array([[c.id for c in db.search(q, 1)] for q in q_desc], np.int64)
                ms = _timed(lambda q: db.search(q, k, stamp, count, window_ns), q_desc)
                row["shortlist"][n_short] = (recall_at_k(ranked, positives, (1,))[1], float(np.median(ms)))
            rows.append(row)
            print(f"# {row}", file=sys.stderr, flush=True)  # kept if the run is stopped before its table
            db = None
    return rows


def print_large(rows: List[dict], k: int, count: int, window_s: float) -> None:
    print(f"\nLarge crowded maps (distractors streamed in first, then the database; search: the dataset's queries, "
          f"top {k}, excluding the last {count} and those within {window_s:g} s; Recall@1 vs exact search)")
    probes = sorted({p for r in rows for p in r["recall"]})
    print("| keyframes | dataset | option | lists (nprobe) | build s | longest add ms | median ms | p95 ms | "
          "bytes / keyframe | "
          "R@1 exact | " + " | ".join(f"R@1 nprobe {p}" for p in probes) + " |")
    print("|" + "---|" * (10 + len(probes)))
    for r in rows:
        print(f"| {r['keyframes']:,} | {r['dataset']} | {r['option']} | {r['lists']} ({r.get('nprobe', '-')}) | "
              f"{r['build_s']:.0f} | "
              f"{r['longest_add_ms']:,.0f} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['bytes_per_kf']:,.0f} | "
              f"{r['exact']:.3f} | " + " | ".join(f"{r['recall'][p]:.3f}" if p in r["recall"] else "-" for p in probes) + " |")
    for r in rows:
        for p, ms in r.get("nprobe_ms", {}).items():
            print(f"{r['dataset']} {r['option']}, nprobe {p}: R@1 {r['recall'][p]:.3f}, median {ms:.2f} ms")
        for n_short, (recall, ms) in r.get("shortlist", {}).items():
            print(f"{r['dataset']} {r['option']}, shortlist {n_short} (default nprobe): R@1 {recall:.3f}, "
                  f"median {ms:.2f} ms")


@dataclass
class RebuildRow:
    keyframes: int
    option: str
    lists: str  # before -> after
    inline_s: float  # the rebuild in the adding thread: what that frame waits
    start_ms: float  # background: the add that starts it (copying the index)
    longest_ms: float  # background: the longest add while it runs, adoption included, keyframes at 10 Hz
    adopted_s: float  # background: from its start until the map searches the new lists
    added: int  # keyframes added meanwhile (moved over when it was adopted)


def rebuild_rows(real: np.ndarray, n: int, options: Sequence[str], ivf: IvfSettings, progress: bool) -> List[RebuildRow]:
    """Per IVF option: a map of `n` - 1 keyframes (real descriptors repeated with noise) whose n-th starts a
    retraining to lists_for(n) lists: timed once in the adding thread (directly) and once in the background
    while keyframes keep coming at 10 Hz, timing every add until the new lists are adopted (the first add is
    the one that starts it)."""
    rows = []
    x = filler(real, n + 2000, seed=4)
    for option in options:
        db, _ = build_timed(x[:n - 1], option, progress, replace(ivf, background=False))
        before = db.ivf_lists
        if not before or lists_for(n) <= before:  # not an IVF option, or n is too close to its last rebuild
            continue
        t0 = time.perf_counter()
        rebuild(db._cpu_index, lists_for(n))  # what the inline path runs, result dropped
        inline = time.perf_counter() - t0
        grow = min(ivf.regrow, max(1.0001, 0.999 * n / trained_size(before)))  # due at the n-th keyframe
        db.set_ivf(replace(db.ivf, regrow=grow, background=True))
        ms, started, i = [], time.perf_counter(), n - 1
        while db.ivf_lists == before and i < len(x):
            t1 = time.perf_counter()
            db.add(x[i], Keyframe(i, (i + 1) * PERIOD_NS))
            ms.append((time.perf_counter() - t1) * 1e3)
            i += 1
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - t1)))  # 10 Hz
        rows.append(RebuildRow(n, option, f"{before} -> {db.ivf_lists}", inline, ms[0], max(ms[1:] or [0.0]),
                               time.perf_counter() - started, i - n))
        db = None
    return rows


def print_rebuild(rows: List[RebuildRow]) -> None:
    print("\nIVF rebuild (retraining the lists): in the adding thread, and in the background with keyframes at 10 Hz")
    print("| keyframes | option | lists | in the adding thread s | background: starting add ms | "
          "longest add while it runs ms | adopted after s | keyframes added meanwhile |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.keyframes:,} | {r.option} | {r.lists} | {r.inline_s:.1f} | {r.start_ms:.0f} | {r.longest_ms:.0f} | "
              f"{r.adopted_s:.1f} | {r.added} |")
