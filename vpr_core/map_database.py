"""The map of places: a FAISS inner-product index of keyframe descriptors, metadata beside it.

Incremental add, top-K search that skips the most recent keyframes (by count and by time), and a
single-file save that is written to a temporary file and renamed, so a crash never leaves a
half-written map. Loading checks magic, version, descriptor size and a checksum first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import faiss
import numpy as np

from vpr_core.registry import Registry

log = logging.getLogger(__name__)

MAGIC = "vpr_ros-map"
VERSION = 1


class MapError(RuntimeError):
    """A map file is unreadable, truncated, corrupt or was built for another descriptor size."""


class DescriptorError(ValueError):
    """A descriptor has the wrong shape or holds NaN/inf: it is rejected, the map stays intact."""


@dataclass
class Keyframe:
    """What the map remembers about a keyframe besides its descriptor."""
    id: int
    stamp_ns: int
    frame_id: str = ""
    pose: Optional[List[float]] = None  # [x, y, z, qx, qy, qz, qw] in the map frame, when known
    local_features: str = ""  # where its local features live (re-ranking), when stored


@dataclass
class Candidate:
    """One search hit: a keyframe and its cosine similarity to the query."""
    keyframe: Keyframe
    score: float

    @property
    def id(self) -> int:
        return self.keyframe.id


INDEX_TYPES: Registry[Callable[[int], faiss.Index]] = Registry("map index")


@INDEX_TYPES.register("flat")
def _flat(dim: int) -> faiss.Index:
    """Exact search: right for maps up to about a million keyframes."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


@INDEX_TYPES.register("hnsw")
def _hnsw(dim: int, m: int = 32) -> faiss.Index:
    """Approximate graph search (no training needed), for large maps where exact search is too slow."""
    inner = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efSearch = 128
    return faiss.IndexIDMap2(inner)


def gpu_usable() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


@dataclass
class MapDatabase:
    """Keyframe descriptors (unit L2 norm, float32) in a FAISS index with id -> Keyframe metadata."""
    dim: int
    index_type: str = "flat"
    use_gpu: str = "auto"
    keyframes: Dict[int, Keyframe] = field(default_factory=dict)
    _order: List[int] = field(default_factory=list, repr=False)  # ids in insertion order
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

    def add(self, descriptor: np.ndarray, keyframe: Keyframe) -> None:
        """Insert one keyframe; a bad descriptor or a reused id raises before anything changes."""
        vec = self._check(descriptor)
        if keyframe.id in self.keyframes:
            raise ValueError(f"keyframe id {keyframe.id} is already in the map")
        self._index.add_with_ids(vec, np.array([keyframe.id], dtype=np.int64))
        self.keyframes[keyframe.id] = keyframe
        self._order.append(keyframe.id)

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
                if query_stamp_ns is not None and exclude_recent_ns > 0 and abs(query_stamp_ns - kf.stamp_ns) < exclude_recent_ns:
                    continue
                out.append(Candidate(kf, float(score)))
                if len(out) == k:
                    return out
            if fetch >= len(self):
                return out
            fetch = min(len(self), fetch * 2)  # time-excluded hits used up the slack: look deeper
        return []

    def descriptors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored descriptors of keyframes (exact for the flat index)."""
        return np.stack([self._cpu_index.reconstruct(int(i)) for i in ids]) if ids else np.zeros((0, self.dim), np.float32)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the map atomically: everything goes to `<path>.tmp`, is fsynced, then renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._cpu_index
        index_bytes = faiss.serialize_index(cpu).tobytes()
        meta = json.dumps({"order": self._order, "keyframes": [asdict(self.keyframes[i]) for i in self._order]}).encode()
        header = {"magic": MAGIC, "version": VERSION, "dim": self.dim, "index_type": self.index_type,
                  "count": len(self), "next_id": self.next_id, "sha256_index": hashlib.sha256(index_bytes).hexdigest(),
                  "sha256_meta": hashlib.sha256(meta).hexdigest()}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr("header.json", json.dumps(header))
                zf.writestr("keyframes.json", meta)
                zf.writestr("index.faiss", index_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, expected_dim: Optional[int] = None, use_gpu: str = "auto") -> "MapDatabase":
        """Read a map file; raises MapError (never returns a partial map) if anything is off."""
        path = Path(path)
        try:
            with zipfile.ZipFile(path) as zf:
                header = json.loads(zf.read("header.json"))
                meta = zf.read("keyframes.json")
                index_bytes = zf.read("index.faiss")
        except FileNotFoundError:
            raise MapError(f"map file not found: {path}") from None
        except Exception as exc:  # zipfile raises many types for damaged archives; all mean "corrupt"
            raise MapError(f"map file {path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                           f"the in-memory map was left unchanged") from None
        if header.get("magic") != MAGIC:
            raise MapError(f"{path} is not a vpr_ros map file")
        if header.get("version") != VERSION:
            raise MapError(f"{path} has map format version {header.get('version')}, this build reads {VERSION}")
        if expected_dim is not None and header["dim"] != expected_dim:
            raise MapError(f"{path} holds {header['dim']}-D descriptors but the model produces {expected_dim}-D: "
                           f"it was built with another model; rebuild the map or switch model")
        if hashlib.sha256(index_bytes).hexdigest() != header["sha256_index"] or \
                hashlib.sha256(meta).hexdigest() != header["sha256_meta"]:
            raise MapError(f"{path} failed its checksum: the file is corrupt")
        db = cls(header["dim"], header["index_type"], use_gpu)
        cpu = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        data = json.loads(meta)
        if cpu.ntotal != header["count"] or len(data["order"]) != header["count"] or cpu.d != header["dim"]:
            raise MapError(f"{path}: index holds {cpu.ntotal} vectors, metadata {len(data['order'])}, header {header['count']}")
        db._cpu_index = cpu
        db._index = faiss.index_cpu_to_all_gpus(cpu) if db.on_gpu else cpu
        db.keyframes = {kf["id"]: Keyframe(**kf) for kf in data["keyframes"]}
        db._order = [int(i) for i in data["order"]]
        db.id_floor = int(header.get("next_id", 0))
        return db
