"""Geo-localisation layout (images/<split>/{database,queries}/ with @east@north@... names), written in
tmp_path with real Nordland frames: split choice, radius positives, names that cannot be read."""
from __future__ import annotations

import numpy as np
import pytest

from vpr_core.datasets import LAYOUTS, DatasetError, load_dataset, utm_from_name

EAST, NORTH = 584000.0, 4477000.0


def _name(east: float, north: float, tag: str) -> str:
    return f"@{east:.2f}@{north:.2f}@17@T@040.44@-079.99@{tag}@@0@@@@201311@@.jpg"


def _write_split(real_frame, folder, db_offsets, query_offsets):
    """database/ and queries/ of one split; offsets are (east, north) metres from EAST, NORTH."""
    for i, (de, dn) in enumerate(db_offsets):
        real_frame(i, folder / "database" / _name(EAST + de, NORTH + dn, f"db{i}"))
    for i, (de, dn) in enumerate(query_offsets):
        real_frame(i, folder / "queries" / _name(EAST + de, NORTH + dn, f"q{i}"), season="winter")


DB = [(10.0 * i, 0.0) for i in range(10)]  # a street: one database image every 10 m
QUERIES = [(3.0, 0.0), (45.0, 0.0), (45.0, 8.0), (1000.0, 0.0)]


@pytest.fixture
def geo_root(tmp_path, real_frame):
    root = tmp_path / "pitts_mini"
    _write_split(real_frame, root / "images" / "test", DB, QUERIES)
    _write_split(real_frame, root / "images" / "train", DB[:4], [(12.0, 0.0), (31.0, 0.0)])
    return root


def test_default_is_the_test_split_with_25_m_positives(geo_root):
    ds = load_dataset(geo_root)
    assert ds.name == "pitts_mini/test" and ds.root == geo_root and ds.position_unit == "m"
    assert len(ds.database) == 10 and len(ds.queries) == 4
    assert all(p.parent == geo_root / "images" / "test" / "database" and p.is_file() for p in ds.database)
    np.testing.assert_allclose(ds.db_positions, [(EAST + e, NORTH + n) for e, n in DB])
    np.testing.assert_allclose(ds.query_positions[1], (EAST + 45.0, NORTH))
    np.testing.assert_array_equal(ds.positives[0], [0, 1, 2])  # 3, 7, 17 m; 30 m away at 27 m is not
    np.testing.assert_array_equal(ds.positives[1], [2, 3, 4, 5, 6, 7])  # 25 m on both ends counts
    np.testing.assert_array_equal(ds.positives[2], [3, 4, 5, 6])  # 8 m off the street
    assert ds.positives[3].size == 0  # a query far from every database image


def test_train_split_uses_10_m_and_radius_overrides(geo_root):
    train = load_dataset(geo_root, split="train")
    assert train.name == "pitts_mini/train" and len(train.database) == 4 and len(train.queries) == 2
    np.testing.assert_array_equal(train.positives[0], [1, 2])  # 12 m: 2 and 8 m; 0 m at 12 m is not
    np.testing.assert_array_equal(train.positives[1], [3])
    wide = load_dataset(geo_root, split="train", radius_m=25)
    np.testing.assert_array_equal(wide.positives[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(load_dataset(geo_root, radius_m=5).positives[0], [0])
    for got, expected in zip(train.within(10), train.positives):
        np.testing.assert_array_equal(got, expected)


def test_root_may_be_the_split_folder_itself(geo_root):
    direct = load_dataset(geo_root / "images" / "test")
    assert direct.name == "pitts_mini/test"
    np.testing.assert_array_equal(direct.positives[1], [2, 3, 4, 5, 6, 7])
    assert load_dataset(geo_root / "images" / "train").positives[0].tolist() == [1, 2]  # train: 10 m
    with pytest.raises(DatasetError, match="is the 'test' split but split 'train'"):
        load_dataset(geo_root / "images" / "test", split="train")


def test_missing_or_unknown_split(geo_root):
    with pytest.raises(DatasetError, match="no 'val' split .*splits present: train, test"):
        load_dataset(geo_root, split="val")
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_dataset(geo_root, split="dev")
    (geo_root / "images" / "val" / "database").mkdir(parents=True)
    with pytest.raises(DatasetError, match="queries/ is missing"):
        load_dataset(geo_root, split="val")


def test_a_split_without_queries(geo_root, real_frame):
    val = geo_root / "images" / "val"
    _write_split(real_frame, val, DB[:2], [])
    (val / "queries").mkdir()
    with pytest.raises(DatasetError, match="'val' split has no query images"):
        load_dataset(geo_root, split="val")


def test_a_name_without_utm_is_reported(geo_root, real_frame):
    bad = real_frame(0, geo_root / "images" / "test" / "database" / "frame_0001.jpg")
    with pytest.raises(DatasetError, match="frame_0001.jpg: cannot read the UTM position"):
        load_dataset(geo_root)
    bad.unlink()
    real_frame(0, geo_root / "images" / "test" / "queries" / "@east@4477000@17@T@.jpg")
    with pytest.raises(DatasetError, match="@east@4477000@17@T@.jpg"):
        load_dataset(geo_root)


def test_utm_from_name(tmp_path):
    assert utm_from_name(tmp_path / _name(584184.75, 4477143.95, "p")) == (584184.75, 4477143.95)
    with pytest.raises(DatasetError, match="expected @<utm_east>@<utm_north>"):
        utm_from_name(tmp_path / "@nan@1@.jpg")


def test_metric_positions_do_not_shift_with_a_segment(geo_root):
    ds = load_dataset(geo_root)
    seg = ds.segment(2, 8)
    np.testing.assert_allclose(seg.db_positions, ds.db_positions[2:8])
    assert len(seg.queries) == 2  # the queries whose positives all lie in database 2..7
    for got, expected in zip(seg.within(25), seg.positives):
        np.testing.assert_array_equal(got, expected)


def test_layout_is_registered_and_does_not_claim_other_folders(nordland_root, corridor_root):
    assert "geo_utm" in LAYOUTS.names()
    assert LAYOUTS.get("geo_utm")(nordland_root, 2) is None
    assert LAYOUTS.get("geo_utm")(corridor_root, 2) is None


def test_split_on_a_layout_without_splits(nordland_root):
    with pytest.raises(DatasetError, match="'csv_pairs' dataset, which has no split"):
        load_dataset(nordland_root, split="test")
    with pytest.raises(DatasetError, match="no radius_m"):
        load_dataset(nordland_root, radius_m=10)
