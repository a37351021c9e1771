"""Unit-test-only settings (kept out of tests/conftest.py so other suites are unaffected)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _single_threaded_faiss():
    """The unit tests search maps of a few dozen vectors, where FAISS's OpenMP thread team costs far
    more than the search (badly so on a busy 2-core machine); results do not depend on it."""
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def real_frame(nordland_root):
    """copy(k, dst, season='summer'): write real Nordland frame k (0-based, 64x32) to `dst` in the
    format its suffix names, so the small dataset folders the reader tests write hold real images."""
    import cv2

    def copy(k: int, dst, season: str = "summer"):
        src = nordland_root / season / f"images-{(k + 1) * 10:05d}.png"
        image = cv2.imread(str(src))
        assert image is not None, f"cannot read {src}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(dst), image), f"cannot write {dst}"
        return dst
    return copy
