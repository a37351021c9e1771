"""Pair lists (`path1,path2,label`, the DINOVPR input), written in tmp_path beside real Nordland frames:
headers, relative and absolute paths, and the errors that name the line."""
from __future__ import annotations

import numpy as np
import pytest

from vpr_core.datasets import DatasetError, PairList, load_pairs


@pytest.fixture
def folder(tmp_path, real_frame):
    for k in range(4):
        real_frame(k, tmp_path / "summer" / f"{k}.jpg")
        real_frame(k, tmp_path / "winter" / f"{k}.jpg", season="winter")
    return tmp_path


def test_pairs_with_header_comments_and_an_absolute_path(folder):
    absolute = folder / "winter" / "3.jpg"
    (folder / "pairs.csv").write_text("path1,path2,label\n# same frame, other season\nsummer/0.jpg,winter/0.jpg,1\n\n"
                                      f"summer/1.jpg, winter/2.jpg ,0\nsummer/3.jpg,{absolute},1\n")
    pairs = load_pairs(folder / "pairs.csv")
    assert isinstance(pairs, PairList) and pairs.name == "pairs" and pairs.root == folder and len(pairs) == 3
    assert pairs.left == [folder / "summer" / "0.jpg", folder / "summer" / "1.jpg", folder / "summer" / "3.jpg"]
    assert pairs.right == [folder / "winter" / "0.jpg", folder / "winter" / "2.jpg", absolute]
    np.testing.assert_array_equal(pairs.labels, [1, 0, 1])
    assert pairs.labels.dtype == np.int64


def test_pairs_without_header_and_whitespace_separated(folder):
    (folder / "lists").mkdir()
    (folder / "lists" / "train.txt").write_text("../summer/2.jpg ../winter/2.jpg 1\n../summer/2.jpg ../winter/0.jpg 0\n")
    pairs = load_pairs(folder / "lists" / "train.txt")
    assert len(pairs) == 2 and pairs.labels.tolist() == [1, 0]  # the first line was not taken for a header
    assert pairs.left[0].resolve() == (folder / "summer" / "2.jpg").resolve()  # relative to the list's folder


@pytest.mark.parametrize("label", ["2", "-1", "yes", "0.5"])
def test_a_bad_label_names_its_line(folder, label):
    (folder / "bad.csv").write_text(f"a,b,label\nsummer/0.jpg,winter/0.jpg,1\nsummer/1.jpg,winter/1.jpg,{label}\n")
    with pytest.raises(DatasetError, match=f"bad.csv line 3: label must be 0 or 1, got '{label}'"):
        load_pairs(folder / "bad.csv")


def test_a_numeric_bad_label_on_the_first_line_is_not_a_header(folder):
    (folder / "bad.csv").write_text("summer/0.jpg,winter/0.jpg,0.5\n")
    with pytest.raises(DatasetError, match="line 1: label must be 0 or 1"):
        load_pairs(folder / "bad.csv")


def test_a_missing_image_names_its_line(folder):
    (folder / "missing.csv").write_text("summer/0.jpg,winter/0.jpg,1\nsummer/1.jpg,winter/9.jpg,0\n")
    with pytest.raises(DatasetError, match="missing.csv line 2: image not found: .*winter/9.jpg"):
        load_pairs(folder / "missing.csv")


def test_wrong_field_count_empty_list_and_no_file(folder):
    (folder / "short.csv").write_text("summer/0.jpg,winter/0.jpg\n")
    with pytest.raises(DatasetError, match="line 1: expected path1,path2,label .*2 field"):
        load_pairs(folder / "short.csv")
    (folder / "empty.csv").write_text("path1,path2,label\n# nothing yet\n\n")
    with pytest.raises(DatasetError, match="empty.csv: no pairs"):
        load_pairs(folder / "empty.csv")
    with pytest.raises(DatasetError, match="pair list not found"):
        load_pairs(folder / "nope.csv")


def test_pair_list_checks_its_lengths(folder):
    with pytest.raises(DatasetError, match="1 left, 2 right images and 2 labels"):
        PairList("x", folder, [folder / "a"], [folder / "a", folder / "b"], np.array([0, 1]))
