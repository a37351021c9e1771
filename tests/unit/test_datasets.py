"""vpr_core.datasets: the real corridor and Nordland folders, and broken folders in tmp_path."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vpr_core.datasets import LAYOUTS, DatasetError, PlaceDataset, load_dataset


# ---- real data ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corridor(corridor_root):
    return load_dataset(corridor_root)


def test_corridor_has_111_queries_and_111_database_images(corridor, corridor_root):
    assert corridor.name == "corridor" and corridor.root == corridor_root
    assert len(corridor.queries) == 111 and len(corridor.database) == 111
    assert [p.name for p in corridor.database] == [f"{i:07d}.jpg" for i in range(111)]
    assert [p.name for p in corridor.queries] == [f"{i:07d}.jpg" for i in range(111)]
    assert all(p.parent.name == "database" for p in corridor.database)
    assert all(p.parent.name == "query" and p.is_file() for p in corridor.queries)


def test_corridor_positives_are_i_minus_2_to_i_plus_2(corridor):
    assert len(corridor.positives) == 111
    for i, pos in enumerate(corridor.positives):
        expected = np.arange(max(0, i - 2), min(110, i + 2) + 1)
        np.testing.assert_array_equal(pos, expected, err_msg=f"query {i}")
        assert pos.dtype == np.int64


def test_corridor_csv_agrees_with_the_original_vprbench_npy(corridor, corridor_root):
    npy = LAYOUTS.get("vprbench_npy")(corridor_root, 2)
    assert npy is not None
    assert [p.name for p in npy.queries] == [p.name for p in corridor.queries]
    assert [p.name for p in npy.database] == [p.name for p in corridor.database]
    for a, b in zip(npy.positives, corridor.positives):
        np.testing.assert_array_equal(a, b)


def test_csv_pairs_layout_does_not_claim_the_corridor(corridor_root):
    assert LAYOUTS.get("csv_pairs")(corridor_root, 2) is None


@pytest.fixture(scope="module")
def nordland(nordland_root):
    return load_dataset(nordland_root, tolerance=2)


def test_nordland_pairs_and_tolerance(nordland):
    n = len(nordland.queries)
    assert n == 3576 and len(nordland.database) == 3576
    assert all(p.parent.name == "winter" for p in nordland.queries[:5])
    assert all(p.parent.name == "summer" for p in nordland.database[:5])
    for i in (0, 1, 2, 100, 1234, n - 2, n - 1):
        assert nordland.queries[i].name == nordland.database[i].name  # same frame, other season
        expected = np.arange(max(0, i - 2), min(n - 1, i + 2) + 1)
        np.testing.assert_array_equal(nordland.positives[i], expected, err_msg=f"query {i}")
    widths = np.array([len(p) for p in nordland.positives])
    assert widths.max() == 5 and widths.min() == 3  # clipped only at both ends
    for i, pos in enumerate(nordland.positives):
        assert pos.min() >= i - 2 and pos.max() <= i + 2 and i in pos


@pytest.mark.parametrize("tolerance", [0, 1])
def test_nordland_tolerance_setting(nordland_root, tolerance):
    ds = load_dataset(nordland_root, tolerance=tolerance)
    assert len(ds.positives[10]) == 2 * tolerance + 1
    np.testing.assert_array_equal(ds.positives[10], np.arange(10 - tolerance, 11 + tolerance))
    np.testing.assert_array_equal(ds.positives[0], np.arange(0, tolerance + 1))


def test_subset(corridor):
    sub = corridor.subset(max_queries=5, stride=10)
    assert [p.name for p in sub.queries] == [f"{i:07d}.jpg" for i in (0, 10, 20, 30, 40)]
    for q, i in zip(sub.positives, (0, 10, 20, 30, 40)):
        np.testing.assert_array_equal(q, corridor.positives[i])
    assert sub.database == corridor.database and sub.name == corridor.name
    assert len(corridor.subset(stride=50).queries) == 3  # 0, 50, 100
    assert len(corridor.subset().queries) == 111
    assert len(corridor.subset(max_queries=0).queries) == 0
    assert len(corridor.subset(stride=0).queries) == 111  # stride < 1 is treated as 1
    assert len(corridor.queries) == 111  # the original is untouched


# ---- broken folders ---------------------------------------------------------------------------------

def _img(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((4, 6, 3), value, np.uint8))


def _positives_folder(root, n=3):
    for i in range(n):
        _img(root / "query" / f"{i}.png", i)
        _img(root / "database" / f"{i}.png", i)
    return root


def _pairs_folder(root, n=3):
    """Frame-synchronised traversals: winter/i.png and summer/i.png for i < n."""
    for i in range(n):
        _img(root / "winter" / f"{i}.png")
        _img(root / "summer" / f"{i}.png")
    return root


def test_small_csv_positives_folder(tmp_path):
    root = _positives_folder(tmp_path / "mini")
    (root / "ground_truth.csv").write_text("query,positives\nquery/0.png,database/0.png database/1.png\n"
                                           "query/1.png,\nquery/2.png,database/2.png\n")
    ds = load_dataset(root)
    assert [p.name for p in ds.queries] == ["0.png", "1.png", "2.png"]
    np.testing.assert_array_equal(ds.positives[0], [0, 1])
    assert ds.positives[1].size == 0  # a query without positives is allowed
    np.testing.assert_array_equal(ds.positives[2], [2])


def test_folder_without_ground_truth(tmp_path):
    root = _positives_folder(tmp_path / "nogt")
    with pytest.raises(DatasetError, match="no known ground truth"):
        load_dataset(root)


def test_csv_with_an_unknown_header(tmp_path):
    root = _positives_folder(tmp_path / "badheader")
    (root / "ground_truth.csv").write_text("a,b\nquery/0.png,database/0.png\n")
    with pytest.raises(DatasetError, match="no known ground truth"):
        load_dataset(root)


def test_missing_folder_or_a_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DatasetError):
        load_dataset(f)


def test_csv_naming_a_missing_database_image(tmp_path):
    root = _positives_folder(tmp_path / "missingdb")
    (root / "ground_truth.csv").write_text("query,positives\nquery/0.png,database/0.png database/7.png\n")
    with pytest.raises(DatasetError, match="database/7.png"):
        load_dataset(root)


def test_pairs_csv_naming_a_missing_database_image(tmp_path):
    root = _pairs_folder(tmp_path / "pairs", 3)
    (root / "ground_truth.csv").write_text("index,winter,summer\n0,winter/0.png,summer/0.png\n"
                                           "1,winter/1.png,summer/9.png\n")
    with pytest.raises(DatasetError, match="summer/9.png"):
        load_dataset(root)


def test_small_pairs_folder(tmp_path):
    root = _pairs_folder(tmp_path / "pairs", 4)
    (root / "ground_truth.csv").write_text("index,winter,summer\n0,winter/0.png,summer/0.png\n"
                                           "1,winter/1.png,summer/1.png\n2,winter/3.png,summer/3.png\n")
    ds = load_dataset(root, tolerance=1)
    assert len(ds.database) == 4 and len(ds.queries) == 3
    np.testing.assert_array_equal(ds.positives[2], [2, 3])  # database index of summer/3.png is 3


def test_csv_naming_a_missing_query_image(tmp_path):
    root = _positives_folder(tmp_path / "missingq")
    (root / "ground_truth.csv").write_text("query,positives\nquery/0.png,database/0.png\n"
                                           "query/9.png,database/1.png\n")
    with pytest.raises(DatasetError, match="query/9.png"):
        load_dataset(root)


def test_pairs_csv_with_no_rows(tmp_path):
    root = tmp_path / "emptypairs"
    _img(root / "summer" / "0.png")
    (root / "ground_truth.csv").write_text("index,winter,summer\n")
    with pytest.raises(DatasetError):
        load_dataset(root)


def test_positives_csv_with_no_rows(tmp_path):
    root = _positives_folder(tmp_path / "emptypos")
    (root / "ground_truth.csv").write_text("query,positives\n")
    with pytest.raises(DatasetError, match="no query or database images"):
        load_dataset(root)


def test_place_dataset_checks_its_ground_truth(tmp_path):
    db = [tmp_path / "a.png", tmp_path / "b.png"]
    q = [tmp_path / "q.png"]
    with pytest.raises(DatasetError, match="out of range"):
        PlaceDataset("x", tmp_path, db, q, [np.array([0, 2])])
    with pytest.raises(DatasetError, match="out of range"):
        PlaceDataset("x", tmp_path, db, q, [np.array([-1])])
    with pytest.raises(DatasetError, match="1 queries but 2"):
        PlaceDataset("x", tmp_path, db, q, [np.array([0]), np.array([1])])
    assert PlaceDataset("x", tmp_path, db, q, [np.array([1])]).positives[0][0] == 1
