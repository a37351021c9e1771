"""The GPU copy of an exact map (`map.use_gpu`): it returns what the host index returns (float16 scores),
with the exclusion windows inside its one search, through growth, saving and loading.

On a machine with CUDA these run on the GPU (torch backend, or FAISS's when faiss-gpu is installed);
without one, the same torch code runs on the CPU device, so the logic is tested everywhere.
"""
from __future__ import annotations

import numpy as np
import pytest

import vpr_core.gpu_search as gs
import vpr_core.map_database as mdb
from vpr_core.keyframes import Keyframe
from vpr_core.map_database import MapDatabase
from vpr_core.map_schema import MapError

DIM = 64
PERIOD = 100_000_000


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _backend() -> gs.GpuSearch:
    return gs.new_gpu_search(DIM) if gs.gpu_usable() else gs.TorchGpuSearch(DIM, "cpu")


@pytest.fixture
def gpu(monkeypatch):
    """Maps made with use_gpu='true' get a real GPU copy where CUDA exists, else the torch one on the CPU."""
    if not gs.gpu_usable():
        monkeypatch.setattr(mdb, "gpu_usable", lambda: True)
        monkeypatch.setattr(mdb, "new_gpu_search", lambda dim: gs.TorchGpuSearch(dim, "cpu"))
    return gs.gpu_backend() or "torch on the CPU"


def _same_top(got_scores, got_ids, exact_scores, exact_ids, tol=3e-3):
    """Same ranking as exact search, except where float16 rounding may swap two nearly equal scores."""
    assert np.allclose(got_scores, exact_scores, atol=tol)
    for g, e, s in zip(got_ids, exact_ids, exact_scores):
        assert g == e or abs(exact_scores[list(exact_ids).index(e)] - s) <= tol


def test_search_is_exact_search_with_the_excluded_positions_left_out(monkeypatch):
    monkeypatch.setattr(gs, "GROW_ROWS", 7)  # many regrowths while adding
    rng = np.random.default_rng(0)
    x = _unit(rng, 300)
    g = _backend()
    for a in range(0, 300, 13):
        g.add(x[a:a + 13])
    assert len(g) == 300 and g.nbytes >= 300 * DIM * 2
    for trial in range(20):
        q = _unit(rng, 1)
        excluded = np.unique(rng.integers(0, 300, size=int(rng.integers(0, 120))))
        scores, positions = g.search(q, 10, excluded)
        exact = (x @ q[0]).astype(np.float64)
        exact[excluded] = -np.inf
        order = np.argsort(-exact, kind="stable")[:10]
        assert not np.isin(positions, excluded).any(), trial
        _same_top(scores, positions, exact[order], order)


def test_a_query_whose_neighbours_are_all_excluded_gets_only_what_is_left():
    rng = np.random.default_rng(1)
    x = _unit(rng, 50)
    g = _backend()
    g.add(x)
    scores, positions = g.search(x[3:4], 20, np.arange(40))  # 10 left
    assert sorted(positions.tolist()) == list(range(40, 50)) and np.all(np.isfinite(scores))
    assert len(g.search(x[3:4], 5, np.arange(50))[1]) == 0


@pytest.mark.parametrize("index", ["flat", "flat_fp16"])
def test_a_gpu_map_searches_like_the_host_map_through_saving_and_loading(gpu, tmp_path, index):
    rng = np.random.default_rng(2)
    x = _unit(rng, 400)
    host, dev = MapDatabase(DIM, index, "false"), MapDatabase(DIM, index, "true")
    assert dev.on_gpu and not host.on_gpu and dev.gpu_backend
    for i, d in enumerate(x):  # ids not positions: the copy maps back through the map's own order
        host.add(d, Keyframe(1000 + 7 * i, (i + 1) * PERIOD))
        dev.add(d, Keyframe(1000 + 7 * i, (i + 1) * PERIOD))
    back = MapDatabase.load(dev.save(tmp_path / "m.vprmap"), use_gpu="true")
    assert back.on_gpu and len(back) == 400
    for q in x[-30:] + 0.2 * _unit(rng, 30):  # like the recent past: the windows decide what may be found
        want = host.search(q, 8, 401 * PERIOD, 20, 5 * 10**9)
        for db in (dev, back):
            got = db.search(q, 8, 401 * PERIOD, 20, 5 * 10**9)
            assert all(c.keyframe.stamp_ns <= (401 - 50) * PERIOD for c in got)
            _same_top([c.score for c in got], [c.id for c in got], [c.score for c in want], [c.id for c in want])
    assert np.array_equal(back.descriptors_at(np.arange(400)), dev.descriptors_at(np.arange(400)))


def test_use_gpu_true_without_a_gpu_is_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(mdb, "gpu_usable", lambda: False)
    with pytest.raises(MapError, match="no GPU is usable"):
        MapDatabase(DIM, "flat", "true")
    assert not MapDatabase(DIM, "flat", "auto").on_gpu


def test_approximate_index_types_stay_on_the_cpu(gpu):
    for index in ("hnsw", "ivf_fp16", "ivf_rabitq"):
        db = MapDatabase(DIM, index, "true")
        assert not db.on_gpu and db.gpu_backend == ""
