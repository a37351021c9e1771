"""vpr_core.sequence: aligned-sequence scores over the map's driving order, hypotheses, contrast."""
from __future__ import annotations

import numpy as np
import pytest

from vpr_core.keyframes import Keyframe
from vpr_core.map_database import MapDatabase
from vpr_core.sequence import SequenceMatcher, best_other

DIM = 32


def _route(n: int, seed: int = 0) -> np.ndarray:
    """n distinct unit places."""
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _noisy(v: np.ndarray, amount: float, seed: int) -> np.ndarray:
    w = v + amount * np.random.default_rng(seed).normal(size=v.shape).astype(np.float32)
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


def _db(descs: np.ndarray) -> MapDatabase:
    db = MapDatabase(DIM, "flat", "false")
    for i, d in enumerate(descs):
        db.add(d, Keyframe(i, i))
    return db


def test_descriptors_at_reads_the_stored_vectors_in_driving_order():
    route = _route(12)
    db = _db(route)
    got = db.descriptors_at(np.array([3, 0, 11]))
    assert np.allclose(got, route[[3, 0, 11]], atol=1e-6)
    assert db.position(7) == 7 and db.keyframe_at(7).id == 7
    with pytest.raises(IndexError):
        db.descriptors_at(np.array([12]))


def test_the_aligned_sequence_finds_a_place_single_frames_confuse():
    route = _route(60)
    db = _db(route)
    sm = SequenceMatcher(8, [1.0], contrast_window=0)
    # revisit places 30..37 with heavy noise: single frames are unreliable, the line is not
    for k in range(30, 38):
        sm.push(_noisy(route[k], 0.35, seed=k))
    scores = sm.score(db, np.arange(60))
    assert int(np.nanargmax(scores)) == 37
    assert np.isnan(scores[:7]).all(), "a line that starts before the first keyframe cannot be judged"


def test_velocity_lets_the_map_advance_faster_than_the_query():
    route = _route(80)
    db = _db(route)
    sm = SequenceMatcher(6, [1.0, 2.0], contrast_window=0)
    for k in range(40, 52, 2):  # the query saw every second keyframe's place
        sm.push(route[k])
    scores = sm.score(db, np.arange(80))
    assert int(np.nanargmax(scores)) == 50 and scores[50] == pytest.approx(1.0, abs=1e-5)


def test_short_history_scores_nan():
    db = _db(_route(20))
    sm = SequenceMatcher(5, [1.0])
    sm.push(_route(1, seed=3)[0])
    assert np.isnan(sm.score(db, np.arange(5, 20))).all() and not sm.full


def test_contrast_enhancement_prefers_a_peak_over_a_uniformly_bright_stretch():
    """A stretch where every keyframe looks alike (bright overall) against a place that stands out
    from its neighbours: raw cosine picks the bright stretch, contrast picks the peak."""
    base = _route(1, seed=9)[0]
    route = _route(60, seed=1)
    route[10:30] = _noisy(np.tile(base, (20, 1)), 0.05, seed=2)  # uniform stretch, all close to `base`
    query_line = _noisy(np.tile(base, (5, 1)), 0.05, seed=4)
    route[41:46] = _noisy(query_line, 0.15, seed=5)  # the true place: less bright, but a peak among varied places
    db = _db(route)
    ends = np.arange(60)
    raw, ce = SequenceMatcher(5, [1.0], 0), SequenceMatcher(5, [1.0], 5)
    for q in query_line:
        raw.push(q)
        ce.push(q)
    assert 10 <= int(np.nanargmax(raw.score(db, ends))) < 30
    assert int(np.nanargmax(ce.score(db, ends))) == 45


def test_trim_keeps_a_short_burst_of_look_alikes_from_carrying_a_line():
    """The query's last 2 frames look exactly like keyframes 20-21 (two tunnels' dark frames), its other
    18 like nothing in the map: that line's plain mean rests on the burst alone; with the 2 best steps left
    out it scores like noise, while a true revisit (every step similar) keeps its score."""
    rng = np.random.default_rng(3)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    route = unit(rng.normal(size=(60, 1024)).astype(np.float32))  # wide: unrelated frames have cosine ~0
    db = MapDatabase(1024, "flat", "false")
    for i, d in enumerate(route):
        db.add(d, Keyframe(i, i))
    burst = np.concatenate([unit(rng.normal(size=(18, 1024)).astype(np.float32)), route[20:22]])
    revisit = unit(route[40:60] + 0.02 * rng.normal(size=(20, 1024)).astype(np.float32))
    scores = {}
    for name, frames in (("burst", burst), ("revisit", revisit)):
        for trim in (0, 2):
            sm = SequenceMatcher(20, [1.0], contrast_window=0, trim=trim)
            for q in frames:
                sm.push(q)
            scores[name, trim] = sm.score(db, [21, 59])
    assert scores["burst", 0][0] > 0.08 and abs(scores["burst", 2][0]) < 0.05
    assert scores["revisit", 2][1] > 0.9 * scores["revisit", 0][1] > 0.7
    with pytest.raises(ValueError, match="sequence_trim"):
        SequenceMatcher(20, [1.0], 5, trim=-1)


def test_hypotheses_carry_earlier_retrievals_forward():
    sm = SequenceMatcher(3, [1.0, 2.0])
    sm.push(_route(1)[0], [10])
    sm.push(_route(1)[0], [20])
    sm.push(_route(1)[0], [30])
    hyp = sm.hypotheses(map_size=40).tolist()
    assert hyp == sorted({30, 21, 22, 12, 14})
    assert 14 not in sm.hypotheses(map_size=14).tolist()


def test_best_other_ignores_neighbours_and_linked_places():
    scores = np.array([0.9, 0.85, 0.7, 0.6, np.nan], np.float32)
    positions = np.array([10, 12, 50, 90, 200])
    linked = lambda *ids: (lambda i: i in ids)  # noqa: E731
    assert best_other(scores, positions, 0, window=5, same_place=linked(0)) == pytest.approx(0.7)
    assert best_other(scores, positions, 0, 5, linked(0, 2)) == pytest.approx(0.6)
    assert np.isnan(best_other(scores, positions, 0, 100, linked()))


@pytest.mark.parametrize("kw", [dict(length=0, velocities=[1.0]), dict(length=5, velocities=[]),
                                dict(length=5, velocities=[0.0]), dict(length=5, velocities=[1.0], contrast_window=-1)])
def test_bad_settings_are_value_errors(kw):
    with pytest.raises(ValueError, match="detector.sequence"):
        SequenceMatcher(**kw)
