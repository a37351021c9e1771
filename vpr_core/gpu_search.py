"""Exact map search on a GPU over float16 descriptors (`map.use_gpu`): a copy of the map's descriptors in
GPU memory, by insertion position, searched in one pass with the exclusion windows masked inside it.

The map's host index stays its record (saving, reconstruction, sequence matching read it); this copy only
answers searches. Two backends, by registry: FAISS's GPU flat index (the `faiss-gpu` package, on real GPU
installs) and torch on CUDA (what a machine with torch but a CPU-only FAISS has, e.g. PyPI's faiss-cpu).
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Dict, Optional, Tuple

import faiss
import numpy as np

log = logging.getLogger(__name__)

GROW_ROWS = 65536  # GPU rows reserved at a time beyond what the map holds (torch backend: no copy per add)
FAISS_GPU_MAX_K = 2048  # FAISS GPU searches return at most this many neighbours (float16 or not)


class GpuSearch:
    """Descriptors by insertion position on a GPU: `add` appends, `search` returns the top k positions
    (scores as float16 products, within ~1e-3 of exact) never returning an `excluded` position."""
    name = ""

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """GPU memory held for the descriptors (reserved rows included)."""
        raise NotImplementedError

    def add(self, rows: np.ndarray) -> None:
        """Append unit-norm descriptors (n, dim) at the next positions."""
        raise NotImplementedError

    def search(self, vec: np.ndarray, k: int, excluded: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Top `k` (scores, positions), best first, of the query (1, dim) leaving the `excluded` positions out;
        fewer when fewer are left."""
        raise NotImplementedError


class TorchGpuSearch(GpuSearch):
    """A float16 matrix in CUDA memory (or any torch device: tests run it on the CPU), grown in GROW_ROWS
    steps; one matrix-vector product, the excluded positions set to -inf, then topk."""
    name = "torch"

    def __init__(self, dim: int, device: str = "cuda") -> None:
        import torch
        self._torch = torch
        self.device = torch.device(device)
        self.dim = dim
        self._rows = torch.empty((0, dim), dtype=torch.float16, device=self.device)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return self._rows.numel() * self._rows.element_size()

    def add(self, rows: np.ndarray) -> None:
        torch = self._torch
        rows = torch.from_numpy(np.ascontiguousarray(rows, np.float32)).to(self.device, torch.float16)
        need = self._n + len(rows)
        if need > len(self._rows):  # reserve ahead: a copy per GROW_ROWS adds, not per add
            grown = torch.empty((need + GROW_ROWS, self.dim), dtype=torch.float16, device=self.device)
            grown[:self._n] = self._rows[:self._n]
            self._rows = grown
        self._rows[self._n:need] = rows
        self._n = need

    def search(self, vec: np.ndarray, k: int, excluded: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        k = min(k, self._n - len(excluded))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        q = torch.from_numpy(np.ascontiguousarray(vec, np.float32).reshape(self.dim, 1)).to(self.device, torch.float16)
        scores = (self._rows[:self._n] @ q).view(-1).float()
        if len(excluded):
            scores[torch.from_numpy(np.asarray(excluded, np.int64)).to(self.device)] = -torch.inf
        top = torch.topk(scores, k)
        return top.values.cpu().numpy(), top.indices.cpu().numpy().astype(np.int64)


class FaissGpuSearch(GpuSearch):
    """FAISS's GpuIndexFlatIP storing float16 (the `faiss-gpu` package). It takes no id selector, so a search
    fetches k + the excluded count (at most FAISS_GPU_MAX_K) and drops the excluded positions after it."""
    name = "faiss"

    def __init__(self, dim: int, device: int = 0) -> None:
        self._res = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = device
        config.useFloat16 = True
        self._index = faiss.GpuIndexFlatIP(self._res, dim, config)

    def __len__(self) -> int:
        return self._index.ntotal

    @property
    def nbytes(self) -> int:
        return self._index.ntotal * self._index.d * 2

    def add(self, rows: np.ndarray) -> None:
        self._index.add(np.ascontiguousarray(rows, np.float32))

    def search(self, vec: np.ndarray, k: int, excluded: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self) - len(excluded))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        fetch = min(len(self), k + len(excluded), FAISS_GPU_MAX_K)
        scores, positions = self._index.search(np.ascontiguousarray(vec, np.float32).reshape(1, -1), fetch)
        keep = (positions[0] >= 0) & ~np.isin(positions[0], excluded)
        return scores[0][keep][:k], positions[0][keep][:k].astype(np.int64)


def _faiss_gpus() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:  # torch is a dependency of the models, not of the map: a map tool may run without it
        return False
    return torch.cuda.is_available()


GPU_SEARCH: Dict[str, Tuple[Callable[[], bool], Callable[[int], GpuSearch]]] = {  # in order of preference
    "faiss": (_faiss_gpus, FaissGpuSearch),
    "torch": (_torch_cuda, TorchGpuSearch),
}


@functools.lru_cache(maxsize=1)
def gpu_backend() -> Optional[str]:
    """The first GPU search backend usable in this process (FAISS's GPU build, else torch on CUDA), or None."""
    return next((name for name, (usable, _) in GPU_SEARCH.items() if usable()), None)


def gpu_usable() -> bool:
    """Whether any GPU search backend can run here."""
    return gpu_backend() is not None


def new_gpu_search(dim: int, backend: Optional[str] = None) -> GpuSearch:
    """An empty GPU copy for `dim`-D descriptors on the first usable backend (or the one named)."""
    name = backend or gpu_backend()
    if name is None:
        raise RuntimeError("no GPU search backend is usable: FAISS sees no GPU and torch has no CUDA")
    return GPU_SEARCH[name][1](dim)
