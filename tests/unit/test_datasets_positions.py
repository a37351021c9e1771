"""Image positions on PlaceDataset: Nordland frames, what subset/segment/head do to them, within(),
the radius search against brute force, and places made of position bins (as_place_images)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from vpr_core.datasets import DatasetError, PlaceDataset, load_dataset, neighbours_within, place_images_from


@pytest.fixture(scope="module")
def nordland(nordland_root):
    return load_dataset(nordland_root, tolerance=2)


def test_nordland_positions_are_route_frames(nordland):
    assert nordland.position_unit == "frame" and nordland.has_positions
    assert nordland.db_positions.shape == (3576, 1) and nordland.db_positions.dtype == np.float64
    np.testing.assert_array_equal(nordland.db_positions[:, 0], np.arange(3576))
    np.testing.assert_array_equal(nordland.query_positions[:, 0], np.arange(3576))  # same frame, other season


def test_within_frames_reproduces_the_tolerance_ground_truth(nordland):
    for got, expected in zip(nordland.within(2), nordland.positives):
        np.testing.assert_array_equal(got, expected)
    zero = nordland.within(0)
    assert all(list(z) == [i] for i, z in enumerate(zero))
    assert zero[5].dtype == np.int64
    np.testing.assert_array_equal(nordland.within(3.5)[0], [0, 1, 2, 3])


def test_segment_renumbers_frame_positions_with_the_positives(nordland):
    seg = nordland.segment(100, 200)
    np.testing.assert_array_equal(seg.db_positions[:, 0], np.arange(100))
    assert len(seg.queries) == 96  # queries 102..197: all their +-2 positives lie inside
    for k, q in enumerate(seg.queries):
        frame = int(seg.query_positions[k, 0])
        assert q.name == seg.database[frame].name  # a query's position is its true database index
    for got, expected in zip(seg.within(2), seg.positives):
        np.testing.assert_array_equal(got, expected)
    head = nordland.head(50)
    np.testing.assert_array_equal(head.db_positions[:, 0], np.arange(50))
    assert head.query_positions[-1, 0] == 47


def test_subset_keeps_the_positions_of_its_queries(nordland):
    sub = nordland.subset(max_queries=10, stride=7)
    np.testing.assert_array_equal(sub.query_positions[:, 0], np.arange(0, 70, 7))
    assert sub.db_positions is nordland.db_positions and sub.position_unit == "frame"
    np.testing.assert_array_equal(sub.within(1)[3], [20, 21, 22])


def test_datasets_without_positions(corridor_root):
    corridor = load_dataset(corridor_root)
    assert corridor.db_positions is None and corridor.query_positions is None and not corridor.has_positions
    assert corridor.segment(10, 20).db_positions is None and corridor.subset(stride=5).query_positions is None
    with pytest.raises(DatasetError, match="no image positions"):
        corridor.within(5)
    with pytest.raises(DatasetError, match="without positions"):
        corridor.as_place_images(5)


def test_place_dataset_checks_its_positions(tmp_path):
    db, q, gt = [tmp_path / "a.png", tmp_path / "b.png"], [tmp_path / "q.png"], [np.array([0])]
    ok = PlaceDataset("x", tmp_path, db, q, gt, [3, 4], [3.5], "frame")
    assert ok.db_positions.shape == (2, 1) and ok.query_positions.shape == (1, 1)  # 1-D -> one coordinate
    with pytest.raises(DatasetError, match="only one"):
        PlaceDataset("x", tmp_path, db, q, gt, db_positions=[0, 1], position_unit="frame")
    with pytest.raises(DatasetError, match="position_unit"):
        PlaceDataset("x", tmp_path, db, q, gt, [0, 1], [0], "feet")
    with pytest.raises(DatasetError, match="expected 2 rows"):
        PlaceDataset("x", tmp_path, db, q, gt, [0, 1, 2], [0], "frame")
    with pytest.raises(DatasetError, match="coordinates"):
        PlaceDataset("x", tmp_path, db, q, gt, [[0, 0], [1, 1]], [0], "m")
    with pytest.raises(DatasetError, match="not finite"):
        PlaceDataset("x", tmp_path, db, q, gt, [0, np.nan], [0], "frame")


def test_neighbours_within_equals_brute_force_including_the_boundary():
    rng = np.random.default_rng(3)
    db = np.round(rng.uniform(0, 300, (1500, 2)))  # integer grid: many pairs exactly at the radius
    q = np.round(rng.uniform(0, 300, (600, 2)))
    got = neighbours_within(q, db, 25.0)
    dist = np.sqrt(((q[:, None] - db[None]) ** 2).sum(-1))
    for i in range(len(q)):
        np.testing.assert_array_equal(got[i], np.flatnonzero(dist[i] <= 25.0), err_msg=f"query {i}")
    assert any((dist[i][got[i]] == 25.0).any() for i in range(len(q)))  # the radius itself is inside
    assert neighbours_within(q[:3], db[:0], 5.0)[0].size == 0
    with pytest.raises(DatasetError, match="radius"):
        neighbours_within(q, db, -1.0)


def test_nordland_places_by_frame_bins(nordland, caplog):
    places = nordland.as_place_images(5)
    assert len(places) == 2 * 3576 and places.position_unit == "frame"
    assert places.paths[:3576] == nordland.queries and places.paths[3576:] == nordland.database
    frames = np.arange(3576)
    np.testing.assert_array_equal(places.labels[:3576], frames // 5)  # winter frame k
    np.testing.assert_array_equal(places.labels[3576:], frames // 5)  # summer frame k: the same place
    assert places.places == 716  # 715 full bins and a last one of frame 3575 alone
    with caplog.at_level(logging.INFO, logger="vpr_core.datasets"):
        kept = place_images_from(nordland, 5, min_images_per_place=3)
    assert kept.places == 715 and len(kept) == 7150 and kept.labels.max() == 714
    assert "dropped 1 of 716 places with fewer than 3 images (2 images)" in caplog.text
    with pytest.raises(DatasetError, match="no place has 11"):
        place_images_from(nordland, 5, min_images_per_place=11)
    with pytest.raises(DatasetError, match="width"):
        nordland.as_place_images(0)
