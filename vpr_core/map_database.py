"""The map of places: a FAISS inner-product index of keyframe descriptors, metadata beside it.

Incremental add, top-K search that skips the most recent keyframes (by count and by time), and a
single-file save that is written to a temporary file and renamed, so a crash never leaves a
half-written map. The file format, and the checks on every field of it when loading, are in
vpr_core.map_file; index types and their byte layout in vpr_core.map_index; the IVF types' training and
rebuilds as the map grows in vpr_core.map_ivf (positions, ids and stored descriptors survive them).

Keyframes' local features (for re-ranking) live beside the index in a `LocalFeatureStore`
(vpr_core.local_features), saved in the same map file as `local.npz`, covered by the checksum; a compressed
index's exact descriptors in a `DescriptorStore` (vpr_core.descriptor_store), saved as `descriptors.f16`.
Format version 4; versions 1 (no local features), 2 and 3 load. Saving is vpr_core.map_frozen's. Keyframe and Candidate are vpr_core.keyframes'; joining two maps is vpr_core.map_merge's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import faiss
import numpy as np

from vpr_core.descriptor_store import DescriptorStore
from vpr_core.gpu_search import GpuSearch, gpu_usable, new_gpu_search
from vpr_core.keyframes import Candidate, Keyframe
from vpr_core.local_features import DescriptorError, LocalFeatures, LocalFeatureStore
from vpr_core.map_coverage import Uncovered, merge, scan
from vpr_core.map_file import read_map_file
from vpr_core.map_frozen import FrozenMap
from vpr_core.map_index import INDEX_TYPES, search_parameters
from vpr_core.map_ivf import IvfSettings, PendingRebuild, compressed, configure, is_ivf, lists_due, lists_for, rebuild
from vpr_core.map_schema import DEFAULT_MAX_BYTES, LOCAL_MEMBER, MapError

log = logging.getLogger(__name__)


def read_index_from(data: bytes | bytearray) -> faiss.Index:
    """A FAISS index from its serialised bytes, read in 1 MB pieces (deserialize_index first copies all of
    the bytes into a FAISS buffer: 5x slower for a 100k-keyframe flat index, and that much more memory)."""
    view, pos = memoryview(data), 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos:pos + n])
        pos += len(chunk)
        return chunk
    reader = faiss.PyCallbackIOReader(read)
    return faiss.read_index(reader)


def too_recent(kf: Keyframe, query_stamp_ns: Optional[int], exclude_recent_ns: int) -> bool:
    """Is keyframe `kf` within `exclude_recent_ns` of the query's stamp (0 = no time window)?"""
    return query_stamp_ns is not None and exclude_recent_ns > 0 and abs(query_stamp_ns - kf.stamp_ns) < exclude_recent_ns


GPU_TYPES = ("flat", "flat_fp16")  # index types whose search moves to the GPU with map.use_gpu (both exact)


@dataclass
class MapDatabase:
    """Keyframe descriptors (unit L2 norm, float32) in a FAISS index with id -> Keyframe metadata."""
    dim: int
    index_type: str = "flat"
    use_gpu: str = "auto"
    keyframes: Dict[int, Keyframe] = field(default_factory=dict)
    _order: List[int] = field(default_factory=list, repr=False)  # ids in insertion order
    local: LocalFeatureStore = field(default_factory=LocalFeatureStore, repr=False)  # id -> local features
    id_floor: int = 0  # ids below this were already handed out (to keyframes or not): never reuse them
    model: str = ""  # fingerprint of the model whose descriptors these are (identity.descriptor_fingerprint); "" = unknown
    ivf: IvfSettings = field(default_factory=IvfSettings, repr=False)  # nprobe and (re)training of the IVF types

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"descriptor dimension must be positive, got {self.dim}")
        self._cpu_index = INDEX_TYPES.build(self.index_type, dim=self.dim)
        configure(self._cpu_index, self.ivf)
        choice = str(self.use_gpu).lower()
        if choice not in ("auto", "true", "false"):
            raise ValueError(f"map.use_gpu must be auto, true or false; got {self.use_gpu!r}")
        want_gpu = gpu_usable() if choice == "auto" else choice == "true"
        if want_gpu and not gpu_usable():
            raise MapError("map.use_gpu is true but no GPU is usable (FAISS sees none, torch has no CUDA)")
        # the exact types search a float16 copy on the GPU; HNSW and the IVF types stay on the CPU (their
        # graph, rebuilds and direct map are CPU-side), where they are fast already
        self._gpu: Optional[GpuSearch] = new_gpu_search(self.dim) if want_gpu and self.index_type in GPU_TYPES \
            else None
        # a compressed index's exact descriptors (re-scoring, sequence matching, rebuilds); None: the index has them
        self.store: Optional[DescriptorStore] = DescriptorStore(self.dim) if compressed(self._cpu_index) else None
        self._rebuilding: Optional[PendingRebuild] = None  # an IVF rebuild running in the background
        self._rebuild_after = 0  # after a failed rebuild: map size before which none is tried again
        # IVF: keyframes the lists were not trained for, searched exactly beside them (vpr_core.map_coverage)
        self._uncovered: Optional[Uncovered] = Uncovered(self.dim, self.ivf.uncovered) \
            if is_ivf(self._cpu_index) else None
        self._position: Dict[int, int] = {kid: p for p, kid in enumerate(self._order)}  # id -> insertion position
        self._reindex_stamps()

    def _reindex_stamps(self) -> None:
        """Ids and stamps in insertion order as growable arrays (the exclusion windows read them every
        frame), and whether the stamps never decrease."""
        stamps = np.array([self.keyframes[i].stamp_ns for i in self._order], np.int64)
        self._id_stamps = np.empty((2, max(1024, 2 * len(stamps))), np.int64)  # row 0 ids, row 1 stamps
        self._id_stamps[0, :len(stamps)] = self._order
        self._id_stamps[1, :len(stamps)] = stamps
        self._stamps_sorted = bool(np.all(np.diff(stamps) >= 0))

    def __len__(self) -> int:
        return len(self._order)

    @property
    def next_id(self) -> int:
        return max((max(self._order) + 1) if self._order else 0, self.id_floor)

    @property
    def next_session(self) -> int:
        """The session id the next run in this map gets: one past the newest keyframe's session."""
        return max((kf.session for kf in self.keyframes.values()), default=-1) + 1

    def sessions(self) -> Dict[int, Tuple[int, List[str]]]:
        """session -> (keyframes, robots that added them)."""
        out: Dict[int, Tuple[int, List[str]]] = {}
        for kf in self.keyframes.values():
            n, robots = out.get(kf.session, (0, []))
            out[kf.session] = (n + 1, robots if kf.robot in robots else robots + [kf.robot])
        return dict(sorted(out.items()))

    def _check(self, desc: np.ndarray) -> np.ndarray:
        desc = np.asarray(desc, dtype=np.float32).reshape(-1)
        if desc.shape[0] != self.dim:
            raise DescriptorError(f"descriptor has {desc.shape[0]} values, the map holds {self.dim}-D descriptors")
        if not np.all(np.isfinite(desc)):
            raise DescriptorError("descriptor holds NaN or inf values")
        norm = float(np.linalg.norm(desc))
        if norm < 1e-6:
            raise DescriptorError("descriptor is all zeros")
        return (desc / norm)[None, :]

    def add(self, descriptor: np.ndarray, keyframe: Keyframe, local: Optional[LocalFeatures] = None) -> None:
        """Insert one keyframe (and its local features, when given); a bad descriptor, bad local
        features or a reused id raise before anything changes."""
        vec = self._check(descriptor)
        checked = self.local.check(local) if local is not None else None
        if keyframe.id in self.keyframes:
            raise ValueError(f"keyframe id {keyframe.id} is already in the map")
        ids = np.array([keyframe.id], dtype=np.int64)
        self._cpu_index.add_with_ids(vec, ids)  # the map's record: sequence matching, rebuilds and saving read it
        if self._gpu is not None:
            self._gpu.add(vec)
        if self.store is not None:
            self.store.append(vec)
        if self._uncovered is not None:
            self._uncovered.observe(len(self._order), self._reader())
        if checked is not None:
            self.local.put(keyframe.id, checked)
            keyframe.local_features = LOCAL_MEMBER
        elif keyframe.local_features == LOCAL_MEMBER:  # e.g. copied from another map: its features are not here
            keyframe.local_features = ""
        self.keyframes[keyframe.id] = keyframe
        n = len(self._order)
        if n == self._id_stamps.shape[1]:
            self._id_stamps = np.concatenate([self._id_stamps, np.empty_like(self._id_stamps)], axis=1)
        self._id_stamps[:, n] = (keyframe.id, keyframe.stamp_ns)
        self._stamps_sorted = self._stamps_sorted and (n == 0 or keyframe.stamp_ns >= self._id_stamps[1, n - 1])
        self._position[keyframe.id] = n
        self._order.append(keyframe.id)
        self._regrow()

    @property
    def on_gpu(self) -> bool:
        """Whether searches run on the GPU copy (map.use_gpu with an exact index type)."""
        return self._gpu is not None

    @property
    def gpu_backend(self) -> str:
        """Which GPU search backend the map uses ('faiss' or 'torch'), '' when it searches on the CPU."""
        return self._gpu.name if self._gpu is not None else ""

    def _fill_gpu(self, chunk: int = 65536) -> None:
        """Copy the host index's descriptors to the GPU copy (a loaded map), a chunk at a time."""
        if self._gpu is None:
            return
        for start in range(len(self._gpu), len(self), chunk):
            self._gpu.add(self.descriptors_at(np.arange(start, min(start + chunk, len(self)))))

    @property
    def ivf_lists(self) -> int:
        """How many lists an IVF map's index has now (1 until trained); 0 for the other index types."""
        return faiss.downcast_index(self._cpu_index.index).nlist if is_ivf(self._cpu_index) else 0

    @property
    def ivf_nprobe(self) -> int:
        """How many lists an IVF map's search scans now (`IvfSettings.nprobe_for` its list count); 0 for others."""
        return faiss.downcast_index(self._cpu_index.index).nprobe if is_ivf(self._cpu_index) else 0

    def set_ivf(self, settings: IvfSettings) -> None:
        """Adopt new IVF settings: nprobe applies from the next search, training thresholds from the next add."""
        self.ivf = settings
        configure(self._cpu_index, settings)
        if self._uncovered is not None and self._uncovered.capacity != settings.uncovered:
            self._uncovered = Uncovered(self.dim, settings.uncovered)
            self._uncovered.attach(self._cpu_index, self._reader())

    @property
    def uncovered(self) -> int:
        """How many keyframes an IVF map searches exactly beside its lists (unlike their training; map_coverage)."""
        return len(self._uncovered) if self._uncovered is not None else 0

    def _reader(self, index: Optional[faiss.Index] = None) -> Callable[[np.ndarray], np.ndarray]:
        """Exact descriptors by insertion position: the store's for a compressed index, else those of `index`
        (default the map's own; a rebuilt copy reads its own)."""
        if self.store is not None:
            return self.store.rows
        return faiss.downcast_index((self._cpu_index if index is None else index).index).reconstruct_batch

    def _regrow(self) -> None:
        """Train or rebuild an IVF index once the map has grown enough (vpr_core.map_ivf: seconds for a big map,
        logged): in a worker thread, adopted by the first add after it is done, or here and now."""
        if self._rebuilding is not None:
            if self._rebuilding.done():
                self.wait_rebuild()
            return
        if len(self) < self._rebuild_after:
            return
        nlist, include = lists_due(self._cpu_index, self.ivf), ()
        if self._uncovered is not None and self._uncovered.due:  # a region the lists were not trained for
            nlist = max(nlist, self.ivf_lists, lists_for(len(self)))
            include = self._uncovered.uncovered_positions()
            log.info("%d keyframes lie outside the IVF lists' training: retraining with them", len(include))
        read = self.store.rows if self.store is not None else None  # exact descriptors, not codes
        cap = self.ivf.uncovered
        if nlist and self.ivf.background:  # the worker also finds the keyframes its new lists cover badly
            then = lambda made: scan(made, self._reader(made), cap)  # noqa: E731
            self._adopt(lambda: PendingRebuild(self._cpu_index, nlist, read, include, then), pending=True)
        elif nlist:
            self._adopt(lambda: rebuild(self._cpu_index, nlist, read, include))

    def wait_rebuild(self) -> None:
        """Finish a background IVF rebuild now, if one runs (it is adopted with every keyframe added meanwhile)."""
        pending, self._rebuilding = self._rebuilding, None
        if pending is not None:
            self._adopt(lambda: pending.finish(self._cpu_index), found=lambda: pending.then_result)

    def _adopt(self, make: Callable[[], Any], pending: bool = False, found: Callable[[], Any] = lambda: None) -> None:
        """Make the rebuilt index (or, `pending`, start its background rebuild) and take it. A rebuild that fails
        (e.g. out of memory) is logged and not tried again until the map has grown `ivf.regrow` times more: the
        keyframe was added and the old index is intact, so the map goes on with it."""
        try:
            made = make()
        except Exception as exc:  # noqa: BLE001 -- the add that triggered it must not fail
            self._rebuild_after = int(len(self) * self.ivf.regrow)
            log.error("IVF map rebuild failed (%s: %s); the map keeps its %d lists until it has %d keyframes",
                      type(exc).__name__, exc, self.ivf_lists, self._rebuild_after)
            return
        if pending:
            self._rebuilding = made
            return
        configure(made, self.ivf)  # the settings as they are now (set_ivf may have run meanwhile)
        self._cpu_index = made  # IVF maps stay on the CPU (see __post_init__)
        self._uncovered.attach(made, self._reader(), found())  # only IVF maps are rebuilt

    def local_features(self, kid: int) -> Optional[LocalFeatures]:
        """The stored local features of keyframe `kid`, or None."""
        return self.local.get(kid)

    def search(self, descriptor: np.ndarray, k: int, query_stamp_ns: Optional[int] = None,
               exclude_recent_count: int = 0, exclude_recent_ns: int = 0) -> List[Candidate]:
        """Top-k keyframes by cosine similarity, skipping the last `exclude_recent_count` added and any
        within `exclude_recent_ns` of `query_stamp_ns` (so a robot does not "close a loop" with itself).
        One FAISS search: the excluded keyframes are left out inside it (an id selector), not filtered
        after it, so a frame that looks most like its own recent past does not rescan the map. A compressed
        index shortlists `ivf.shortlist` keyframes by their codes, re-scored exactly here."""
        vec = self._check(descriptor)
        if k <= 0 or not len(self):
            return []
        excluded = self.excluded_positions(query_stamp_ns, exclude_recent_count, exclude_recent_ns)
        k = min(k, len(self) - len(excluded))
        if k <= 0:
            return []
        if self.store is None:
            scores, ids = self._search(vec, k, excluded)
        else:
            scores, ids = self._rescored(vec, k, excluded)
        if self.uncovered:  # exact scores of the keyframes the lists cover badly, merged in
            more, positions = self._uncovered.search(vec[0], k, excluded)
            scores, ids = (a[None] for a in merge(scores[0], ids[0], more, self._id_stamps[0, positions], k))
        return [Candidate(self.keyframes[int(kid)], float(score)) for score, kid in zip(scores[0], ids[0]) if kid >= 0]

    def _rescored(self, vec: np.ndarray, k: int, excluded: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The top k of a compressed index's shortlist by exact score against the stored descriptors."""
        _, ids = self._search(vec, min(len(self) - len(excluded), max(k, self.ivf.shortlist)), excluded)
        ids = ids[0][ids[0] >= 0]
        positions = np.fromiter((self._position[int(i)] for i in ids), np.int64, len(ids))
        exact = self.store.rows(positions) @ vec[0]
        best = np.argsort(-exact, kind="stable")[:k]
        return exact[best][None], ids[best][None]

    def _search(self, vec: np.ndarray, k: int, excluded: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The index's top k (scores and ids, (1, k)) leaving the keyframes at the `excluded` positions out."""
        if self._gpu is not None:  # the GPU copy is by position: ids come back through the insertion order
            scores, positions = self._gpu.search(vec, k, excluded)
            return scores[None], self._id_stamps[0, positions][None]
        inner = faiss.downcast_index(self._cpu_index.index)  # searched by position: the id map's translation of
        # every scanned code for the selector cost 3 ms a search at 1M keyframes (README, map sizing)
        scores, positions = inner.search(vec, k, params=self._without(inner, excluded)) if len(excluded) \
            else inner.search(vec, k)
        return scores, np.where(positions >= 0, self._id_stamps[0, positions], -1)

    def excluded_positions(self, query_stamp_ns: Optional[int], recent_count: int, recent_ns: int) -> np.ndarray:
        """Insertion positions (unique) of the last `recent_count` keyframes added and of those within `recent_ns`
        of the query's stamp (a binary search while stamps grow in insertion order, as they do within a session)."""
        n = len(self)
        stamps = self._id_stamps[1, :n]
        parts = [np.arange(max(0, n - recent_count), n)] if recent_count > 0 else []
        if query_stamp_ns is not None and recent_ns > 0 and n:
            lo_t, hi_t = int(query_stamp_ns) - int(recent_ns), int(query_stamp_ns) + int(recent_ns)
            if self._stamps_sorted:  # strictly inside (lo_t, hi_t), like too_recent
                parts.append(np.arange(np.searchsorted(stamps, lo_t, "right"), np.searchsorted(stamps, hi_t, "left")))
            else:
                parts.append(np.flatnonzero((stamps > lo_t) & (stamps < hi_t)))
        if not parts:
            return np.zeros(0, np.int64)
        return np.unique(np.concatenate(parts)) if len(parts) > 1 else parts[0].astype(np.int64)

    @staticmethod
    def _without(inner: faiss.Index, excluded: np.ndarray) -> faiss.SearchParameters:
        """Search parameters for the inner index that leave the `excluded` positions out (and keep its own search
        settings)."""
        batch = faiss.IDSelectorBatch(excluded)
        sel = faiss.IDSelectorNot(batch)
        params = search_parameters(inner, sel)
        params._keep = (sel, batch)  # the selectors must outlive the parameters (SWIG holds raw pointers)
        return params

    def position(self, kid: int) -> int:
        """Where keyframe `kid` sits in insertion order (the route as driven): sequence matching walks it."""
        return self._position[int(kid)]

    def keyframe_at(self, position: int) -> Keyframe:
        """The keyframe at an insertion position."""
        return self.keyframes[self._order[int(position)]]

    def descriptors_at(self, positions: np.ndarray) -> np.ndarray:
        """Stored descriptors (n, dim) of the keyframes at these insertion positions, in one batched read
        of the index's own storage (no copy of the map is kept beside FAISS; IVF types through their direct map)."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        if not len(positions):
            return np.zeros((0, self.dim), np.float32)
        if positions.min() < 0 or positions.max() >= len(self):
            raise IndexError(f"keyframe positions must lie in [0, {len(self)}), got {positions.min()}..{positions.max()}")
        if self.store is not None:
            return self.store.rows(positions)
        return faiss.downcast_index(self._cpu_index.index).reconstruct_batch(positions)

    def descriptors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored descriptors of keyframes (exact for the flat index)."""
        return self.descriptors_at(np.array([self._position[int(i)] for i in ids], np.int64))

    # ---- persistence (file format: vpr_core.map_file) ------------------------------------------
    def freeze(self) -> "FrozenMap":
        """What a save needs, taken quickly (hold the map's lock for this only): the FAISS bytes and
        references to the keyframes and their local features, which are never modified once added."""
        order = list(self._order)  # a background IVF rebuild is not waited for: the current index is complete
        return FrozenMap(self.dim, self.index_type, self.model, self.next_id,
                         faiss.clone_index(self._cpu_index),  # 2.6x faster than serialising it; host copy is current
                         order, [self.keyframes[i] for i in order], self.local.items(order), self.local.dim, self.store)

    def snapshot(self) -> Tuple[Dict[str, Any], Dict[str, bytes]]:
        """The map file's header and members as bytes."""
        return self.freeze().encode()

    def save(self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
        """Write the map atomically: everything goes to `<path>.tmp`, is fsynced, then renamed."""
        return self.freeze().save(path, max_bytes)

    @classmethod
    def load(cls, path: str | Path, expected_dim: Optional[int] = None, use_gpu: str = "auto",
             max_bytes: int = DEFAULT_MAX_BYTES, ivf: Optional[IvfSettings] = None) -> "MapDatabase":
        """Read a map file; raises MapError, and nothing else, if anything is off (never a partial map).
        `ivf`: the IVF types' settings (default IvfSettings()); the file's own nprobe is not kept."""
        contents = read_map_file(path, expected_dim, max_bytes)  # everything in the file checked
        try:
            return cls._from_contents(contents, path, use_gpu, ivf or IvfSettings())
        except MapError:
            raise
        except Exception as exc:  # FAISS, numpy or memory errors on a checked file: still the file's fault
            raise MapError(f"{path} could not be loaded ({type(exc).__name__}: {exc}); "
                           f"the in-memory map was left unchanged") from None

    @classmethod
    def _from_contents(cls, contents, path: str | Path, use_gpu: str, ivf: IvfSettings) -> "MapDatabase":
        header = contents.header
        db = cls(header["dim"], header["index_type"], use_gpu, ivf=ivf)
        cpu = read_index_from(contents.index_bytes)
        if cpu.ntotal != header["count"] or cpu.d != header["dim"]:
            raise MapError(f"{path}: index holds {cpu.ntotal} vectors of {cpu.d}, header {header['count']} of {header['dim']}")
        configure(cpu, ivf)
        db._cpu_index = cpu
        db.keyframes = {kf["id"]: Keyframe(**kf) for kf in contents.keyframes}
        db._order = list(contents.order)
        db._position = {kid: p for p, kid in enumerate(db._order)}
        db._reindex_stamps()
        db.id_floor = header.get("next_id", 0)
        db.model = header.get("model", "")
        db._fill_gpu()
        if contents.descriptor_bytes is not None:
            try:
                db.store = DescriptorStore.from_buffer(contents.descriptor_bytes, header["dim"], header["count"])
            except ValueError as exc:
                raise MapError(f"{path}: its descriptors are unreadable ({exc})") from None
        if db._uncovered is not None:  # which keyframes its lists cover badly is found again, not stored
            db._uncovered.attach(cpu, db._reader())
        if contents.local_bytes is not None:
            try:
                db.local = LocalFeatureStore.from_bytes(contents.local_bytes)
            except Exception as exc:  # the arrays' own checks, or a damaged npz
                raise MapError(f"{path}: its local features are unreadable ({type(exc).__name__}: {exc})") from None
            stray = set(db.local.ids()) - set(db.keyframes)
            lost = {k for k, kf in db.keyframes.items() if kf.local_features == LOCAL_MEMBER} - set(db.local.ids())
            if stray or lost or len(db.local) != header["local_count"] or \
                    (len(db.local) and db.local.dim != header["local_dim"]):
                raise MapError(f"{path}: local features and keyframes disagree ({len(stray)} without a keyframe, "
                               f"{len(lost)} missing, header count {header['local_count']}, stored {len(db.local)})")
            for kid in db.local.ids():
                db.keyframes[kid].local_features = LOCAL_MEMBER
        return db
