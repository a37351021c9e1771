"""Thread counts come from the config (runtime.*), not from library defaults: applied process-wide
when the pipeline is built, checked like every other parameter."""
from __future__ import annotations

import cv2
import faiss
import pytest
import torch

from vpr_core.config import ConfigError, RuntimeConfig, load_config
from vpr_core.runtime import apply_threads, auto_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads(), faiss.omp_get_max_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])
    cv2.setNumThreads(before[2])


def test_auto_leaves_three_quarters_of_the_cores_to_slam():
    assert [auto_threads(n) for n in (1, 2, 4, 8, 16)] == [1, 1, 1, 2, 4]
    assert auto_threads() >= 1


def test_apply_sets_every_library(restore_threads):
    got = apply_threads(RuntimeConfig(threads=2, search_threads=2, opencv_threads=2))
    assert (got.torch, got.search, got.opencv) == (2, 2, 2)
    assert torch.get_num_threads() == 2 and faiss.omp_get_max_threads() == 2 and cv2.getNumThreads() == 2
    got = apply_threads(RuntimeConfig(threads=1, search_threads=1, opencv_threads=1))
    assert (torch.get_num_threads(), faiss.omp_get_max_threads(), cv2.getNumThreads()) == (1, 1, 1)
    assert apply_threads(RuntimeConfig(threads=0)).torch == auto_threads()


def test_numpy_blas_pool_is_capped(restore_threads):
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(internal_api="openblas")
    before = [i["num_threads"] for i in blas.info()]
    try:
        got = apply_threads(RuntimeConfig(threads=1, blas_threads=1))
        assert got.blas == 1
        assert all(i["num_threads"] == 1 for i in ThreadpoolController().select(internal_api="openblas").info())
    finally:
        if before:
            blas.limit(limits=max(before))


def test_the_pipeline_applies_the_configured_counts(restore_threads, default_extractor):
    from vpr_core.pipeline import PlaceRecognizer

    torch.set_num_threads(2)
    rec = PlaceRecognizer(load_config(overrides={"runtime.threads": 1}), extractor=default_extractor)
    assert rec.threads.torch == 1 and torch.get_num_threads() == 1


@pytest.mark.parametrize("key, value", [("runtime.threads", -1), ("runtime.search_threads", 1000),
                                        ("runtime.opencv_threads", 1.5), ("runtime.blas_threads", -2)])
def test_bad_thread_counts_are_refused(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={key: value})
