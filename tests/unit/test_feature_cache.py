"""offline_eval.feature_cache: features extracted once are read back exactly, and only for the same model,
settings and image files; a damaged cache file is recomputed, never trusted."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from offline_eval.protocol import extract_dataset
from offline_eval.feature_cache import feature_key, load_features, save_features
from vpr_core.datasets import load_dataset
from vpr_core.local_features import LocalFeatures
from vpr_core.models.vpr_model import Extracted


@pytest.fixture(scope="module")
def small(corridor_root):
    return load_dataset(corridor_root).subset(4, 1).head(12)


def test_a_second_extraction_reads_the_cache_and_gives_the_same_features(small, default_extractor, tmp_path,
                                                                          monkeypatch):
    first = extract_dataset(default_extractor, small, progress=False, cache=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # database and queries
    monkeypatch.setattr(default_extractor, "extract", lambda *a, **k: pytest.fail("the model ran again"))
    again = extract_dataset(default_extractor, small, progress=False, cache=tmp_path)
    for a, b in ((first.database, again.database), (first.queries, again.queries)):
        assert np.array_equal(a.global_desc, b.global_desc) and np.array_equal(a.contrast, b.contrast)


def test_the_key_follows_the_files_and_the_model(small, default_extractor, tmp_path):
    files = [shutil.copy(p, tmp_path / f"{i}.jpg") for i, p in enumerate(small.queries[:3])]
    key = feature_key(default_extractor, files)
    assert key == feature_key(default_extractor, files)
    st = os.stat(files[1])
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the image was replaced
    assert feature_key(default_extractor, files) != key
    assert feature_key(default_extractor, files[:2]) != feature_key(default_extractor, files)


def test_local_features_round_trip_and_a_damaged_file_is_recomputed(tmp_path, caplog):
    rng = np.random.default_rng(0)
    local = [LocalFeatures(rng.uniform(0, 99, (n, 2)).astype(np.float32),
                           rng.normal(size=(n, 8)).astype(np.float16), (120, 160)) for n in (5, 0, 9)]
    ex = Extracted(rng.normal(size=(3, 16)).astype(np.float32), local, np.array([.1, .2, .3], np.float32))
    save_features(tmp_path, "k", ex)
    back = load_features(tmp_path, "k", 3, True)
    assert np.array_equal(back.global_desc, ex.global_desc)
    assert [len(lf) for lf in back.local] == [5, 0, 9] and np.array_equal(back.local[2].desc, local[2].desc)
    assert load_features(tmp_path, "k", 4, True) is None  # another image count: not these features
    (tmp_path / "k.npz").write_bytes(b"not an npz")
    assert load_features(tmp_path, "k", 3, True) is None and "unreadable" in caplog.text
    assert load_features(tmp_path, "missing", 3, False) is None
