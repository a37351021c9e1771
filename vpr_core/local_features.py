"""Local features, in one place: one image's keypoints and descriptors (`LocalFeatures`, float16, capped
count), the map's store of them (`LocalFeatureStore`), what comparing two images' features found
(`Verification`), and the errors a malformed descriptor raises. Below the map and the re-rankers, so
neither imports the other for these.
"""
from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass, field
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from vpr_core.config import MAX_LOCAL_FEATURES
from vpr_core.zip_reader import read_npz

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from vpr_core.geometry.pose import PoseResult


@dataclass
class LocalFeatures:
    """`xy` (N,2) float32 pixel coordinates (x, y) in the original image; `desc` (N,C) float16, unit norm."""
    xy: np.ndarray
    desc: np.ndarray
    image_hw: Tuple[int, int]

    def __post_init__(self) -> None:
        if self.xy.ndim != 2 or self.xy.shape[1] != 2 or self.desc.ndim != 2 or len(self.xy) != len(self.desc):
            raise ValueError(f"local features need xy (N,2) and desc (N,C); got {self.xy.shape} and {self.desc.shape}")

    def __len__(self) -> int:
        return len(self.xy)

    @property
    def dim(self) -> int:
        return int(self.desc.shape[1])


def select_local(desc: np.ndarray, xy: np.ndarray, weight: Optional[np.ndarray], limit: int,
                 scale_xy: Tuple[float, float], image_hw: Tuple[int, int]) -> LocalFeatures:
    """Keep the `limit` strongest features (by `weight`, else descriptor norm), L2-normalise, float16."""
    desc = np.asarray(desc, np.float32)
    strength = np.asarray(weight, np.float32) if weight is not None else np.linalg.norm(desc, axis=1)
    keep = np.argsort(-strength, kind="stable")[:limit] if len(desc) > limit else np.arange(len(desc))
    d = desc[keep]
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    pts = np.asarray(xy, np.float32)[keep] * np.asarray(scale_xy, np.float32)
    return LocalFeatures(pts.astype(np.float32), d.astype(np.float16), image_hw)


class DescriptorError(ValueError):
    """A descriptor has the wrong shape or holds NaN/inf: it is rejected, the map stays intact."""


class LocalFeatureError(DescriptorError):
    """Local features have the wrong shape or size, or hold NaN/inf: rejected, the map stays intact."""


@dataclass
class Verification:
    """How a match was checked beyond the global score; -1 means "not computed"."""
    method: str = "none"  # none | mnn | degensac
    verified: bool = False  # the local score reached rerank.min_inliers
    num_matches: int = -1  # mutual-nearest-neighbour (putative) matches
    num_inliers: int = -1  # geometric inliers among them (degensac only)
    fundamental: Optional[np.ndarray] = field(default=None, compare=False)  # 3x3 F (degensac, model fundamental)
    homography: Optional[np.ndarray] = field(default=None, compare=False)  # 3x3 H (degensac, model homography)
    relative_pose: Optional[List[float]] = None  # [x,y,z,qx,qy,qz,qw] query in match frame, when known
    pose: Optional["PoseResult"] = field(default=None, compare=False, repr=False)  # the estimate behind it
    time_ms: float = 0.0  # time spent verifying this pair

    @property
    def local_score(self) -> int:
        """The number the candidates are re-ranked by: inliers when estimated, else mutual matches."""
        return self.num_inliers if self.num_inliers >= 0 else self.num_matches


def finite16(a: np.ndarray, chunk: int = 1 << 20) -> bool:
    """No NaN or inf in a float16 array (every exponent bit set marks them): an integer test over cache-sized
    chunks, several times faster on a large store than isfinite (no full-size temporaries)."""
    bits = np.ascontiguousarray(a).reshape(-1).view(np.uint16)
    return not any(np.any((bits[i:i + chunk] & 0x7C00) == 0x7C00) for i in range(0, len(bits), chunk))


class LocalFeatureStore:
    """Keyframe id -> LocalFeatures, compact: float16 descriptors (N,C), float32 pixel xy (N,2).

    One descriptor size per map (fixed by the first keyframe stored, or by `dim`). The count per
    keyframe is capped where the features are made (`model.max_local_features`, strongest first).
    With a memory budget (`limit`, map.max_local_mb) the least recently used features beyond it move to a
    spill file (vpr_core.local_spill) and come back when asked for: new keyframes and recently verified
    candidates stay in memory.
    """

    def __init__(self, dim: int = 0) -> None:
        self.dim = int(dim)  # 0 = not known yet
        self._items: Dict[int, Any] = {}  # every id in insertion order -> LocalFeatures (in memory) or Spilled
        self._resident: "OrderedDict[int, int]" = OrderedDict()  # ids in memory -> bytes, least recently used first
        self._resident_bytes = 0
        self._on_disk: Dict[int, Any] = {}  # ids ever spilled -> their record (records never change)
        self._spill: Any = None  # SpillFile, made on the first eviction
        self.budget = 0  # bytes of features kept in memory (0 = all)
        self.spill_dir = ""
        self.spill_reads = 0  # features read back from the spill file
        self.spill_failures = 0  # spill writes or reads that failed (the features then stay / count as missing)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, kid: int) -> bool:
        return int(kid) in self._items

    def ids(self) -> Iterator[int]:
        return iter(self._items)

    def get(self, kid: int) -> Optional[LocalFeatures]:
        """The features of keyframe `kid` (read back from the spill file when they were moved there), or None."""
        kid = int(kid)
        found = self._items.get(kid)
        if found is None or isinstance(found, LocalFeatures):
            if found is not None and kid in self._resident:
                self._resident.move_to_end(kid)
            return found
        try:
            lf = found.load()
        except OSError as exc:
            self.spill_failures += 1
            log.error("local features of keyframe %d could not be read back from the spill file: %s", kid, exc)
            return None
        self.spill_reads += 1
        self._keep(kid, lf)
        return lf

    @property
    def nbytes(self) -> int:
        """Bytes of every stored keyframe's features, in memory or spilled."""
        return sum(len(lf) * (8 + 2 * lf.dim) for lf in self._items.values())

    @property
    def resident_bytes(self) -> int:
        """Bytes of features held in memory."""
        return self._resident_bytes

    @property
    def spilled(self) -> int:
        """Keyframes whose features are only in the spill file now."""
        return len(self._items) - len(self._resident)

    def limit(self, budget_bytes: int, spill_dir: str = "") -> None:
        """Keep at most `budget_bytes` of features in memory (0 = no limit), the rest in a spill file in
        `spill_dir` (default: the system's temporary folder). Features that view a loaded map file's buffer
        are copied, so the buffer can go."""
        self.budget, self.spill_dir = max(0, int(budget_bytes)), spill_dir
        if not self.budget:
            return
        for kid in list(self._resident):
            lf = self._items[kid]
            if lf.xy.base is not None or lf.desc.base is not None:
                self._items[kid] = LocalFeatures(lf.xy.copy(), lf.desc.copy(), lf.image_hw)
        self._evict()

    def _keep(self, kid: int, lf: LocalFeatures) -> None:
        """Hold `lf` in memory as the most recently used, then move the least recently used out if over budget."""
        self._items[kid] = lf
        old = self._resident.pop(kid, None)
        self._resident_bytes += lf.xy.nbytes + lf.desc.nbytes - (old or 0)
        self._resident[kid] = lf.xy.nbytes + lf.desc.nbytes
        self._evict()

    def _evict(self) -> None:
        while self.budget and self._resident_bytes > self.budget and len(self._resident) > 1:
            kid, size = next(iter(self._resident.items()))
            record = self._on_disk.get(kid)
            if record is None:
                try:
                    if self._spill is None:
                        from vpr_core.local_spill import SpillFile
                        self._spill = SpillFile(self.spill_dir)
                    record = self._spill.write(self._items[kid])
                except OSError as exc:  # a full disk: keep everything in memory rather than lose features
                    self.spill_failures += 1
                    log.error("local features could not be moved to the spill file (%s): keeping them in memory "
                              "(map.max_local_mb no longer holds)", exc)
                    self.budget = 0
                    return
                self._on_disk[kid] = record
            del self._resident[kid]
            self._resident_bytes -= size
            self._items[kid] = record

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
        self._on_disk.pop(int(kid), None)
        self._keep(int(kid), checked)

    def add(self, kid: int, local: LocalFeatures) -> None:
        self.put(kid, self.check(local))

    # ---- persistence: one npz of concatenated arrays + offsets -----------------------------
    def items(self, order: Optional[Sequence[int]] = None) -> List[Tuple[int, LocalFeatures]]:
        """(id, features) in `order` (default: as stored), skipping ids without features: references only,
        cheap enough to take under a lock (stored features are never modified; spilled ones are records that
        read like LocalFeatures, each array read from the spill file when asked for)."""
        return [(i, self._items[i]) for i in (order if order is not None else self._items) if i in self._items]

    def to_bytes(self, order: Optional[Sequence[int]] = None) -> memoryview:
        return local_npz(self.items(order), self.dim)

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
        if not np.all(np.isfinite(xy)) or not finite16(desc):
            raise ValueError("local.npz holds NaN or inf values")
        store = cls(dim)
        for k, kid in enumerate(ids.tolist()):
            a, b = int(offsets[k]), int(offsets[k + 1])
            store._keep(int(kid), LocalFeatures(xy[a:b], desc[a:b], (int(hw[k, 0]), int(hw[k, 1]))))
        return store


def local_npz(items: Sequence[Tuple[int, LocalFeatures]], dim: int) -> memoryview:
    """The map file's local.npz of these (id, features) as bytes (`write_local_npz` into memory)."""
    buf = io.BytesIO()
    write_local_npz(items, dim, buf)
    return buf.getbuffer()  # the buffer itself, not a copy of it


def write_local_npz(items: Sequence[Tuple[int, LocalFeatures]], dim: int, fh: BinaryIO) -> None:
    """Write local.npz (ids, offsets, concatenated xy and float16 desc, image sizes, dim) into seekable `fh`,
    each keyframe's arrays streamed in turn: no concatenated copy of the store is ever made."""
    feats = [lf for _, lf in items]
    counts = np.array([len(lf) for lf in feats], np.int64)
    total = int(counts.sum())
    small = {"ids": np.array([i for i, _ in items], np.int64),
             "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
             "image_hw": np.array([lf.image_hw for lf in feats], np.int64).reshape(-1, 2),
             "dim": np.array(dim, np.int64)}
    big = {"xy": ("<f4", (total, 2), lambda lf: np.ascontiguousarray(lf.xy, "<f4")),
           "desc": ("<f2", (total, dim), lambda lf: np.ascontiguousarray(lf.desc, "<f2"))}
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in ("ids", "offsets"):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as m:
                np.lib.format.write_array(m, small[name], allow_pickle=False)
        for name, (descr, shape, part) in big.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as m:
                np.lib.format.write_array_header_1_0(m, {"descr": descr, "fortran_order": False, "shape": shape})
                for lf in feats:
                    if len(lf):
                        m.write(memoryview(part(lf)).cast("B"))
        for name in ("image_hw", "dim"):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as m:
                np.lib.format.write_array(m, small[name], allow_pickle=False)


_NPZ_SPEC = {"ids": ("i8", 1), "offsets": ("i8", 1), "xy": ("f4", 2), "desc": ("f2", 2), "image_hw": ("i8", 2),
             "dim": ("i8", 0)}  # LocalFeatureStore.to_bytes' arrays: dtype, ndim
