"""Keyframes an IVF map's lists were not trained for (vpr_core.map_coverage): a region met after the training is
searched exactly from its first keyframe (while the lists alone miss it: the test can fail), enough of them
retrain the lists, the exclusion windows hold for them, a loaded map finds the same ones, and their number is
bounded. Recall on real descriptors: tests/unit/test_map_ivf.py (the crowded-map test)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from offline_eval.map_bench import filler
from vpr_core.config import ConfigError, load_config
from vpr_core.keyframes import Keyframe
from vpr_core.map_coverage import Coverage, Uncovered, merge, scan, trained_floor
from vpr_core.map_database import MapDatabase
from vpr_core.map_ivf import IvfSettings, lists_for

DIM = 64
ONE_LIST = IvfSettings(nprobe=1, probe_share=0.0, train_at=200, regrow=2.0, background=False)
PERIOD = 100_000_000


def _places(n: int, seed: int, offset: int, places: int = 20, noise: float = 0.6) -> np.ndarray:
    """n unit descriptors around `places` places living in dimensions [offset, offset + 32): two such regions share
    nothing."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((places, DIM), np.float32)
    centres[:, offset:offset + 32] = rng.normal(size=(places, 32))
    return filler(centres / np.linalg.norm(centres, axis=1, keepdims=True), n, noise=noise, seed=seed)


def _map(settings: IvfSettings, index: str = "ivf_flat", old: int = 600, new: int = 150, places: int = 20):
    """A map trained on region A (`old` keyframes), then `new` keyframes of region B (`places` places) it had
    never seen."""
    a, b = _places(old, 1, 0), _places(new, 2, 32, places, 0.6 if places >= 20 else 0.3)
    db = MapDatabase(DIM, index, "false", ivf=settings)
    for i, d in enumerate(np.concatenate([a, b])):
        db.add(d, Keyframe(1000 + i, (i + 1) * PERIOD))
    return db, a, b


def _top1(db: MapDatabase, queries: np.ndarray) -> list:
    return [db.search(q, 1)[0].keyframe.id for q in queries]


@pytest.mark.parametrize("index", ["ivf_flat", "ivf_rabitq"])
def test_a_region_met_after_training_is_searched_exactly_from_its_first_keyframe(index):
    db, a, b = _map(ONE_LIST, index)
    assert db.ivf_lists == lists_for(400)  # trained on region A alone (at 200 and 400 keyframes)
    assert 140 <= db.uncovered <= 150  # region B
    queries = b + 0.3 * np.random.default_rng(3).normal(size=b.shape).astype(np.float32) / np.sqrt(DIM)
    exact = [1000 + 600 + int(np.argmax(b @ q)) for q in queries]  # region B is nearer than A to each of them
    assert _top1(db, queries) == exact
    blind, _, _ = _map(replace(ONE_LIST, uncovered=0), index)  # the lists alone, one probed: they miss places
    assert blind.uncovered == 0
    assert sum(x != y for x, y in zip(_top1(blind, queries), exact)) >= 10


def test_enough_uncovered_keyframes_retrain_the_lists_with_them(caplog):
    caplog.set_level("INFO")
    db, a, b = _map(replace(ONE_LIST, uncovered=64), places=4)  # a compact region: a list or two of its own
    assert "outside the IVF lists' training: retraining with them" in caplog.text
    assert db.uncovered < 20  # region B has lists of its own now
    queries = b[::7] + 0.3 * np.random.default_rng(4).normal(size=b[::7].shape).astype(np.float32) / np.sqrt(DIM)
    assert _top1(db, queries) == [1000 + 600 + int(np.argmax(b @ q)) for q in queries]  # through the lists now


def test_the_exclusion_windows_hold_for_uncovered_keyframes():
    db, a, b = _map(ONE_LIST)
    stamp = (len(db) + 1) * PERIOD
    for q in b[-40:]:
        hits = db.search(q, 10, stamp, exclude_recent_count=30, exclude_recent_ns=2 * PERIOD)
        assert hits and all(c.keyframe.id < 1000 + len(db) - 30 for c in hits)
        assert hits[0].score == pytest.approx(max(float(d @ q) / np.linalg.norm(q) for d in
                                                  db.descriptors_at(np.arange(len(db) - 30))), abs=1e-5)


@pytest.mark.parametrize("index", ["ivf_fp16", "ivf_rabitq"])
def test_a_loaded_map_finds_the_same_uncovered_keyframes(tmp_path, index):
    db, a, b = _map(ONE_LIST, index)
    back = MapDatabase.load(db.save(tmp_path / "m.vprmap"), use_gpu="false", ivf=db.ivf)
    assert back.uncovered == db.uncovered > 100
    assert np.array_equal(back._uncovered.uncovered_positions(), db._uncovered.uncovered_positions())
    for q in b[::10]:
        assert [(c.keyframe.id, c.score) for c in back.search(q, 5)] == [(c.keyframe.id, c.score) for c in db.search(q, 5)]


def test_a_rebuild_in_the_background_finds_what_a_scan_of_the_new_lists_finds():
    for places in (4, 20):  # region B covered by the new lists, or not (the set then stops at twice 64)
        db, _, _ = _map(replace(ONE_LIST, background=True, uncovered=64), places=places)
        db.wait_rebuild()
        found = scan(db._cpu_index, db._reader(), 64).positions[:2 * 64]
        assert np.array_equal(db._uncovered.uncovered_positions(), found)
        assert len(found) > 0 or places == 4  # (when the worker's lists came depends on the threads' timing)


def test_at_most_twice_the_capacity_is_kept_and_the_rest_counted(caplog):
    db, _, _ = _map(ONE_LIST)
    kept = Uncovered(DIM, 4)
    kept.attach(db._cpu_index, db._reader(), Coverage(0.5, np.arange(20), len(db)))
    assert len(kept) == 8 and kept.dropped == 12 and "more than 8 keyframes" in caplog.text
    assert kept.uncovered_positions().tolist() == list(range(8))
    assert np.allclose(kept._rows[:8], db.descriptors_at(np.arange(8)))


def test_no_capacity_or_no_lists_keeps_nothing():
    db, _, _ = _map(replace(ONE_LIST, uncovered=0))
    assert db.uncovered == 0
    untrained = MapDatabase(DIM, "ivf_flat", "false", ivf=replace(ONE_LIST, train_at=10_000))
    for i, d in enumerate(_places(300, 5, 32)):
        untrained.add(d, Keyframe(i, (i + 1) * PERIOD))
    assert untrained.ivf_lists == 1 and untrained.uncovered == 0  # one list is exact search already


def test_merge_keeps_each_id_once_at_its_best_score_and_drops_padding():
    scores, ids = merge(np.array([0.9, 0.5, 0.1]), np.array([4, 7, -1]), np.array([0.6, 0.95]), np.array([7, 2]), 3)
    assert ids.tolist() == [2, 4, 7] and np.allclose(scores, [0.95, 0.9, 0.6])
    assert merge(np.array([0.3]), np.array([-1]), np.zeros(0), np.zeros(0, np.int64), 5)[1].tolist() == []


def test_trained_floor_is_below_every_map_size_trained_to_that_many_lists():
    sizes = np.unique(np.geomspace(78, 3_000_000, 4000).astype(int))
    assert all(trained_floor(lists_for(int(n))) <= n for n in sizes if lists_for(int(n)) > 1)
    assert trained_floor(lists_for(1_000_000)) >= 0.99 * 1_000_000  # and close to it


def test_the_setting_is_checked():
    with pytest.raises(ValueError, match="uncovered"):
        IvfSettings(uncovered=-1)
    with pytest.raises(ConfigError, match="ivf_uncovered_max"):
        load_config(overrides={"map.ivf_uncovered_max": -5})
    assert load_config().map.ivf_uncovered_max == IvfSettings().uncovered == 4096
