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
