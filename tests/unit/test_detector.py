"""vpr_core.detector: threshold + temporal consistency, exclusion windows and the keyframe policy."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vpr_core.config import DetectorConfig
from vpr_core.decision import FrameResult, LoopClosure, PlaceMatch
from vpr_core.detector import LoopClosureDetector
from vpr_core.keyframes import Keyframe
from vpr_core.map_database import MapDatabase

DIM = 64
SEC = 1_000_000_000


def _places(n, seed=0):
    """n random unit descriptors: distinct places (pairwise cosine well below 0.9 at this size)."""
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert np.max(np.abs(v @ v.T - np.eye(n))) < 0.6
    return v


def _noisy(v, seed, amount=0.02):
    w = v + amount * np.random.default_rng(seed).normal(size=v.shape).astype(np.float32)
    return w / np.linalg.norm(w)


def _mix(a, b, cos):
    """A unit vector with cosine `cos` to unit vector `a`, in the plane of a and b."""
    b = b - (b @ a) * a
    b /= np.linalg.norm(b)
    return (cos * a + np.sqrt(1 - cos ** 2) * b).astype(np.float32)


def _cfg(**kw):
    base = dict(top_k=3, exclude_recent_count=2, exclude_recent_s=0.0, loop_threshold=0.9,
                temporal_consistency=3, consistency_window=2, mapping=True,
                keyframe_min_interval_s=0.0, keyframe_max_similarity=1.0, sequence_length=1, exclude_recent_change=0.0)
    base.update(kw)
    return DetectorConfig(**base)


def _detector(**kw):
    return LoopClosureDetector(_cfg(**kw), MapDatabase(DIM, "flat", "false"))


def _run(det, descs, t0=0):
    return [det.process(d, (t0 + i) * SEC, "cam") for i, d in enumerate(descs)]


def test_revisit_closes_a_loop_only_after_temporal_consistency_frames():
    places = _places(10)
    det = _detector(temporal_consistency=3)
    first = _run(det, places)
    assert all(r.loop_closure is None for r in first)
    revisit = [_noisy(places[k], seed=k) for k in (2, 3, 4, 5)]
    results = _run(det, revisit, t0=100)
    for r, k in zip(results, (2, 3, 4, 5)):
        assert isinstance(r, FrameResult) and isinstance(r.place_match, PlaceMatch)
        assert r.place_match.best.id == k and r.place_match.best.score > 0.95
    assert [r.loop_closure is not None for r in results] == [False, False, True, True]
    closure = results[2].loop_closure
    assert isinstance(closure, LoopClosure)
    assert closure.match.id == 4 and closure.score == pytest.approx(closure.match.score)
    assert closure.query.id == 12 and closure.query.stamp_ns == 102 * SEC and closure.query.frame_id == "cam"
    assert closure.query is results[2].place_match.query
    assert closure.verification.method == "none" and not closure.verification.verified


@pytest.mark.parametrize("tc", [1, 2, 4])
def test_closure_comes_exactly_at_the_temporal_consistency_frame(tc):
    places = _places(12)
    det = _detector(temporal_consistency=tc)
    _run(det, places)
    results = _run(det, [_noisy(places[k], seed=k) for k in range(2, 8)], t0=100)
    flags = [r.loop_closure is not None for r in results]
    assert flags == [i + 1 >= tc for i in range(6)]


def test_below_threshold_gives_matches_but_no_closure():
    places = _places(10)
    det = _detector(temporal_consistency=1, loop_threshold=0.9)
    _run(det, places)
    other = _places(10, seed=1)
    near = [_mix(places[k], other[k], 0.85) for k in (2, 3, 4, 5)]
    results = _run(det, near, t0=100)
    for r, k in zip(results, (2, 3, 4, 5)):
        assert r.loop_closure is None
        assert r.place_match.best.id == k
        assert r.place_match.best.score == pytest.approx(0.85, abs=1e-4)
    # the same frames close a loop once the threshold is below their score
    det2 = _detector(temporal_consistency=1, loop_threshold=0.8)
    _run(det2, places)
    assert all(r.loop_closure is not None for r in _run(det2, near, t0=100))


def test_a_frame_below_threshold_resets_the_streak():
    places = _places(12)
    det = _detector(temporal_consistency=2)
    _run(det, places)
    strange = _places(1, seed=7)[0]
    seq = [_noisy(places[3], 1), strange, _noisy(places[5], 2), _noisy(places[6], 3)]
    flags = [r.loop_closure is not None for r in _run(det, seq, t0=100)]
    assert flags == [False, False, False, True]


def test_matches_that_jump_around_never_agree():
    places = _places(30)
    det = _detector(temporal_consistency=2, consistency_window=2, exclude_recent_count=0)
    _run(det, places)
    jumping = [_noisy(places[k], seed=k) for k in (3, 20, 6, 25, 9)]  # each > 2 ids from the last
    results = _run(det, jumping, t0=100)
    assert [r.place_match.best.id for r in results] == [3, 20, 6, 25, 9]
    assert all(r.loop_closure is None for r in results)


def test_exclusion_window_prevents_matching_the_previous_frame():
    place = _places(1)[0]
    stationary = [_noisy(place, seed=i, amount=0.01) for i in range(4)]
    det = _detector(exclude_recent_count=1, temporal_consistency=1)
    results = _run(det, stationary)
    assert results[1].place_match.candidates == []  # the only keyframe is the most recent one
    assert results[1].loop_closure is None
    assert [c.id for c in results[2].place_match.candidates] == [0]  # 1 is excluded, 0 is allowed
    assert {c.id for c in results[3].place_match.candidates} == {0, 1}  # 2 is excluded
    # control: without the exclusion the robot "closes a loop" with the previous frame
    det0 = _detector(exclude_recent_count=0, temporal_consistency=1)
    results0 = _run(det0, stationary)
    assert results0[1].loop_closure is not None and results0[1].loop_closure.match.id == 0
    assert results0[3].place_match.best.score > 0.99


def test_time_exclusion_window():
    place = _places(1)[0]
    det = _detector(exclude_recent_count=0, exclude_recent_s=5.0, temporal_consistency=1)
    stamps = [0, 1, 2, 3, 4, 5, 6]
    results = [det.process(_noisy(place, seed=s, amount=0.01), s * SEC, "cam") for s in stamps]
    assert [r.loop_closure is not None for r in results] == [False] * 5 + [True, True]
    assert results[5].loop_closure.match.id == 0  # exactly 5 s old is outside the window
    assert {c.id for c in results[6].place_match.candidates} == {0, 1}


def test_query_ids_increase_every_frame_and_keyframes_join_the_map():
    det = _detector()
    results = _run(det, _places(5))
    assert [r.place_match.query.id for r in results] == [0, 1, 2, 3, 4]
    assert all(r.place_match.is_keyframe for r in results)
    assert len(det.db) == 5 and sorted(det.db.keyframes) == [0, 1, 2, 3, 4]
    assert det.db.keyframes[3].stamp_ns == 3 * SEC


def test_pose_is_kept_with_the_keyframe():
    det = _detector()
    pose = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]
    r = det.process(_places(1)[0], 5 * SEC, "base_link", pose=pose)
    assert det.db.keyframes[r.place_match.query.id].pose == pose
    assert det.db.keyframes[r.place_match.query.id].frame_id == "base_link"


# ---- keyframe policy --------------------------------------------------------------------------------

def test_mapping_false_adds_nothing_but_still_localises():
    places = _places(6)
    db = MapDatabase(DIM, "flat", "false")
    for i, d in enumerate(places):
        db.add(d, Keyframe(i, i * SEC))
    det = LoopClosureDetector(_cfg(mapping=False, exclude_recent_count=0, temporal_consistency=1), db)
    results = _run(det, [_noisy(places[k], seed=k) for k in (1, 2, 3)], t0=100)
    assert len(db) == 6
    assert not any(r.place_match.is_keyframe for r in results)
    assert [r.loop_closure.match.id for r in results] == [1, 2, 3]
    assert [r.place_match.query.id for r in results] == [6, 7, 8]  # ids continue after the map's


def test_mapping_false_on_an_empty_map():
    det = _detector(mapping=False)
    results = _run(det, _places(3))
    assert len(det.db) == 0 and all(r.place_match.candidates == [] for r in results)


def test_keyframe_min_interval():
    det = _detector(keyframe_min_interval_s=1.0)
    places = _places(5)
    stamps_s = [0.0, 0.5, 1.0, 1.6, 2.0]
    flags = [det.process(d, int(t * SEC), "cam").place_match.is_keyframe for d, t in zip(places, stamps_s)]
    assert flags == [True, False, True, False, True]
    assert len(det.db) == 3


def test_keyframe_max_similarity_skips_near_duplicates():
    place, other = _places(2)
    det = _detector(keyframe_max_similarity=0.95)
    seq = [place, _noisy(place, 1, amount=0.01), _mix(place, other, 0.9), other]
    flags = [r.place_match.is_keyframe for r in _run(det, seq)]
    assert flags == [True, False, True, True]
    # 1.0 means "never skip"
    det1 = _detector(keyframe_max_similarity=1.0)
    assert all(r.place_match.is_keyframe for r in _run(det1, [place, place, place]))


def test_keyframe_max_similarity_uses_cosine_for_unnormalised_descriptors():
    place, other = _places(2)
    det = _detector(keyframe_max_similarity=0.95)
    a = 10.0 * place
    b = 10.0 * _mix(place, other, 0.5)  # cosine 0.5: clearly a new place
    flags = [r.place_match.is_keyframe for r in _run(det, [a, b])]
    assert flags == [True, True]


def test_bad_descriptor_raises_and_changes_nothing():
    from vpr_core.local_features import DescriptorError
    places = _places(5)
    det = _detector()
    _run(det, places)
    bad = places[0].copy()
    bad[0] = np.nan
    with pytest.raises(DescriptorError):
        det.process(bad, 10 * SEC, "cam")
    assert len(det.db) == 5
    assert det.process(places[1], 11 * SEC, "cam").place_match.query.id == 5  # the bad frame used no id


# ---- map swaps --------------------------------------------------------------------------------------

def test_ids_keep_increasing_after_reset_map_with_a_loaded_map(tmp_path):
    places = _places(8)
    det = _detector()
    _run(det, places[:5])  # ids 0..4
    other = MapDatabase(DIM, "flat", "false")
    for j, i in enumerate((100, 101, 102)):
        other.add(places[5 + j], Keyframe(i, i * SEC))
    loaded = MapDatabase.load(other.save(tmp_path / "m.vprmap"), expected_dim=DIM, use_gpu="false")
    det.reset_map(loaded)
    assert det.db is loaded
    r = det.process(_places(1, seed=3)[0], 200 * SEC, "cam")
    assert r.place_match.query.id == 103 and 103 in loaded.keyframes

    small = MapDatabase(DIM, "flat", "false")
    small.add(places[0], Keyframe(0, 0))
    det.reset_map(small)  # a map with lower ids must not make ids go back
    r = det.process(_places(1, seed=4)[0], 300 * SEC, "cam")
    assert r.place_match.query.id == 104 and sorted(small.keyframes) == [0, 104]


def test_reset_map_clears_the_streak_and_keyframe_history():
    places = _places(10)
    det = _detector(temporal_consistency=2, keyframe_min_interval_s=50.0)
    _run(det, places)  # only frame 0 becomes a keyframe (the others are < 50 s later)
    assert len(det.db) == 1
    db2 = MapDatabase(DIM, "flat", "false")
    for i, d in enumerate(places):
        db2.add(d, Keyframe(i + 20, i * SEC))
    det.reset_map(db2)
    r = det.process(_noisy(places[3], 1), 10 * SEC, "cam")
    assert r.place_match.is_keyframe  # keyframe timer restarted with the new map
    assert r.loop_closure is None  # streak restarted: one agreeing frame is not enough
    assert r.place_match.best.id == 23


# ---- configuration checks --------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"loop_threshold": 1.5}, {"loop_threshold": -0.1}, {"loop_threshold": float("nan")},
                                {"top_k": 0}, {"temporal_consistency": 0}])
def test_invalid_settings_are_value_errors(kw):
    with pytest.raises(ValueError):
        _detector(**kw)


def test_threshold_bounds_are_allowed():
    for t in (0.0, 1.0):
        det = _detector(loop_threshold=t)
        assert det.cfg.loop_threshold == t
    assert dataclasses.asdict(_cfg())["loop_threshold"] == 0.9
