"""Revisited Oxford / Paris (revisitop `gnd_*.pkl` + `jpg/`): the reader builds only the documented structure
(a pickle that would run code is refused without running it), checks every field, and the benchmark scores
mAP / mP@k in the Easy, Medium and Hard settings exactly as hand-computed."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from offline_eval.benchmark import main as benchmark
from offline_eval.landmarks import crop, landmark_scores
from vpr_core.datasets import DatasetError, load_dataset
from vpr_core.datasets.revisited import RevisitedTruth
from vpr_core.metrics import average_precision, mean_average_precision

DB, QUERIES = 8, 3


def _write(root, gnd, imlist=None, qimlist=None, source=None):
    (root / "jpg").mkdir(parents=True, exist_ok=True)
    imlist = imlist if imlist is not None else [f"db_{i}" for i in range(DB)]
    qimlist = qimlist if qimlist is not None else [f"q_{i}" for i in range(QUERIES)]
    if source is not None:  # real pictures: corridor database frames (queries: the same places, other traversal)
        for i, name in enumerate(imlist):
            shutil.copy(source / "database" / f"{10 * i:07d}.jpg", root / "jpg" / f"{name}.jpg")
        for i, name in enumerate(qimlist):
            shutil.copy(source / "query" / f"{10 * (2 * i + 1):07d}.jpg", root / "jpg" / f"{name}.jpg")
    (root / "gnd_tiny.pkl").write_bytes(pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}))
    return root


def _gnd(arrays=False):
    conv = np.array if arrays else list
    return [{"easy": conv([1]), "hard": conv([2]), "junk": conv([3]), "bbx": [10.0, 10.0, 100.0, 90.0]},
            {"easy": conv([3, 4]), "hard": conv([]), "junk": conv([]), "bbx": conv([0.0, 0.0, 160.0, 120.0])},
            {"easy": conv([]), "hard": conv([5]), "junk": conv([6, 7])}]


# ---- the reader -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arrays", [False, True], ids=["lists", "numpy"])
def test_the_reader_gives_medium_positives_and_the_three_settings(tmp_path, corridor_root, arrays):
    ds = load_dataset(_write(tmp_path / "tiny", _gnd(arrays), source=corridor_root))
    assert (ds.name, len(ds.database), len(ds.queries)) == ("tiny", DB, QUERIES)
    assert ds.database[0].name == "db_0.jpg" and ds.queries[2].name == "q_2.jpg"
    assert [p.tolist() for p in ds.positives] == [[1, 2], [3, 4], [5]]  # medium: easy + hard
    t = ds.revisited
    assert [p.tolist() for p in t.setting("easy")[0]] == [[1], [3, 4], []]
    assert [j.tolist() for j in t.setting("easy")[1]] == [[2, 3], [], [5, 6, 7]]
    assert [p.tolist() for p in t.setting("hard")[0]] == [[2], [], [5]]
    assert [j.tolist() for j in t.setting("hard")[1]] == [[1, 3], [3, 4], [6, 7]]
    assert t.boxes[0] == (10.0, 10.0, 100.0, 90.0) and t.boxes[2] is None
    sub = ds.subset(stride=2)
    assert [p.tolist() for p in sub.revisited.hard] == [[2], [5]]
    with pytest.raises(DatasetError, match="not a route"):
        ds.segment(0, 4)


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/vpr_revisited_pwned",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    root = tmp_path / "evil"
    (root / "jpg").mkdir(parents=True)
    marker = "/tmp/vpr_revisited_pwned"
    shutil.rmtree(marker, ignore_errors=True)
    (root / "gnd_evil.pkl").write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Boom()]}))
    with pytest.raises(DatasetError, match="not part of a ground-truth file"):
        load_dataset(root)
    import os
    assert not os.path.exists(marker)


@pytest.mark.parametrize("gnd,match", [
    ([{"easy": [8], "hard": [], "junk": []}] * QUERIES, "integers in"),
    ([{"easy": [1.5], "hard": [], "junk": []}] * QUERIES, "integers in"),
    ([{"easy": [1], "hard": [], "junk": [], "bbx": [5, 5, 1, 1]}] * QUERIES, "bbx"),
    ([{"easy": [1], "hard": [], "junk": []}] * (QUERIES - 1), "one entry per query"),
    ([["not", "a", "dict"]] * QUERIES, "expected a dict"),
])
def test_a_malformed_ground_truth_names_its_fault(tmp_path, gnd, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset(_write(tmp_path / "bad", gnd))


def test_a_truncated_pickle_is_a_dataset_error(tmp_path):
    root = _write(tmp_path / "cut", _gnd())
    pkl = root / "gnd_tiny.pkl"
    pkl.write_bytes(pkl.read_bytes()[:40])
    with pytest.raises(DatasetError, match="not a readable ground truth"):
        load_dataset(root)


# ---- the metric, by hand -----------------------------------------------------------------------------------
def test_average_precision_is_revisitops_trapezoid():
    # positives at ranks 0 and 2: (1 + 1)/2 + (1/2 + 2/3)/2 = 1.5833, over 2 positives
    assert average_precision(np.array([0, 2]), 2) == pytest.approx(1.58333333 / 2)
    assert average_precision(np.array([0, 2]), 3) == pytest.approx(1.58333333 / 3)  # one never found
    assert average_precision(np.array([1]), 1) == pytest.approx((0 + 0.5) / 2)
    assert np.isnan(average_precision(np.array([]), 0))


def test_junk_is_taken_out_before_ranks_are_counted():
    ranked = np.array([[3, 1, 0, 2, 4], [0, 1, 2, 3, 4]])
    got = mean_average_precision(ranked, [np.array([1, 2]), np.array([], np.int64)], [np.array([3]), np.array([])])
    # query 0 without junk 3: [1, 0, 2, 4] -> positives at ranks 0 and 2; query 1 has none: left out of the mean
    assert got.map == pytest.approx(1.58333333 / 2) and np.isnan(got.ap[1])
    # mP@k: precision within min(k, rank of the last positive (3)): @1 1/1, @5 2/3, @10 2/3
    assert got.precision_at == pytest.approx({1: 1.0, 5: 2 / 3, 10: 2 / 3})


def test_landmark_scores_rank_the_whole_database():
    db = np.eye(4, dtype=np.float32)
    q = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.2, 1.0]], np.float32)
    truth = RevisitedTruth([np.array([0]), np.array([2])], [np.array([1]), np.array([], np.int64)],
                           [np.array([], np.int64), np.array([3])], [None, None])
    s = landmark_scores(q, db, truth)
    assert s["easy"].map == pytest.approx(1.0)  # q0: 0 first (1 junk); q1: 3 is junk, then 2 first
    assert s["medium"].map == pytest.approx((1.0 + 1.0) / 2)  # q0: 0 then 1, both on top
    assert s["hard"].map == pytest.approx(1.0) and np.isnan(s["hard"].ap[1])  # q0: 0 junk, 1 first


def test_a_query_is_cropped_to_its_box():
    img = np.arange(120 * 160 * 3, dtype=np.uint8).reshape(120, 160, 3)
    assert crop(img, (10.2, 5.0, 50.0, 40.7)).shape == (36, 40, 3)
    assert crop(img, (150.0, 100.0, 400.0, 300.0)).shape == (20, 10, 3)  # clipped to the picture
    assert crop(img, None) is img


# ---- the benchmark ---------------------------------------------------------------------------------------
def test_vpr_benchmark_prints_and_saves_map_for_the_model_and_for_descriptor_files(tmp_path, corridor_root, capsys):
    root = _write(tmp_path / "tiny", _gnd(), source=corridor_root)
    db = np.eye(DB, dtype=np.float32)  # database image j = axis j: a query's scores set its ranking
    q = np.array([[0.9, 0.8, 0.6, 0.7, 0.5, 0.4, 0.3, 0.2],   # 0 1 3 2 ...: junk 3 out -> positives 1, 2 at ranks 1, 2
                  [0.8, 0.5, 0.4, 0.9, 0.7, 0.3, 0.2, 0.1],   # 3 0 4 ...: positives 3, 4 at ranks 0, 2
                  [0.1, 0.2, 0.3, 0.4, 0.5, 0.8, 0.9, 0.6]],  # 6 5 ...: junk 6 out -> positive 5 at rank 0
                 np.float32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "db.npy", db)
    out = tmp_path / "out"
    assert benchmark([str(root), "--paths", "direct", "--descriptors", str(tmp_path / "q.npy"),
                      str(tmp_path / "db.npy"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "easy mAP" in printed and "queries cropped to their box" in printed
    results = {r["path"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    medium = results["descriptors q"]["landmarks"]["medium"]
    # by hand: q0 (0/1 + 1/2)/2 + (1/2 + 2/3)/2 over 2 = 0.41667; q1 (1 + 1)/2 + (1/2 + 2/3)/2 over 2 = 0.79167; q2 1
    assert medium["map"] == pytest.approx((0.416667 + 0.791667 + 1.0) / 3, abs=1e-5)
    # mP@1: q0 0 (rank 0 is not a positive), q1 1, q2 1
    assert medium["mp_at"]["1"] == pytest.approx(2 / 3)
    direct = results["direct"]["landmarks"]
    assert set(direct) == {"easy", "medium", "hard"} and 0.0 <= direct["medium"]["map"] <= 1.0
