"""A memory budget for local features (map.max_local_mb): beyond it the least recently used move to a spill
file and come back exactly when asked for; saves and loads see every keyframe's features; a spill file that
cannot be written keeps everything in memory (counted), and one that cannot be read back loses that
candidate's verification only; on the real corridor stream with re-ranking a tight budget publishes exactly
what an unlimited one does."""
from __future__ import annotations

import os

import numpy as np
import pytest

from offline_eval.closures import as_stream
from offline_eval.protocol import extract_dataset, stream_stamps
from vpr_core.config import load_config
from vpr_core.datasets import load_dataset
from vpr_core.keyframes import Keyframe
from vpr_core.local_features import LocalFeatures, LocalFeatureStore
from vpr_core.map_database import MapDatabase
from vpr_core.pipeline import PlaceRecognizer

DIM, N, C = 16, 200, 32  # 200 x (8 + 64) = 14,400 bytes of local features per keyframe


def _features(i: int) -> LocalFeatures:
    rng = np.random.default_rng(i)
    return LocalFeatures(rng.uniform(0, 640, (N, 2)).astype(np.float32), rng.normal(size=(N, C)).astype(np.float16),
                         (480, 640))


def _same(a: LocalFeatures, b: LocalFeatures) -> bool:
    return np.array_equal(a.xy, b.xy) and np.array_equal(a.desc, b.desc) and tuple(a.image_hw) == tuple(b.image_hw)


def test_features_beyond_the_budget_are_spilled_and_come_back_exactly(tmp_path):
    store = LocalFeatureStore()
    store.limit(10 * 14_400, str(tmp_path))
    for i in range(100):
        store.add(i, _features(i))
    assert store.resident_bytes <= 10 * 14_400 and store.spilled == 90 and len(store) == 100
    assert list(store.ids()) == list(range(100))  # insertion order kept
    assert all(p.name.startswith("vpr-local-spill-") for p in tmp_path.iterdir())  # nothing else written there
    assert _same(store.get(3), _features(3)) and store.spill_reads == 1
    for i in range(95, 100):  # the newest are in memory: no read
        assert _same(store.get(i), _features(i))
    assert store.spill_reads == 1
    assert _same(store.get(3), _features(3)) and store.spill_reads == 1  # recently used: kept in memory
    for i in range(100):
        assert _same(store.get(i), _features(i)), i
    assert store.resident_bytes <= 10 * 14_400 and store.nbytes == 100 * 14_400


def test_a_spilled_map_saves_and_loads_every_keyframe(tmp_path):
    db = MapDatabase(DIM, "flat", "false")
    db.local.limit(5 * 14_400)
    rng = np.random.default_rng(0)
    for i in range(40):
        db.add(rng.normal(size=DIM), Keyframe(i, i), _features(i))
    frozen = db.freeze()  # taken while most features are on disk; the map moves on
    db.add(rng.normal(size=DIM), Keyframe(40, 40), _features(40))
    frozen.save(tmp_path / "a.vprmap")
    back = MapDatabase.load(tmp_path / "a.vprmap", use_gpu="false")
    assert len(back.local) == 40 and all(_same(back.local.get(i), _features(i)) for i in range(40))
    back.local.limit(5 * 14_400)  # a loaded map spills too (copies, so the file's buffer can go)
    assert back.local.spilled == 35 and all(_same(back.local.get(i), _features(i)) for i in range(40))


def test_a_spill_file_that_cannot_be_written_keeps_everything_in_memory(tmp_path):
    store = LocalFeatureStore()
    store.limit(2 * 14_400, str(tmp_path / "missing" / "folder"))
    for i in range(10):
        store.add(i, _features(i))
    assert store.spill_failures == 1 and store.budget == 0 and store.spilled == 0
    assert all(_same(store.get(i), _features(i)) for i in range(10))


def test_a_record_that_cannot_be_read_back_is_missing_not_an_exception(tmp_path):
    store = LocalFeatureStore()
    store.limit(2 * 14_400, str(tmp_path))
    for i in range(10):
        store.add(i, _features(i))
    os.ftruncate(store._spill._fh.fileno(), 14_400)  # the disk lost most of the file
    assert store.get(5) is None and store.spill_failures == 1
    assert _same(store.get(0), _features(0))  # the first record is still whole


@pytest.fixture(scope="module")
def corridor(repo_root, corridor_root):
    from vpr_core.models import DescriptorExtractor
    cfg = load_config(str(repo_root / "config" / "default_rerank.yaml"), {"map.use_gpu": "false"})
    ex = DescriptorExtractor(cfg.model)
    ds = load_dataset(corridor_root)
    return ex, as_stream(ds, extract_dataset(ex, ds, progress=False))


def test_a_tight_budget_decides_exactly_as_no_budget_on_corridor(repo_root, corridor):
    ex, stream = corridor

    def run(max_mb: int):
        cfg = load_config(str(repo_root / "config" / "default_rerank.yaml"),
                          {"map.use_gpu": "false", "map.max_local_mb": max_mb})
        rec = PlaceRecognizer(cfg, extractor=ex)
        out = []
        for (d, local, contrast), t in zip(stream.features, stream_stamps(len(stream.features))):
            r = rec.process_descriptor(d, t, "camera", local=local, contrast=contrast)
            out.append((r.place_match.query.id, [(c.id, c.verification.num_matches if c.verification else None)
                                                 for c in r.place_match.candidates],
                        r.decision.rejected, r.loop_closure.match.id if r.loop_closure else None))
        return out, rec.db.local
    free, _ = run(0)
    tight, store = run(1)  # 1 MB: ~14 of the corridor's keyframes (300 x 112-D each) in memory
    assert store.spilled > 150 and store.spill_reads > 100  # verification really read spilled features
    assert sum(1 for *_, c in free if c is not None) >= 20
    assert tight == free
