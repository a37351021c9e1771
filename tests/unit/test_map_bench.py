"""offline_eval.map_bench: its baseline is the map's previous search (same results, more searches), its
filler keeps descriptors unit-norm, and its tables report what was measured."""
from __future__ import annotations

import faiss
import numpy as np

from offline_eval.map_bench import SpeedRow, build_map, filler, filtered_after, print_speed, speed_rows

PERIOD = 100_000_000


def test_filler_repeats_real_descriptors_with_small_noise():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(7, 64)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    x = filler(real, 30, noise=0.05)
    assert x.shape == (30, 64) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert np.all(np.sum(x * real[np.arange(30) % 7], axis=1) > 0.99)  # copy i is near real descriptor i % 7


def test_baseline_equals_the_map_search_it_replaced():
    """The benchmark's 'before' row returns what the map's one-search exclusion returns."""
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 32)).astype(np.float32)
    x = filler(real / np.linalg.norm(real, axis=1, keepdims=True), 400)
    stamps = (np.arange(400, dtype=np.int64) + 1) * PERIOD
    flat = faiss.IndexFlatIP(32)
    flat.add(x)
    db = build_map(x, "flat")
    stamp = int(stamps[-1]) + PERIOD
    for q in filler(x[-50:], 10, noise=0.3, seed=3):
        old = filtered_after(flat, stamps, q, 20, 10, 5 * 10**9, stamp)
        assert old == [c.id for c in db.search(q, 20, stamp, 10, 5 * 10**9)]
        assert min(old) >= 0 and max(old) <= 350  # none of the last 49 (strictly within 5 s at 10 Hz)


def test_speed_rows_measure_every_option_and_the_table_prints_them(capsys):
    rng = np.random.default_rng(2)
    real = rng.normal(size=(120, 32)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    rows = speed_rows(real, [500], ["flat", "hnsw"], k=5, count=10, window_s=5.0, n_queries=5, progress=False)
    assert [r.option for r in rows] == ["numpy brute force", "faiss flat, no exclusion",
                                        "flat, exclusion filtered after the search (before)", "map flat", "map hnsw"]
    assert all(r.median_ms > 0 and r.p95_ms >= r.median_ms and r.bytes_per_kf >= 128 for r in rows)
    print_speed(rows + [SpeedRow(500, "x", 1.0, 2.0, 3.0, 100.0)], 5, 10, 5.0)
    out = capsys.readouterr().out
    assert "| 500 | map hnsw |" in out and "| 500 | x | 1.0 | 2.00 | 3.00 |" in out


def _toy_datasets(seed: int, n: int, noise: float, query_seed: int) -> dict:
    """Two toy 'datasets' a and b: n unit database rows each, queries their noisy copies (one positive each)."""
    rng = np.random.default_rng(seed)
    feats = {}
    for name in ("a", "b"):
        db = rng.normal(size=(n, 32)).astype(np.float32)
        db /= np.linalg.norm(db, axis=1, keepdims=True)
        feats[name] = (db, filler(db, n, noise=noise, seed=query_seed), [np.array([i]) for i in range(n)])
    return feats


def test_recall_rows_find_places_among_distractors_of_the_other_dataset():
    """Two toy 'datasets' whose queries are noisy copies of their database: recall 1.0 with and without
    distractors (the other dataset's descriptors never match), the same for every option."""
    from offline_eval.map_bench import print_recall, recall_rows
    feats = _toy_datasets(3, 20, noise=0.2, query_seed=4)
    plain = recall_rows(feats, ["flat", "hnsw"])
    crowded = recall_rows(feats, ["flat", "hnsw"], distractors=300)
    assert plain == crowded == {"a": {"flat": 1.0, "hnsw": 1.0}, "b": {"flat": 1.0, "hnsw": 1.0}}
    print_recall(crowded, 300)


def test_io_row_saves_and_loads_a_map_with_local_features(tmp_path, capsys):
    from offline_eval.map_bench import io_row, print_io
    rng = np.random.default_rng(6)
    real = rng.normal(size=(30, 64)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    row = io_row(real, 40, True, tmp_path)
    assert row.keyframes == 40 and row.local and row.file_mb > 40 * 300 * 112 * 2 / 1e6  # the features are in it
    assert row.save_s > 0 and row.load_s > 0 and row.read_s > 0 and row.load_peak_mb > 0
    assert list(tmp_path.iterdir()) == []  # the file is removed after measuring
    small = io_row(real, 40, False, tmp_path, "ivf_rabitq")  # a compressed map: its exact descriptors are saved too
    assert small.option == "ivf_rabitq" and small.file_mb > 40 * 64 * 2 / 1e6 and not small.local
    print_io([row, small])
    out = capsys.readouterr().out
    assert "| 40 | flat | yes |" in out and "| 40 | ivf_rabitq | no |" in out


def test_large_rows_stream_the_same_distractors_and_score_against_exact_search(capsys):
    """The streamed table's exact reference is what a flat map of the same keyframes finds, and an IVF
    map scanning every list finds the same."""
    from offline_eval.map_bench import filler_chunks, recall_rows
    from offline_eval.map_bench_ivf import large_rows, print_large
    from vpr_core.map_ivf import IvfSettings
    feats = _toy_datasets(8, 30, noise=1.5, query_seed=5)
    assert np.array_equal(np.concatenate([c for _, c in filler_chunks(feats["a"][0], 70000)]),
                          filler(feats["a"][0], 70000))
    ivf = IvfSettings(nprobe=2, train_at=200)
    rows = large_rows(feats, 1000, ["flat", "ivf_flat"], k=5, count=3, window_s=0.5, nprobes=[1000], ivf=ivf,
                      progress=False)
    flat = recall_rows(feats, ["flat"], distractors=1000)
    for r in rows:
        assert r["keyframes"] == 1030 and r["median_ms"] > 0
        assert r["exact"] == flat[r["dataset"]]["flat"]
        assert r["recall"][1000] == r["exact"]  # every list scanned: exact
        assert (r["lists"] > 2) == (r["option"] == "ivf_flat")
        assert r["nprobe_ms"][1000] > 0  # timed at each nprobe too
    print_large(rows, 5, 3, 0.5)
    out = capsys.readouterr().out
    assert "| 1,030 | a | ivf_flat |" in out and "a ivf_flat, nprobe 1000: R@1" in out
    only = large_rows(feats, 1000, ["ivf_flat"], k=5, count=3, window_s=0.5, nprobes=[], ivf=ivf, progress=False,
                      only=["b"])  # b's map alone, a still the filler
    assert [(r["dataset"], r["keyframes"]) for r in only] == [("b", 1030)]
    compressed = large_rows(feats, 1000, ["ivf_rabitq"], k=5, count=3, window_s=0.5, nprobes=[], progress=False,
                            ivf=IvfSettings(nprobe=1000, train_at=200), only=["a"], shortlists=[2000])
    recall, ms = compressed[0]["shortlist"][2000]  # every list scanned, every keyframe re-scored: exact search
    assert recall == compressed[0]["exact"] and ms > 0
    assert only[0]["recall"] == {r["nprobe"]: r["recall"][r["nprobe"]] for r in rows if r["option"] == "ivf_flat"
                                 and r["dataset"] == "b"}


def test_rebuild_rows_time_the_retraining_the_nth_keyframe_starts(capsys):
    from offline_eval.map_bench_ivf import print_rebuild, rebuild_rows
    from vpr_core.map_ivf import IvfSettings
    rng = np.random.default_rng(9)
    real = rng.normal(size=(50, 32)).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    rows = rebuild_rows(real, 390, ["flat", "ivf_fp16"], IvfSettings(nprobe=2, train_at=200), progress=False)
    assert [(r.option, r.lists) for r in rows] == [("ivf_fp16", "5 -> 10")]  # flat has no lists: no row
    assert rows[0].inline_s > 0 and rows[0].adopted_s >= 0.1 and rows[0].added >= 0
    print_rebuild(rows)
    assert "| 390 | ivf_fp16 | 5 -> 10 |" in capsys.readouterr().out
