"""vpr_core.pipeline: PlaceRecognizer end to end on real images, stats and map swaps."""
from __future__ import annotations

import numpy as np
import pytest

from vpr_core.config import load_config
from vpr_core.images import ImageError
from vpr_core.keyframes import Keyframe
from vpr_core.local_features import DescriptorError
from vpr_core.map_database import MapDatabase, MapError
from vpr_core.pipeline import PipelineStats, PlaceRecognizer

SEC = 1_000_000_000


@pytest.fixture
def cfg():
    # single-frame decision, exclusion by time only, so re-seeing the first frames 100 s later can close a loop
    return load_config(overrides={"detector.sequence_length": 1, "detector.exclude_recent_change": 0.0, "detector.temporal_consistency": 2, "detector.exclude_recent_count": 0, "detector.exclude_recent_s": 5.0,
                                  "map.use_gpu": "false"})


@pytest.fixture
def recognizer(cfg, default_extractor):
    return PlaceRecognizer(cfg, extractor=default_extractor)


def _unit_rows(n, dim, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_process_real_corridor_frames_end_to_end(recognizer, corridor_images, corridor_descriptors):
    pr = recognizer
    assert pr.db.dim == 1280 and len(pr.db) == 0 and pr.detector.db is pr.db
    first = [pr.process(img, i * SEC, "camera") for i, img in enumerate(corridor_images[:2])]
    assert [r.place_match.query.id for r in first] == [0, 1]
    assert all(r.place_match.is_keyframe and r.loop_closure is None for r in first)
    assert all(r.place_match.candidates == [] for r in first)  # all within 5 s of each other
    np.testing.assert_allclose(pr.db.descriptors([0, 1]), corridor_descriptors[:2], atol=1e-5)

    # the same places again, 100 s later
    again = [pr.process(img, (100 + i) * SEC, "camera") for i, img in enumerate(corridor_images[:2])]
    assert [r.place_match.best.id for r in again] == [0, 1]
    assert all(r.place_match.best.score == pytest.approx(1.0, abs=1e-4) for r in again)
    # threshold 0.9 is met at once, temporal_consistency 2 delays the first closure by one frame
    assert [r.loop_closure is not None for r in again] == [False, True]
    assert again[1].loop_closure.match.id == 1 and again[1].loop_closure.query.stamp_ns == 101 * SEC
    assert all(r.place_match.latency_ms > 0 for r in first + again)

    s = pr.stats
    assert (s.frames, s.place_matches, s.keyframes, s.loop_closures) == (4, 4, 4, 1)
    assert len(s.latencies_ms) == 4
    summary = s.summary()
    assert summary["frames"] == 4 and summary["loop_closures"] == 1 and summary["dropped"] == {}
    assert 0 < summary["latency_ms_median"] <= summary["latency_ms_p95"]


def test_describe_matches_the_extractor(recognizer, corridor_images, corridor_descriptors):
    # the recognizer applies runtime.threads: another thread count sums in another order (~1e-7)
    np.testing.assert_allclose(recognizer.describe(corridor_images[:2]), corridor_descriptors[:2], rtol=0, atol=1e-6)


def test_bad_image_raises_and_is_not_counted(recognizer):
    with pytest.raises(ImageError):
        recognizer.process(np.zeros((10, 10), np.uint8), 0, "camera")
    assert recognizer.stats.frames == 0 and len(recognizer.db) == 0


def test_bad_descriptor_raises_and_is_not_counted(recognizer):
    with pytest.raises(DescriptorError):
        recognizer.process_descriptor(np.full(1280, np.nan, np.float32), 0, "camera")
    with pytest.raises(DescriptorError):
        recognizer.process_descriptor(np.ones(100, np.float32), 0, "camera")
    assert recognizer.stats.frames == 0 and len(recognizer.db) == 0


def test_drop_counts_by_reason(recognizer):
    assert recognizer.drop("queue_full") == 1
    assert recognizer.drop("queue_full") == 2
    assert recognizer.drop("decode_error") == 1
    assert recognizer.stats.summary()["dropped"] == {"queue_full": 2, "decode_error": 1}
    assert recognizer.stats.frames == 0


def test_empty_stats_summary():
    summary = PipelineStats().summary()
    assert summary["frames"] == 0 and summary["latency_ms_median"] == 0.0


def _fill(pr, n, seed=0, t0=0):
    for i, d in enumerate(_unit_rows(n, pr.extractor.dim, seed)):
        pr.process_descriptor(d, (t0 + i) * SEC, "camera")


def test_save_map_then_load_map_replaces_the_map(tmp_path, cfg, default_extractor):
    src = PlaceRecognizer(cfg, extractor=default_extractor)
    _fill(src, 7, seed=1)
    path = src.save_map(tmp_path / "seven.vprmap")

    pr = PlaceRecognizer(cfg, extractor=default_extractor)
    _fill(pr, 3, seed=2)
    old_db = pr.db
    assert pr.load_map(path) == 7
    assert pr.db is not old_db and len(pr.db) == 7 and pr.detector.db is pr.db
    assert pr.db.keyframes == src.db.keyframes
    # new frames get ids after both the old stream's and the loaded map's ids
    r = pr.process_descriptor(_unit_rows(1, 1280, seed=3)[0], 500 * SEC, "camera")
    assert r.place_match.query.id == 7 and len(pr.db) == 8
    # and the loaded keyframes are found
    q = src.db.descriptors([4])[0]
    assert pr.process_descriptor(q, 600 * SEC, "camera").place_match.best.id == 4


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_load_map_of_a_bad_file_keeps_the_current_map(tmp_path, recognizer, damage):
    pr = recognizer
    _fill(pr, 5)
    path = pr.save_map(tmp_path / "good.vprmap")
    bad = tmp_path / "bad.vprmap"
    if damage == "truncate":
        data = path.read_bytes()
        bad.write_bytes(data[: len(data) - 40])
    elif damage == "garbage":
        bad.write_bytes(b"\x00garbage" * 64)
    db_before, ids_before = pr.db, sorted(pr.db.keyframes)
    with pytest.raises(MapError):
        pr.load_map(bad)
    assert pr.db is db_before and pr.detector.db is db_before
    assert len(pr.db) == 5 and sorted(pr.db.keyframes) == ids_before
    r = pr.process_descriptor(pr.db.descriptors([2])[0], 100 * SEC, "camera")
    assert r.place_match.best.id == 2 and r.place_match.query.id == 5


def test_load_map_of_another_dimension_keeps_the_current_map(tmp_path, recognizer):
    small = MapDatabase(16, "flat", "false")
    small.add(np.ones(16), Keyframe(0, 0))
    path = small.save(tmp_path / "d16.vprmap")
    _fill(recognizer, 2)
    before = recognizer.db
    with pytest.raises(MapError, match="16-D.*1280-D"):
        recognizer.load_map(path)
    assert recognizer.db is before and len(before) == 2


def test_an_empty_map_passed_in_is_used(cfg, default_extractor):
    db = MapDatabase(default_extractor.dim, "hnsw", "false")
    pr = PlaceRecognizer(cfg, extractor=default_extractor, db=db)
    assert pr.db is db and pr.detector.db is db


def test_a_non_empty_map_passed_in_is_used(cfg, default_extractor):
    db = MapDatabase(default_extractor.dim, "hnsw", "false")
    db.add(np.ones(default_extractor.dim), Keyframe(41, 0))
    pr = PlaceRecognizer(cfg, extractor=default_extractor, db=db)
    assert pr.db is db and pr.detector.db is db
    assert pr.process_descriptor(np.ones(default_extractor.dim), 100 * SEC, "c").place_match.query.id == 42


def test_stats_count_keyframes_and_closures_separately(default_extractor):
    cfg = load_config(overrides={"detector.sequence_length": 1, "detector.exclude_recent_change": 0.0, "detector.keyframe_min_interval_s": 10.0, "detector.exclude_recent_count": 0,
                                 "detector.exclude_recent_s": 0.0, "detector.temporal_consistency": 1})
    pr = PlaceRecognizer(cfg, extractor=default_extractor)
    d = _unit_rows(1, 1280, seed=5)[0]
    results = [pr.process_descriptor(d, t * SEC, "camera") for t in (0, 1, 2, 12)]
    assert [r.place_match.is_keyframe for r in results] == [True, False, False, True]
    assert [r.loop_closure is not None for r in results] == [False, True, True, True]
    s = pr.stats
    assert (s.frames, s.place_matches, s.keyframes, s.loop_closures) == (4, 4, 2, 3)
    assert len(pr.db) == 2


def test_delivery_latency_is_reported_beside_processing(recognizer):
    from vpr_core.pipeline import PipelineStats

    stats = PipelineStats()
    assert "end_to_end_ms_median" not in stats.summary(), "no node: no delivery figures"
    rec_stats, recognizer.stats = recognizer.stats, stats
    try:
        for total, wait in [(40.0, 5.0), (60.0, 25.0), (300.0, 250.0)]:
            recognizer.record_delivery(total, wait)
        s = stats.summary()
    finally:
        recognizer.stats = rec_stats
    assert s["end_to_end_ms_median"] == 60.0 and s["queue_ms_median"] == 25.0
    assert s["end_to_end_ms_p95"] > 250.0 and s["queue_ms_p95"] > 200.0


def _tunnel(nordland_root, frames):
    """Real Nordland summer frames inside a tunnel (train split: route positions 187-201)."""
    from vpr_core.images import load_image
    paths = sorted((nordland_root / "summer").iterdir())
    return [load_image(paths[i]) for i in frames]


def test_image_contrast_tells_a_tunnel_from_a_corridor(nordland_root, corridor_images):
    from vpr_core.images import image_contrast
    dark = _tunnel(nordland_root, [190, 193, 198])
    assert all(image_contrast(im) < 0.02 for im in dark)
    assert all(image_contrast(im) > 0.2 for im in corridor_images)
    assert image_contrast(corridor_images[0].astype(np.uint16) * 257) == pytest.approx(image_contrast(corridor_images[0]),
                                                                                       abs=1e-3)
    assert image_contrast(corridor_images[0][..., 0]) > 0.2  # one channel
    assert image_contrast(np.full((480, 640, 3), 0.5, np.float32)) == 0.0


@pytest.mark.parametrize("gate", [0.04, 0.0])
def test_dark_frames_close_no_loop(cfg, default_extractor, nordland_root, gate):
    """Two passes through tunnels 100 s apart: every dark frame looks like every other one, so without the
    gate they close loops between different tunnels; with it a dark frame closes none (counted), yet stays
    in the map and the sequence (a tunnel's dark run at its place is a sequence's strongest signature)."""
    cfg.detector.min_image_contrast = gate
    pr = PlaceRecognizer(cfg, extractor=default_extractor)
    first = [pr.process(im, i * SEC, "camera") for i, im in enumerate(_tunnel(nordland_root, [188, 190, 192]))]
    later = [pr.process(im, (100 + i) * SEC, "camera") for i, im in enumerate(_tunnel(nordland_root, [196, 198, 200]))]
    closures = sum(r.loop_closure is not None for r in later)
    assert len(pr.db) == 6 and all(r.place_match.is_keyframe for r in first + later)
    if gate:
        assert all(r.decision.rejected == "uninformative" for r in first + later) and closures == 0
        assert pr.stats.rejections["uninformative"] == 6
        assert later[-1].place_match.candidates  # still searched: the PlaceMatch says where it looks like
    else:
        assert closures >= 1  # what the gate prevents
