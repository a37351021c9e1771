"""GSV-Cities-style validation sets (`<name>_dbImages.npy`, `_qImages.npy`, `_gt.npy` with a pickled object
array): read with positives per query, a gt that would run code refused without running it, every index
checked."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from vpr_core.datasets import DatasetError, load_dataset


def _write(root, corridor_root, gt, db=None, q=None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    db = db if db is not None else [f"images/db_{i}.jpg" for i in range(6)]
    q = q if q is not None else [f"images/q_{i}.jpg" for i in range(3)]
    for i, name in enumerate(db):
        shutil.copy(corridor_root / "database" / f"{i:07d}.jpg", root / name)
    for i, name in enumerate(q):
        shutil.copy(corridor_root / "query" / f"{i:07d}.jpg", root / name)
    np.save(root / "pitts_tiny_dbImages.npy", np.array(db))
    np.save(root / "pitts_tiny_qImages.npy", np.array(q))
    np.save(root / "pitts_tiny_gt.npy", gt, allow_pickle=True)
    return root


def _ragged(*rows):
    out = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        out[i] = np.array(r, np.int64)
    return out


def test_a_gsv_validation_set_reads_with_its_positives(tmp_path, corridor_root):
    ds = load_dataset(_write(tmp_path / "v", corridor_root, _ragged([0, 1], [1, 2, 3], [])))
    assert (ds.name, len(ds.database), len(ds.queries)) == ("pitts_tiny", 6, 3)
    assert ds.database[2] == tmp_path / "v" / "images" / "db_2.jpg"
    assert [p.tolist() for p in ds.positives] == [[0, 1], [1, 2, 3], []]


def test_a_rectangular_gt_needs_no_pickle(tmp_path, corridor_root):
    ds = load_dataset(_write(tmp_path / "v", corridor_root, np.array([[0, 1], [2, 3], [4, 5]])))
    assert [p.tolist() for p in ds.positives] == [[0, 1], [2, 3], [4, 5]]


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vpr_npy_pwned",))


def test_a_gt_that_would_run_code_is_refused_without_running_it(tmp_path, corridor_root):
    marker = "/tmp/vpr_npy_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    evil = np.empty(3, dtype=object)
    evil[:] = [_Boom(), [1], [2]]
    with pytest.raises(DatasetError, match="not part of a ground-truth file"):
        load_dataset(_write(tmp_path / "v", corridor_root, evil))
    assert not os.path.exists(marker)


@pytest.mark.parametrize("gt,match", [(_ragged([0], [9], [1]), "outside"), (_ragged([0], [1]), "one row"),
                                      (np.array([[0.5], [1.0], [2.0]]), "not integers")])
def test_a_malformed_gt_names_its_fault(tmp_path, corridor_root, gt, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset(_write(tmp_path / "v", corridor_root, gt))


def test_missing_partner_files_and_truncated_gt_are_dataset_errors(tmp_path, corridor_root):
    root = _write(tmp_path / "v", corridor_root, _ragged([0], [1], [2]))
    (root / "pitts_tiny_gt.npy").write_bytes((root / "pitts_tiny_gt.npy").read_bytes()[:90])
    with pytest.raises(DatasetError, match="ground truth|npy"):
        load_dataset(root)
    (root / "pitts_tiny_qImages.npy").unlink()
    with pytest.raises(DatasetError, match="needs pitts_tiny_qImages.npy"):
        load_dataset(root)
