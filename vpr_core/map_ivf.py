"""IVF maps (`map.index` ivf_flat / ivf_fp16): inverted lists over a coarse quantizer trained on the map itself.

A map starts empty and grows keyframe by keyframe, so there is nothing to train a quantizer on at first. An IVF
map therefore starts as one list under a single zero centroid (every keyframe in it, every search scans it:
exact search) and is trained when it reaches `train_at` keyframes: k-means on a sample of its own stored
descriptors gives `lists_for(N)` ~ 2 sqrt(N) centroids, and every keyframe moves, in insertion order, into a
new index over them. It is rebuilt the same way whenever it has grown `regrow` times past the size it was
trained at (geometric growth: a map of N keyframes has been rebuilt about log2(N / train_at) times, and the
lists never grow more than `regrow` times longer than when their centroids were chosen).

A rebuild keeps everything sequence matching relies on: keyframe i of the route stays at FAISS position i
(the rebuild adds the stored descriptors back in position order), the id map is copied, and the direct map
(position -> list, offset) lets `descriptors_at` read any keyframe's stored descriptor exactly. It takes
seconds for a big map (k-means plus assigning every keyframe to a list: ~3.4 s at 65k keyframes on one core,
README), so by default (`background`) it runs in a worker thread on a copy of the index (`PendingRebuild`:
the adding frame waits only for the copy) while the map keeps adding to and searching the old index; the
keyframes added meanwhile are moved over when it is adopted. Either way it is logged, and it comes only at
each doubling.

`ivf_rabitq` lists hold 4-bit RaBitQ codes (FAISS's IndexIVFRaBitQ: a data-independent quantizer, so keyframes
of a place the map had never seen when it was trained are coded as well as the rest): a search shortlists
`shortlist` keyframes by their codes and the map re-scores them exactly against its DescriptorStore
(vpr_core.descriptor_store), which is also what rebuilds and `descriptors_at` read (codes are approximate).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import faiss
import numpy as np

log = logging.getLogger(__name__)

LISTS_PER_SQRT = 2.0  # nlist = 2 sqrt(N): 632 lists at 100k keyframes (README: scan cost vs recall measured)
MIN_POINTS_PER_LIST = 39  # FAISS's k-means wants this many training points per centroid
TRAIN_POINTS_PER_LIST = 48  # k-means sample per list (training time grows with it)
KMEANS_ITERATIONS = 10
RABITQ_BITS = 4  # bits per dimension of ivf_rabitq codes (1280-D: 660 B per keyframe); README: recall vs bits
MOVE_CHUNK = 65536  # keyframes moved per batch during a rebuild (bounds its extra memory)


@dataclass(frozen=True)
class IvfSettings:
    """How an IVF map searches and when it (re)trains (`map.ivf_*` in the config): the knobs of
    vpr_core.map_ivf, kept together so the map and its loader pass one value."""
    nprobe: int = 64  # lists scanned per search, at least: Recall@1 within a point of exact at 100k
    train_at: int = 8192  # keyframes before the first training (exact search up to there)
    regrow: float = 2.0  # retrain when the map has this many times the keyframes it was trained at
    background: bool = True  # rebuild in a worker thread on a copy (False: in the adding thread, it waits)
    shortlist: int = 32  # ivf_rabitq: keyframes shortlisted by their codes, then re-scored exactly
    probe_share: float = 0.04  # and at least this share of the lists (1M keyframes, 1448 lists: still 64; README)
    uncovered: int = 4096  # keyframes outside the lists' training searched exactly, then retrained (map_coverage)

    def __post_init__(self) -> None:
        if self.nprobe < 1:
            raise ValueError(f"IVF nprobe must be >= 1, got {self.nprobe}")
        if self.train_at < 2 * MIN_POINTS_PER_LIST:
            raise ValueError(f"IVF train_at must be >= {2 * MIN_POINTS_PER_LIST} (two lists' training points), "
                             f"got {self.train_at}")
        if not self.regrow > 1.0:
            raise ValueError(f"IVF regrow must be > 1 (a growth factor), got {self.regrow}")
        if self.shortlist < 1:
            raise ValueError(f"IVF shortlist must be >= 1, got {self.shortlist}")
        if not 0.0 <= self.probe_share <= 1.0:
            raise ValueError(f"IVF probe share must be in [0, 1], got {self.probe_share}")
        if self.uncovered < 0:
            raise ValueError(f"IVF uncovered keyframes must be >= 0 (0 = off), got {self.uncovered}")

    def nprobe_for(self, nlist: int) -> int:
        """Lists to scan in an index of `nlist` lists: `nprobe`, or `probe_share` of them when that is more.
        Lists grow as ~2 sqrt(N), so a fixed nprobe scans a shrinking share of a growing map; the share keeps
        the one chosen at 1M keyframes (64 of 1448 lists: Nordland validation exact at 32-131, README) beyond."""
        return min(nlist, max(self.nprobe, math.ceil(self.probe_share * nlist)))

    @classmethod
    def of(cls, map_cfg: Any) -> "IvfSettings":
        """The settings in a config's map section (`map.ivf_*`, vpr_core.config.MapConfig)."""
        return cls(map_cfg.ivf_nprobe, map_cfg.ivf_train_at, map_cfg.ivf_regrow, map_cfg.ivf_background_rebuild,
                   map_cfg.ivf_shortlist, map_cfg.ivf_probe_share, map_cfg.ivf_uncovered_max)


IVF_CODES: Dict[str, Callable[[faiss.Index, int, int], faiss.IndexIVF]] = {  # how the lists store descriptors
    "flat": lambda quantizer, dim, nlist: faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT),
    "fp16": lambda quantizer, dim, nlist: faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False),  # not residual
    "rabitq": lambda quantizer, dim, nlist: faiss.IndexIVFRaBitQ(
        quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT, True, RABITQ_BITS),  # on residuals, by design
}
_CODES_OF = {faiss.IndexIVFFlat: "flat", faiss.IndexIVFScalarQuantizer: "fp16", faiss.IndexIVFRaBitQ: "rabitq"}
Reader = Callable[[np.ndarray], np.ndarray]  # insertion positions -> exact float32 descriptors


def lists_for(n: int) -> int:
    """The number of lists a map of `n` keyframes is trained with: ~2 sqrt(n), with at least
    MIN_POINTS_PER_LIST keyframes per list."""
    return max(1, min(int(round(LISTS_PER_SQRT * math.sqrt(n))), n // MIN_POINTS_PER_LIST))


def trained_size(nlist: int) -> float:
    """About how many keyframes a map had when it was trained with `nlist` lists (the inverse of
    `lists_for`), so the retraining schedule survives a save and load without storing it."""
    return max(MIN_POINTS_PER_LIST * nlist, (nlist / LISTS_PER_SQRT) ** 2)


def new_ivf(dim: int, codes: str, centroids: np.ndarray) -> faiss.IndexIVF:
    """An empty IVF index over these centroids (unit vectors), with a direct map so stored descriptors can
    be read back by position; one zero centroid makes the untrained, exact single-list index."""
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.ascontiguousarray(centroids, np.float32))
    ivf = IVF_CODES[codes](quantizer, dim, len(centroids))
    ivf.own_fields = True  # the index owns its quantizer (no Python reference has to keep it alive)
    quantizer.this.disown()
    ivf.is_trained = True  # the centroids are given; float16 codes need no training
    ivf.make_direct_map(True)
    return ivf


def new_map_index(dim: int, codes: str) -> faiss.IndexIDMap2:
    """An untrained IVF map index: one list, exact search until `train_at` keyframes."""
    return faiss.IndexIDMap2(new_ivf(dim, codes, np.zeros((1, dim), np.float32)))


def compressed(index: faiss.Index) -> bool:
    """Whether a map's index (IndexIDMap2) keeps approximate codes only (its exact descriptors are stored beside it)."""
    return isinstance(faiss.downcast_index(index.index), faiss.IndexIVFRaBitQ)


def is_ivf(index: faiss.Index) -> bool:
    """Whether a map's index (IndexIDMap2) holds inverted lists."""
    return isinstance(faiss.downcast_index(index.index), faiss.IndexIVF)


def configure(index: faiss.Index, settings: IvfSettings) -> None:
    """Give a map's IVF index its search setting for its list count (a loaded file keeps the nprobe it was
    saved with otherwise; a rebuilt index is configured again); other index types are left as they are."""
    if is_ivf(index):
        inner = faiss.downcast_index(index.index)
        inner.nprobe = settings.nprobe_for(inner.nlist)


def lists_due(index: faiss.IndexIDMap2, settings: IvfSettings) -> int:
    """How many lists the map's IVF index should be rebuilt with now; 0 when no rebuild is due (not an IVF
    index, too small to train, or not yet grown `regrow` times past its training)."""
    if not is_ivf(index):
        return 0
    nlist, n = faiss.downcast_index(index.index).nlist, index.ntotal
    grown = n >= settings.train_at if nlist == 1 else n >= settings.regrow * trained_size(nlist)
    want = lists_for(n)
    return want if grown and want > nlist else 0


def rebuild(index: faiss.IndexIDMap2, nlist: int, read: Optional[Reader] = None,
            include: Sequence[int] = ()) -> faiss.IndexIDMap2:
    """A new IVF map index of `nlist` lists trained on a sample of this one's stored descriptors, holding
    all of them at the same positions with the same ids (the old index is not changed). `read` gives the
    exact descriptors at positions (default: the index's own, exact unless it is compressed); `include`:
    positions always in the sample (keyframes the old lists covered badly, vpr_core.map_coverage)."""
    old = faiss.downcast_index(index.index)
    read = read or old.reconstruct_batch
    n, dim = index.ntotal, index.d
    t0 = time.perf_counter()
    rng = np.random.default_rng(n)  # the same map gives the same lists
    size = min(n, TRAIN_POINTS_PER_LIST * nlist)
    include = np.unique(np.asarray(include, np.int64))
    if len(include) > size // 2:  # at most half the sample: the rest of the map keeps its lists
        include = np.sort(rng.choice(include, size // 2, replace=False))
    rest = np.setdiff1d(np.arange(n), include, assume_unique=True) if len(include) else np.arange(n)
    sample = read(np.sort(np.concatenate([include, rng.choice(rest, size - len(include), replace=False)])))
    kmeans = faiss.Kmeans(dim, nlist, niter=KMEANS_ITERATIONS, spherical=True, seed=int(n) & 0x7FFFFFFF,
                          max_points_per_centroid=TRAIN_POINTS_PER_LIST, min_points_per_centroid=1)
    kmeans.train(sample)
    del sample
    t1 = time.perf_counter()
    inner = new_ivf(dim, _CODES_OF[type(old)], kmeans.centroids)
    inner.nprobe = old.nprobe
    out = faiss.IndexIDMap2(inner)
    move(index, out, 0, read)
    log.info("IVF map rebuilt: %d keyframes into %d lists (was %d) in %.1f s (k-means %.1f s, moving %.1f s)",
             n, nlist, old.nlist, time.perf_counter() - t0, t1 - t0, time.perf_counter() - t1)
    return out


def move(src: faiss.IndexIDMap2, dst: faiss.IndexIDMap2, start: int, read: Optional[Reader] = None) -> None:
    """Add `src`'s keyframes from position `start` on to `dst`, in position order with their ids (keyframe p
    lands at position p again when `dst` holds the first `start`); `read` as for `rebuild`."""
    read = read or faiss.downcast_index(src.index).reconstruct_batch
    n = src.ntotal
    ids = faiss.vector_to_array(src.id_map)
    for a in range(start, n, MOVE_CHUNK):
        pos = np.arange(a, min(n, a + MOVE_CHUNK))
        dst.add_with_ids(read(pos), ids[pos])


class PendingRebuild:
    """A rebuild running in a worker thread on a copy of the map's index as it was at `size` keyframes (FAISS
    releases the GIL, so the map keeps adding and searching meanwhile); `finish` adopts it. `then`: more work
    for the worker on the rebuilt index (its result is `then_result`), e.g. the map's coverage scan."""

    def __init__(self, index: faiss.IndexIDMap2, nlist: int, read: Optional[Reader] = None,
                 include: Sequence[int] = (), then: Optional[Callable[[faiss.IndexIDMap2], Any]] = None) -> None:
        self.size = index.ntotal
        self._include = include
        self._read = read
        self._then = then
        self.then_result: Any = None
        snapshot = faiss.clone_index(index)  # the worker never touches the live index, which keeps growing
        self._result: Optional[faiss.IndexIDMap2] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(snapshot, nlist), name="ivf-rebuild", daemon=True)
        self._thread.start()

    def _run(self, snapshot: faiss.IndexIDMap2, nlist: int) -> None:
        try:
            self._result = rebuild(snapshot, nlist, self._read, self._include)
            if self._then is not None:
                self.then_result = self._then(self._result)
        except BaseException as exc:  # noqa: BLE001 -- reported by finish(), in the map's thread
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def finish(self, live: faiss.IndexIDMap2) -> faiss.IndexIDMap2:
        """Wait for the worker, then move the keyframes `live` gained since the copy into the rebuilt index and
        return it; raises what the rebuild raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        out, self._result = self._result, None
        move(live, out, self.size, self._read)
        return out

