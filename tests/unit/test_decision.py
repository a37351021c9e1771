"""The loop-closure decision: every rejection reason, the exclusion windows, keyframes by motion,
place links and relocalisation (vpr_core.detector, vpr_core.keyframes)."""
from __future__ import annotations

import numpy as np
import pytest

from vpr_core.config import DetectorConfig, RerankConfig
from vpr_core.consistency import Consistency
from vpr_core.decision import REJECTIONS, STAGES
from vpr_core.detector import LoopClosureDetector
from vpr_core.geometry import CameraModel, PoseConfig
from vpr_core.keyframes import check_pose, pose_angle_deg, pose_distance
from vpr_core.local_features import LocalFeatures
from vpr_core.map_database import MapDatabase

DIM = 64
SEC = 1_000_000_000


def _places(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _noisy(v, seed, amount=0.02):
    w = v + amount * np.random.default_rng(seed).normal(size=v.shape).astype(np.float32)
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


def _det(rerank=None, **kw):
    base = dict(top_k=3, exclude_recent_count=2, exclude_recent_s=0.0, exclude_recent_change=0.0,
                loop_threshold=0.9, temporal_consistency=1, consistency_window=2, sequence_length=1)
    base.update(kw)
    return LoopClosureDetector(DetectorConfig(**base), MapDatabase(DIM, "flat", "false"), rerank)


def _pose(x=0.0, yaw_deg=0.0):
    h = np.radians(yaw_deg) / 2
    return [x, 0.0, 0.0, 0.0, 0.0, float(np.sin(h)), float(np.cos(h))]


def _run(det, descs, t0=0, **kw):
    return [det.process(d, (t0 + i) * SEC, "cam", **kw) for i, d in enumerate(descs)]


def test_every_rejection_reason_is_named_and_counted():
    det = _det(temporal_consistency=2)
    places = _places(8)
    r = _run(det, places)
    assert r[0].decision.rejected == "empty_map"
    assert r[1].decision.rejected == "too_recent"  # the only keyframe is inside the count window
    assert {x.decision.rejected for x in r[3:]} == {"below_threshold"}  # distinct places
    again = _run(det, [_noisy(places[k], k) for k in (2, 3)], t0=100)
    assert again[0].decision.rejected == "inconsistent" and again[0].decision.streak == 1
    assert again[1].loop_closure is not None and again[1].decision.rejected == ""
    assert set(det.rejections) <= set(REJECTIONS)
    assert det.rejections["empty_map"] == 1 and det.rejections["inconsistent"] == 1
    assert sum(det.rejections.values()) == len(r) + 1


def test_short_sequence_then_sequence_closure():
    places = _places(40)
    det = _det(sequence_length=5, sequence_contrast_window=0, sequence_threshold=0.9, sequence_candidates=5,
               exclude_recent_count=0, exclude_recent_s=1.5)
    first = _run(det, places)
    assert first[2].decision.rejected == "short_sequence", "keyframe 0 is matchable, but 3 frames are no sequence"
    assert first[6].decision.rejected == "below_threshold"
    r = _run(det, [_noisy(places[k], k) for k in range(10, 20)], t0=1000)
    assert all(x.loop_closure is not None for x in r[5:])
    assert [x.loop_closure.match.id for x in r[5:]] == list(range(15, 20))
    assert all(x.loop_closure.sequence_score > 0.9 for x in r[5:])


def test_margin_rejects_a_place_that_looks_like_another():
    places = _places(10)
    twin = _noisy(places[2], 99, 0.01)
    det = _det(min_margin=0.05, margin_window=1, exclude_recent_count=0, exclude_recent_s=20.0)
    _run(det, list(places) + [twin])  # place 2 and its twin at position 10: two places, one look
    assert det.rejections["too_recent"] == 10, "the twin was too recent to close onto place 2"
    det.cfg.exclude_recent_s = 5.0
    r = det.process(_noisy(places[2], 7), 100 * SEC, "cam")
    assert r.decision.rejected == "ambiguous" and r.decision.margin < 0.05
    r = det.process(_noisy(places[5], 8), 101 * SEC, "cam")
    assert r.loop_closure is not None and r.loop_closure.margin > 0.05


def test_a_closure_links_places_so_the_third_visit_is_not_ambiguous():
    places = _places(10)
    det = _det(min_margin=0.05, margin_window=1, exclude_recent_count=0, exclude_recent_s=5.0)
    _run(det, places)
    second = det.process(_noisy(places[4], 1), 100 * SEC, "cam")  # second visit: closes onto keyframe 4
    assert second.loop_closure is not None and second.place_match.is_keyframe
    third = det.process(_noisy(places[4], 2), 200 * SEC, "cam")  # sees keyframe 4 and keyframe 10 alike
    assert {c.id for c in third.place_match.candidates[:2]} == {4, 10}
    assert third.loop_closure is not None, third.decision


def test_appearance_change_window_grows_while_the_view_stands_still():
    places = _places(30)
    det = _det(exclude_recent_count=0, exclude_recent_s=1.0, exclude_recent_change=2.0)
    still = [_noisy(places[0], s, 0.005) for s in range(20)]  # a stopped robot: 20 s of the same view
    r = _run(det, still)
    assert all(x.loop_closure is None for x in r)
    assert r[-1].decision.rejected == "too_recent", "1 s passed long ago, the view never changed"
    moving = _run(det, places[1:8], t0=20)  # 7 new places: change accumulates (~1 per frame)
    back = det.process(_noisy(places[0], 77, 0.005), 40 * SEC, "cam")
    assert back.loop_closure is not None and back.loop_closure.match.id < 20
    assert all(x.decision.rejected in ("below_threshold", "too_recent") for x in moving)


def test_distance_window_and_keyframes_by_motion():
    det = _det(exclude_recent_count=0, exclude_recent_s=0.0, exclude_recent_m=5.0,
               keyframe_min_distance_m=1.0, keyframe_min_rotation_deg=30.0)
    view = _places(1)[0]
    xs = [0.0, 0.2, 0.5, 1.1, 1.3, 2.5]
    r = [det.process(_noisy(view, i, 0.001), i * SEC, "cam", pose=_pose(x)) for i, x in enumerate(xs)]
    assert [x.place_match.is_keyframe for x in r] == [True, False, False, True, False, True]
    assert r[3].place_match.query.pose == pytest.approx(_pose(1.1))
    turn = det.process(_noisy(view, 9, 0.001), 10 * SEC, "cam", pose=_pose(2.6, yaw_deg=45))
    assert turn.place_match.is_keyframe, "a 45 deg turn makes a keyframe although it moved 0.1 m"
    assert all(x.loop_closure is None for x in r), "everything is within 5 m of travel"
    far = det.process(_noisy(view, 10, 0.001), 20 * SEC, "cam", pose=_pose(9.0))
    assert far.loop_closure is not None and far.loop_closure.match.id == 0


def test_pose_helpers_and_bad_poses():
    assert pose_distance(_pose(1.0), _pose(4.0)) == pytest.approx(3.0)
    assert pose_angle_deg(_pose(yaw_deg=10), _pose(yaw_deg=-20)) == pytest.approx(30.0)
    for bad in ([0, 0, 0], [0, 0, float("nan"), 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0]):
        with pytest.raises(ValueError, match="pose"):
            check_pose(bad)
    det = _det()
    with pytest.raises(ValueError):
        det.process(_places(1)[0], SEC, "cam", pose=[1.0, 2.0])
    assert len(det.db) == 0 and len(det.sequence) == 0, "a bad pose changes nothing"


def _grid_features(seed, n=300):
    rng = np.random.default_rng(seed)
    xy = np.stack(np.meshgrid(np.arange(20) * 16 + 8, np.arange(15) * 16 + 8), -1).reshape(-1, 2)[:n]
    d = rng.normal(size=(len(xy), 16)).astype(np.float32)
    return LocalFeatures(xy.astype(np.float32), (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float16),
                         (240, 320))


def test_unverified_and_degenerate_geometry():
    places = _places(6)
    rcfg = RerankConfig(method="mnn", top_k=3, min_inliers=250)
    det = _det(rerank=rcfg, exclude_recent_count=0, exclude_recent_s=5.0)
    feats = [_grid_features(i) for i in range(6)]
    _run_local = lambda d, t, lf, **kw: det.process(d, t * SEC, "cam", local=lf, **kw)  # noqa: E731
    for i in range(6):
        _run_local(places[i], i, feats[i])
    # same place, unrelated local features: few mutual matches -> unverified
    r = _run_local(_noisy(places[1], 3), 100, _grid_features(50))
    assert r.decision.rejected == "unverified"
    # verified by matches (identical features), but all of them on one image row: degenerate geometry
    det.rerank_cfg.min_inliers = det.reranker.min_inliers = 10
    line = feats[2]
    on_a_row = LocalFeatures(np.stack([line.xy[:, 0], np.full(len(line), 120.0)], 1).astype(np.float32),
                             line.desc, line.image_hw)
    cam = CameraModel.from_fov(60.0, 320, 240)
    det.pose_cfg = PoseConfig(max_keypoint_noise_deg=90.0)  # let the 5-point pose run on 16-px cells
    det.db.local.put(2, det.db.local.check(on_a_row))
    r = _run_local(_noisy(places[2], 4), 101, line, camera=cam)
    assert r.decision.rejected == "degenerate_geometry" and r.decision.detail, r.decision
    assert r.decision.candidate.verification.pose is not None and not r.decision.candidate.verification.pose.ok


def test_relocalise_changes_nothing():
    places = _places(10)
    det = _det(exclude_recent_count=5)
    _run(det, places)
    before = (len(det.db), det._next_id, len(det.sequence), dict(det.rejections))
    found = det.relocalise(_noisy(places[9], 3), k=3)
    assert found[0].id == 9, "no exclusion window applies to relocalisation"
    assert (len(det.db), det._next_id, len(det.sequence), dict(det.rejections)) == before
    with pytest.raises(Exception):
        det.relocalise(np.full(DIM, np.nan, np.float32), k=3)


def test_mapping_switch():
    det = _det()
    det.mapping = False
    assert not det.process(_places(1)[0], SEC, "cam").place_match.is_keyframe
    det.mapping = True
    assert det.process(_places(1)[0], 2 * SEC, "cam").place_match.is_keyframe


def test_stage_timings_are_reported_per_frame_and_in_the_stats(default_extractor, corridor_images):
    from vpr_core.config import load_config
    from vpr_core.pipeline import PlaceRecognizer
    pr = PlaceRecognizer(load_config(overrides={"map.use_gpu": "false"}), extractor=default_extractor)
    results = [pr.process(img, (i + 1) * SEC, "cam") for i, img in enumerate(corridor_images)]
    assert set(results[-1].place_match.timings_ms) >= {"model", "search", "decision"}
    assert all(v >= 0 for v in results[-1].place_match.timings_ms.values())
    assert results[-1].place_match.timings_ms["model"] > results[-1].place_match.timings_ms["search"]
    t = results[-1].place_match.timings_ms  # the model's time split into preprocessing and the forward pass
    assert 0 < t["preprocess"] and 0 < t["forward"] and t["preprocess"] + t["forward"] <= t["model"] + 1e-6
    assert set(t) <= set(STAGES)
    pr.record_stage("decode", 1.5)
    summary = pr.stats.summary()
    assert summary["stage_ms_median"]["decode"] == 1.5 and "model" in summary["stage_ms_p95"]


@pytest.fixture(scope="module")
def corridor_stream(default_extractor, corridor_root):
    """The corridor's database then query traversal as one stream: descriptors and ground truth."""
    from vpr_core.datasets import load_dataset
    from vpr_core.images import load_image

    ds = load_dataset(corridor_root)
    frames = list(ds.database) + list(ds.queries)
    return default_extractor([load_image(p) for p in frames]), len(ds.database), ds.positives


def test_consistency_wants_the_match_to_move_with_the_query():
    """Frame numbers (time in frame periods): a streak grows while the matched place advances as the query
    does (at a velocity of the band, give or take the window), across a dropped frame too; a match that
    slides back, leaps ahead or stands still while the query moves starts a new streak."""
    c = Consistency(window=2, velocities=(0.8, 1.25), span=2)
    assert [c.update(m, q) for m, q in [(10, 100), (11, 101), (12, 102), (14, 104)]] == [1, 2, 3, 4]
    assert c.update(11, 105) == 1  # slid back 3 places while the query moved on: a sequence end off the place
    assert [c.update(m, q) for m, q in [(12, 106), (17, 107)]] == [2, 1]  # leapt 5 places in one frame
    assert c.update(None) == 0
    still = Consistency(window=1, velocities=(0.8, 1.25), span=2)
    assert [still.update(20, q) for q in (200, 201, 202)] == [1, 2, 1]  # stuck: 1.6 frames off over 2 frames
    old_rule = Consistency(window=5, velocities=(1.0,), span=1)
    assert [old_rule.update(m, q) for m, q in [(10, 100), (8, 101), (12, 102)]] == [1, 2, 3]


@pytest.mark.parametrize("dropped", [
    {8, 18, 20, 38, 39, 51, 128, 172, 174, 190},  # 6 database and 4 query frames: 4 false counting by index
    {3, 8, 16, 38, 58, 66, 109, 136, 180, 181},  # query 25 dropped: 27 -> 24 counted in time alone
])
def test_dropped_frames_do_not_bend_the_sequence_into_a_false_closure(corridor_stream, default_extractor, dropped):
    """A full queue drops frames; counting frames by index bent the aligned line and closed loops up to 5
    frames off the true place. Counted in time, with matches that must move with the query, the line holds."""
    from vpr_core.config import load_config
    from vpr_core.pipeline import PlaceRecognizer

    desc, n_db, positives = corridor_stream
    rec = PlaceRecognizer(load_config(), extractor=default_extractor)
    frame_of, false, closures = {}, [], 0
    for i in (i for i in range(len(desc)) if i not in dropped):
        r = rec.process_descriptor(desc[i], (i + 1) * 100_000_000, "camera")
        frame_of[r.place_match.query.id] = i
        if r.loop_closure is not None:
            closures += 1
            m = frame_of[r.loop_closure.match.id]
            if not (i >= n_db and m in positives[i - n_db]):
                false.append((i - n_db, m))
    # the sequence's end is only as sharp as the model: a closure may land 1 frame beyond the +-2
    # tolerance (3 frames off) where frames are missing; counted by index they landed up to 5 off
    assert all(abs(q - m) <= 3 for q, m in false), f"closures off the true place: {false}"
    assert len(false) <= 1, f"false closures (query frame, database frame): {false}"
    assert closures >= 20
