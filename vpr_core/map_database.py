"""The map of places: a FAISS inner-product index of keyframe descriptors, metadata beside it.

Incremental add, top-K search that skips the most recent keyframes (by count and by time), and a
single-file save that is written to a temporary file and renamed, so a crash never leaves a
half-written map. The file format, and the checks on every field of it when loading, are in
vpr_core.map_file; index types and their byte layout in vpr_core.map_index.

Keyframes' local features (for re-ranking) live beside the index in a `LocalFeatureStore`: float16
descriptors and float32 positions, saved in the same map file as `local.npz` (concatenated arrays
plus offsets), covered by the checksum. Format version 2; version 1 maps (no local features) load.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import faiss
import numpy as np

from vpr_core.config import MAX_LOCAL_FEATURES
from vpr_core.local_features import LocalFeatures
from vpr_core.map_file import (DEFAULT_MAX_BYTES, INDEX_MEMBER, LOCAL_MEMBER, MAGIC, META_MEMBER,  # noqa: F401
                               READABLE_VERSIONS, VERSION, MapError, read_map_file, read_npz, write_map_file)
from vpr_core.map_index import INDEX_TYPES  # noqa: F401 -- re-exported: map index types live there

if TYPE_CHECKING:
    from vpr_core.rerank import Verification

log = logging.getLogger(__name__)


class DescriptorError(ValueError):
    """A descriptor has the wrong shape or holds NaN/inf: it is rejected, the map stays intact."""


class LocalFeatureError(DescriptorError):
    """Local features have the wrong shape or size, or hold NaN/inf: rejected, the map stays intact."""


@dataclass
class Keyframe:
    """What the map remembers about a keyframe besides its descriptor."""
    id: int
    stamp_ns: int
    frame_id: str = ""
    pose: Optional[List[float]] = None  # [x, y, z, qx, qy, qz, qw] in the map frame, when known
    local_features: str = ""  # where its local features live ("local.npz" in the map file), "" = none


@dataclass
class Candidate:
    """One search hit: a keyframe and its cosine similarity to the query (and, once re-ranked, how its
    local features matched the query's)."""
    keyframe: Keyframe
    score: float
    verification: Optional["Verification"] = field(default=None, compare=False)

    @property
    def id(self) -> int:
        return self.keyframe.id


def too_recent(kf: Keyframe, query_stamp_ns: Optional[int], exclude_recent_ns: int) -> bool:
    """Is keyframe `kf` within `exclude_recent_ns` of the query's stamp (0 = no time window)?"""
    return query_stamp_ns is not None and exclude_recent_ns > 0 and abs(query_stamp_ns - kf.stamp_ns) < exclude_recent_ns


def gpu_usable() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


class LocalFeatureStore:
    """Keyframe id -> LocalFeatures, compact: float16 descriptors (N,C), float32 pixel xy (N,2).

    One descriptor size per map (fixed by the first keyframe stored, or by `dim`). The count per
    keyframe is capped where the features are made (`model.max_local_features`, strongest first).
    """

    def __init__(self, dim: int = 0) -> None:
        self.dim = int(dim)  # 0 = not known yet
        self._items: Dict[int, LocalFeatures] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, kid: int) -> bool:
        return int(kid) in self._items

    def ids(self) -> Iterator[int]:
        return iter(self._items)

    def get(self, kid: int) -> Optional[LocalFeatures]:
        return self._items.get(int(kid))

    @property
    def nbytes(self) -> int:
        return sum(lf.xy.nbytes + lf.desc.nbytes for lf in self._items.values())

    def check(self, local: LocalFeatures) -> LocalFeatures:
        """The compact, validated copy of `local`; raises LocalFeatureError and changes nothing."""
        if not isinstance(local, LocalFeatures):
            raise LocalFeatureError(f"local features must be a LocalFeatures, got {type(local).__name__}")
        xy, desc = np.asarray(local.xy), np.asarray(local.desc)
        if xy.ndim != 2 or xy.shape[1] != 2 or desc.ndim != 2 or len(xy) != len(desc):
            raise LocalFeatureError(f"local features need xy (N,2) and desc (N,C); got {xy.shape} and {desc.shape}")
        if self.dim and desc.shape[1] != self.dim:
            raise LocalFeatureError(f"local descriptors are {desc.shape[1]}-D, the map holds {self.dim}-D ones "
                                    f"(it was built with another local head; rebuild it or switch model)")
        if desc.shape[1] == 0:
            raise LocalFeatureError("local descriptors have no channels")
        if len(desc) > MAX_LOCAL_FEATURES:
            raise LocalFeatureError(f"{len(desc)} local features for one image, at most {MAX_LOCAL_FEATURES} are "
                                    f"stored (lower model.max_local_features)")
        with np.errstate(over="ignore"):  # values beyond the float16/float32 range become inf: rejected below
            desc16 = desc.astype(np.float16)
            xy32 = xy.astype(np.float32)
        if not np.all(np.isfinite(desc16)):
            raise LocalFeatureError("local descriptors hold NaN or inf values (or exceed the float16 range)")
        if not np.all(np.isfinite(xy32)):
            raise LocalFeatureError("local feature positions hold NaN or inf values")
        hw = tuple(int(v) for v in local.image_hw)
        if len(hw) != 2 or min(hw) <= 0:
            raise LocalFeatureError(f"local features need a positive image size (h, w), got {local.image_hw}")
        return LocalFeatures(np.ascontiguousarray(xy32), np.ascontiguousarray(desc16), hw)

    def put(self, kid: int, checked: LocalFeatures) -> None:
        """Store features that `check` returned."""
        if not self.dim:
            self.dim = checked.dim
        self._items[int(kid)] = checked

    def add(self, kid: int, local: LocalFeatures) -> None:
        self.put(kid, self.check(local))

    # ---- persistence: one npz of concatenated arrays + offsets -----------------------------
    def to_bytes(self, order: Optional[Sequence[int]] = None) -> bytes:
        ids = [i for i in (order if order is not None else self._items) if i in self._items]
        items = [self._items[i] for i in ids]
        counts = np.array([len(lf) for lf in items], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        dim = self.dim
        xy = np.concatenate([lf.xy for lf in items]) if items else np.zeros((0, 2), np.float32)
        desc = np.concatenate([lf.desc for lf in items]) if items else np.zeros((0, dim), np.float16)
        hw = np.array([lf.image_hw for lf in items], np.int64).reshape(-1, 2)
        buf = io.BytesIO()
        np.savez(buf, ids=np.array(ids, np.int64), offsets=offsets, xy=xy.astype(np.float32),
                 desc=desc.astype(np.float16), image_hw=hw, dim=np.array(dim, np.int64))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalFeatureStore":
        """Parse `to_bytes` output; raises ValueError on any inconsistency (never a partial store)."""
        arrays = read_npz(data, _NPZ_SPEC)
        ids, offsets, xy, desc, hw = (arrays[k] for k in ("ids", "offsets", "xy", "desc", "image_hw"))
        dim = int(arrays["dim"])
        if (xy.dtype != np.float32 or desc.dtype != np.float16 or ids.ndim != 1 or offsets.shape != (len(ids) + 1,)
                or xy.ndim != 2 or xy.shape[1] != 2 or desc.ndim != 2 or len(desc) != len(xy)
                or hw.shape != (len(ids), 2) or (len(desc) and desc.shape[1] != dim)):
            raise ValueError("local.npz arrays have inconsistent shapes or types")
        if offsets[0] != 0 or offsets[-1] != len(xy) or np.any(np.diff(offsets) < 0):
            raise ValueError("local.npz offsets do not partition its feature arrays")
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("local.npz names a keyframe twice")
        if np.any(np.diff(offsets) > MAX_LOCAL_FEATURES) or (len(hw) and hw.min() <= 0):
            raise ValueError(f"local.npz holds more than {MAX_LOCAL_FEATURES} features for a keyframe or an empty image size")
        if not (np.all(np.isfinite(xy)) and np.all(np.isfinite(desc))):
            raise ValueError("local.npz holds NaN or inf values")
        store = cls(dim)
        for k, kid in enumerate(ids.tolist()):
            a, b = int(offsets[k]), int(offsets[k + 1])
            store._items[int(kid)] = LocalFeatures(xy[a:b], desc[a:b], (int(hw[k, 0]), int(hw[k, 1])))
        return store


_NPZ_SPEC = {"ids": ("i8", 1), "offsets": ("i8", 1), "xy": ("f4", 2), "desc": ("f2", 2), "image_hw": ("i8", 2),
             "dim": ("i8", 0)}  # LocalFeatureStore.to_bytes' arrays: dtype, ndim


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

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"descriptor dimension must be positive, got {self.dim}")
        self._cpu_index = INDEX_TYPES.build(self.index_type, dim=self.dim)
        self._index = self._cpu_index
        choice = str(self.use_gpu).lower()
        if choice not in ("auto", "true", "false"):
            raise ValueError(f"map.use_gpu must be auto, true or false; got {self.use_gpu!r}")
        want_gpu = gpu_usable() if choice == "auto" else choice == "true"
        if want_gpu:
            if not gpu_usable():
                raise MapError("map.use_gpu is true but FAISS sees no GPU (install faiss-gpu on a CUDA machine)")
            if self.index_type == "flat":  # HNSW has no GPU version; it stays on the CPU
                self._index = faiss.index_cpu_to_all_gpus(self._cpu_index)
        self.on_gpu = self._index is not self._cpu_index
        self._position: Dict[int, int] = {kid: p for p, kid in enumerate(self._order)}  # id -> insertion position

    def __len__(self) -> int:
        return len(self._order)

    @property
    def next_id(self) -> int:
        return max((max(self._order) + 1) if self._order else 0, self.id_floor)

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
        self._index.add_with_ids(vec, ids)
        if self.on_gpu:  # the host copy stays current: sequence matching, reconstruction and saving read it
            self._cpu_index.add_with_ids(vec, ids)
        if checked is not None:
            self.local.put(keyframe.id, checked)
            keyframe.local_features = LOCAL_MEMBER
        elif keyframe.local_features == LOCAL_MEMBER:  # e.g. copied from another map: its features are not here
            keyframe.local_features = ""
        self.keyframes[keyframe.id] = keyframe
        self._position[keyframe.id] = len(self._order)
        self._order.append(keyframe.id)

    def local_features(self, kid: int) -> Optional[LocalFeatures]:
        """The stored local features of keyframe `kid`, or None."""
        return self.local.get(kid)

    def search(self, descriptor: np.ndarray, k: int, query_stamp_ns: Optional[int] = None,
               exclude_recent_count: int = 0, exclude_recent_ns: int = 0) -> List[Candidate]:
        """Top-k keyframes by cosine similarity, skipping the last `exclude_recent_count` added and any
        within `exclude_recent_ns` of `query_stamp_ns` (so a robot does not "close a loop" with itself)."""
        vec = self._check(descriptor)
        if k <= 0:
            return []
        excluded = set(self._order[-exclude_recent_count:]) if exclude_recent_count > 0 else set()
        fetch = min(len(self), k + len(excluded))
        while fetch > 0:
            scores, ids = self._index.search(vec, fetch)
            out = []
            for score, kid in zip(scores[0], ids[0]):
                if kid < 0 or int(kid) in excluded:
                    continue
                kf = self.keyframes[int(kid)]
                if too_recent(kf, query_stamp_ns, exclude_recent_ns):
                    continue
                out.append(Candidate(kf, float(score)))
                if len(out) == k:
                    return out
            if fetch >= len(self):
                return out
            fetch = min(len(self), fetch * 2)  # time-excluded hits used up the slack: look deeper
        return []

    def position(self, kid: int) -> int:
        """Where keyframe `kid` sits in insertion order (the route as driven): sequence matching walks it."""
        return self._position[int(kid)]

    def keyframe_at(self, position: int) -> Keyframe:
        """The keyframe at an insertion position."""
        return self.keyframes[self._order[int(position)]]

    def descriptors_at(self, positions: np.ndarray) -> np.ndarray:
        """Stored descriptors (n, dim) of the keyframes at these insertion positions, in one batched read
        of the index's own storage (no copy of the map is kept beside FAISS)."""
        positions = np.asarray(positions, np.int64).reshape(-1)
        if not len(positions):
            return np.zeros((0, self.dim), np.float32)
        if positions.min() < 0 or positions.max() >= len(self):
            raise IndexError(f"keyframe positions must lie in [0, {len(self)}), got {positions.min()}..{positions.max()}")
        return faiss.downcast_index(self._cpu_index.index).reconstruct_batch(positions)

    def descriptors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored descriptors of keyframes (exact for the flat index)."""
        return np.stack([self._cpu_index.reconstruct(int(i)) for i in ids]) if ids else np.zeros((0, self.dim), np.float32)

    # ---- persistence (file format: vpr_core.map_file) ------------------------------------------
    def snapshot(self) -> Tuple[Dict[str, Any], Dict[str, bytes]]:
        """The map file's header and members as bytes (fast; writing them is the slow part)."""
        index_bytes = faiss.serialize_index(self._cpu_index).tobytes()  # kept current on GPU too (add)
        meta = json.dumps({"order": self._order, "keyframes": [asdict(self.keyframes[i]) for i in self._order]}).encode()
        local_bytes = self.local.to_bytes(self._order)
        header = {"magic": MAGIC, "version": VERSION, "dim": self.dim, "index_type": self.index_type,
                  "count": len(self), "next_id": self.next_id, "sha256_index": hashlib.sha256(index_bytes).hexdigest(),
                  "sha256_meta": hashlib.sha256(meta).hexdigest(),
                  "local_dim": self.local.dim, "local_count": len(self.local),
                  "sha256_local": hashlib.sha256(local_bytes).hexdigest()}
        return header, {META_MEMBER: meta, INDEX_MEMBER: index_bytes, LOCAL_MEMBER: local_bytes}

    def save(self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
        """Write the map atomically: everything goes to `<path>.tmp`, is fsynced, then renamed."""
        return write_map_file(path, *self.snapshot(), max_bytes)

    @classmethod
    def load(cls, path: str | Path, expected_dim: Optional[int] = None, use_gpu: str = "auto",
             max_bytes: int = DEFAULT_MAX_BYTES) -> "MapDatabase":
        """Read a map file; raises MapError, and nothing else, if anything is off (never a partial map)."""
        contents = read_map_file(path, expected_dim, max_bytes)  # everything in the file checked
        try:
            return cls._from_contents(contents, path, use_gpu)
        except MapError:
            raise
        except Exception as exc:  # FAISS, numpy or memory errors on a checked file: still the file's fault
            raise MapError(f"{path} could not be loaded ({type(exc).__name__}: {exc}); "
                           f"the in-memory map was left unchanged") from None

    @classmethod
    def _from_contents(cls, contents, path: str | Path, use_gpu: str) -> "MapDatabase":
        header = contents.header
        db = cls(header["dim"], header["index_type"], use_gpu)
        cpu = faiss.deserialize_index(np.frombuffer(contents.index_bytes, dtype=np.uint8))
        if cpu.ntotal != header["count"] or cpu.d != header["dim"]:
            raise MapError(f"{path}: index holds {cpu.ntotal} vectors of {cpu.d}, header {header['count']} of {header['dim']}")
        db._cpu_index = cpu
        db._index = faiss.index_cpu_to_all_gpus(cpu) if db.on_gpu else cpu
        db.keyframes = {kf["id"]: Keyframe(**kf) for kf in contents.keyframes}
        db._order = list(contents.order)
        db._position = {kid: p for p, kid in enumerate(db._order)}
        db.id_floor = header.get("next_id", 0)
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
