"""What a map file may hold: its members per format version, and the header and keyframe entries checked
field by field (vpr_core.map_file reads and writes the container; a failure is a MapError saying what)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from vpr_core.config import MAX_LOCAL_FEATURES
from vpr_core.map_index import INDEX_LAYOUTS, max_index_bytes

MAGIC = "vpr_ros-map"
VERSION = 4  # 2: local.npz (keyframes' local features) added; 3: the model's fingerprint, keyframes' session and robot;
#              4: descriptors.f16 beside a compressed index (a flat or IVF map's version 4 file equals its version 3 one)
READABLE_VERSIONS = (1, 2, 3, 4)
HEADER_MEMBER, META_MEMBER, INDEX_MEMBER = "header.json", "keyframes.json", "index.faiss"
LOCAL_MEMBER = "local.npz"  # member of the map file holding the local features
DESCRIPTORS_MEMBER = "descriptors.f16"  # count x dim little-endian float16, insertion order (compressed indexes only)
MEMBERS = {1: (HEADER_MEMBER, META_MEMBER, INDEX_MEMBER), 2: (HEADER_MEMBER, META_MEMBER, INDEX_MEMBER, LOCAL_MEMBER),
           3: (HEADER_MEMBER, META_MEMBER, INDEX_MEMBER, LOCAL_MEMBER), 4: (HEADER_MEMBER, META_MEMBER, INDEX_MEMBER, LOCAL_MEMBER)}
DEFAULT_MAX_BYTES = 4096 << 20  # config map.max_file_mb
HEADER_MAX_BYTES = 64 << 10
KEYFRAME_JSON_BYTES = 16 << 10  # keyframes.json bytes per keyframe at most (ids, stamp, pose, a long frame id)
MAX_DIM = 1 << 20
MAX_COUNT = 1 << 40
STAMP_MAX_NS = (1 << 31) * 1_000_000_000  # ROS time: int32 seconds


class MapError(RuntimeError):
    """A map file is unreadable, truncated, corrupt or was built for another descriptor size."""


_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "an object", type(None): "null"}


def _kind(value: Any) -> str:
    return _KIND_NAMES.get(type(value), type(value).__name__)


# ---- header.json: field -> type, range, first version that has it ---------------------------------
@dataclass(frozen=True)
class Field:
    kind: type
    check: Callable[[Any], Optional[str]]  # None when the value is fine, else what is wrong with it
    since: int = 1
    optional: bool = False


def _within(lo: int, hi: int) -> Callable[[Any], Optional[str]]:
    return lambda v: None if lo <= v <= hi else f"is {v}, outside [{lo}, {hi}]"


def _sha(v: str) -> Optional[str]:
    return None if len(v) == 64 and all(c in "0123456789abcdef" for c in v) else "is not a sha256 hex digest"


HEADER_FIELDS: Dict[str, Field] = {  # checked in this order: magic and version first
    "magic": Field(str, lambda v: None if v == MAGIC else f"is {v!r}, not {MAGIC!r}: not a vpr_ros map file"),
    "version": Field(int, lambda v: None if v in READABLE_VERSIONS else
                     f"is {v}: the file has map format version {v}, this build reads "
                     f"{', '.join(map(str, READABLE_VERSIONS))}"),
    "dim": Field(int, _within(1, MAX_DIM)),
    "index_type": Field(str, lambda v: None if v in INDEX_LAYOUTS else
                        f"is {v!r}, not an index type this build reads ({', '.join(sorted(INDEX_LAYOUTS))})"),
    "count": Field(int, _within(0, MAX_COUNT)),
    "next_id": Field(int, _within(0, (1 << 63) - 1), optional=True),
    "sha256_index": Field(str, _sha),
    "sha256_meta": Field(str, _sha),
    "local_dim": Field(int, _within(0, MAX_DIM), since=2),
    "local_count": Field(int, _within(0, MAX_COUNT), since=2),
    "sha256_local": Field(str, _sha, since=2),
    "model": Field(str, lambda v: None if len(v) <= 256 else "is longer than 256 characters", since=3),
    "sha256_descriptors": Field(str, _sha, since=4, optional=True),  # with descriptors.f16
}


def expected_members(header: Mapping[str, Any]) -> Tuple[str, ...]:
    """The zip members a map with this (validated) header holds."""
    extra = (DESCRIPTORS_MEMBER,) if INDEX_LAYOUTS[header["index_type"]].separate_descriptors else ()
    return MEMBERS[header["version"]] + extra


def _typed(value: Any, kind: type | Tuple[type, ...]) -> bool:
    """isinstance, except that a JSON true/false is never a number."""
    return isinstance(value, kind) and not isinstance(value, bool)


def validate_header(header: Any, where: str) -> Dict[str, Any]:
    """The header as a dict whose every field has its type and range; raises MapError naming the field."""
    if not isinstance(header, dict):
        raise MapError(f"{where}: header.json holds {_kind(header)}, not an object: not a vpr_ros map file")
    if header.get("magic") != MAGIC:
        raise MapError(f"{where} is not a vpr_ros map file (header magic {header.get('magic')!r})")
    version = header.get("version")
    known = {k for k, f in HEADER_FIELDS.items() if not _typed(version, int) or f.since <= version}
    if set(header) - known:
        raise MapError(f"{where}: header.json has unknown field(s) {sorted(set(header) - known)}")
    for name, f in HEADER_FIELDS.items():
        if name not in known:
            continue
        if name not in header:
            if f.optional:
                continue
            raise MapError(f"{where}: header.json lacks the field '{name}'")
        value = header[name]
        if not _typed(value, f.kind):
            raise MapError(f"{where}: header field '{name}' must be {_KIND_NAMES[f.kind]}, got {_kind(value)} ({value!r})")
        problem = f.check(value)
        if problem:
            raise MapError(f"{where}: header field '{name}' {problem}")
    separate = INDEX_LAYOUTS[header["index_type"]].separate_descriptors
    if separate != ("sha256_descriptors" in header) or (separate and header["version"] < 4):
        raise MapError(f"{where}: a {header['index_type']} map of version {header['version']} "
                       f"{'needs' if separate else 'has no'} descriptors (header field sha256_descriptors)")
    if header.get("local_count", 0) > header["count"]:
        raise MapError(f"{where}: local features and keyframes disagree (header local_count "
                       f"{header['local_count']} > count {header['count']})")
    return header


def member_limits(header: Mapping[str, Any], max_bytes: int) -> Dict[str, int]:
    """The most bytes each member of a map with this header may hold (never more than `max_bytes`)."""
    count = header["count"]
    limits = {HEADER_MEMBER: HEADER_MAX_BYTES, META_MEMBER: 1024 + count * KEYFRAME_JSON_BYTES,
              INDEX_MEMBER: max_index_bytes(header["index_type"], header["dim"], count)}
    if header["version"] >= 2:
        per_keyframe = MAX_LOCAL_FEATURES * (2 * header["local_dim"] + 8) + 64
        limits[LOCAL_MEMBER] = (64 << 10) + header["local_count"] * per_keyframe
    if DESCRIPTORS_MEMBER in expected_members(header):
        limits[DESCRIPTORS_MEMBER] = 2 * header["dim"] * count
    return {k: min(v, max_bytes) for k, v in limits.items()}


# ---- keyframes.json --------------------------------------------------------------------------------
def _pose(v: Any) -> Optional[str]:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 7 or not all(_typed(x, (int, float)) and math.isfinite(x) for x in v):
        return "must be null or 7 finite numbers [x, y, z, qx, qy, qz, qw]"
    return None


KEYFRAME_FIELDS: Dict[str, Tuple[Callable[[Any], Optional[str]], bool]] = {  # name -> (check, required)
    "id": (lambda v: None if _typed(v, int) and 0 <= v < (1 << 63) else "must be an integer in [0, 2**63)", True),
    "stamp_ns": (lambda v: None if _typed(v, int) and 0 <= v < STAMP_MAX_NS else
                 f"must be an integer in [0, {STAMP_MAX_NS}) (a ROS time in ns)", True),
    "frame_id": (lambda v: None if isinstance(v, str) else "must be a string", False),
    "pose": (_pose, False),
    "local_features": (lambda v: None if isinstance(v, str) else "must be a string", False),
    "session": (lambda v: None if _typed(v, int) and 0 <= v < (1 << 31) else "must be an integer in [0, 2**31)", False),
    "robot": (lambda v: None if isinstance(v, str) and len(v) <= 256 else "must be a string of at most 256 characters",
              False),
}


def _ints_within(values: List[Any], lo: int, hi: int) -> bool:
    return all(type(v) is int for v in values) and (not values or lo <= min(values) and max(values) < hi)


def _entries_fine(entries: List[Any]) -> bool:
    """Whole-column checks of the keyframe entries, tens of times faster than `KEYFRAME_FIELDS` entry by
    entry (a 1M-keyframe map); never looser: False sends the entries through the per-entry checks, which
    name the first wrong one."""
    if not all(type(kf) is dict for kf in entries) or set().union(*entries) - set(KEYFRAME_FIELDS):
        return False
    if not all("id" in kf and "stamp_ns" in kf for kf in entries):
        return False
    column = lambda name: [kf[name] for kf in entries if name in kf]  # noqa: E731
    if not (_ints_within(column("id"), 0, 1 << 63) and _ints_within(column("stamp_ns"), 0, STAMP_MAX_NS)
            and _ints_within(column("session"), 0, 1 << 31)):
        return False
    if not all(type(v) is str for name in ("frame_id", "local_features", "robot") for v in column(name)):
        return False
    if any(len(v) > 256 for v in column("robot")):
        return False
    poses = [p for p in column("pose") if p is not None]
    if not all(type(p) is list and len(p) == 7 and all(type(x) in (int, float) for x in p) for p in poses):
        return False
    return not poses or bool(np.isfinite(np.array(poses, np.float64)).all())


def validate_keyframes(meta: Any, count: int, where: str) -> Tuple[List[int], List[Dict[str, Any]]]:
    """(order, keyframe entries in that order) from keyframes.json, every entry checked field by field and
    the order naming each keyframe exactly once; raises MapError saying which entry is wrong."""
    if not isinstance(meta, dict) or set(meta) != {"order", "keyframes"}:
        got = sorted(meta) if isinstance(meta, dict) else _kind(meta)
        raise MapError(f"{where}: keyframes.json must be an object with 'order' and 'keyframes', got {got}")
    order, entries = meta["order"], meta["keyframes"]
    if not isinstance(order, list) or not isinstance(entries, list):
        raise MapError(f"{where}: keyframes.json 'order' and 'keyframes' must be lists")
    if len(order) != count or len(entries) != count:
        raise MapError(f"{where}: header counts {count} keyframes, keyframes.json has {len(entries)} entries "
                       f"and an order of {len(order)}")
    by_id: Dict[int, Dict[str, Any]] = {}
    if _entries_fine(entries):
        by_id = {kf["id"]: kf for kf in entries}
        if len(by_id) != len(entries):
            by_id = {}  # an id twice: the per-entry pass below names it
    for i, kf in enumerate(entries if not by_id else ()):
        if not isinstance(kf, dict):
            raise MapError(f"{where}: keyframe entry {i} is {_kind(kf)}, not an object")
        unknown = set(kf) - set(KEYFRAME_FIELDS)
        if unknown:
            raise MapError(f"{where}: keyframe entry {i} has unknown field(s) {sorted(unknown)}")
        for name, (check, required) in KEYFRAME_FIELDS.items():
            if name not in kf:
                if required:
                    raise MapError(f"{where}: keyframe entry {i} lacks '{name}'")
                continue
            problem = check(kf[name])
            if problem:
                raise MapError(f"{where}: keyframe entry {i} field '{name}' {problem}, got {kf[name]!r}")
        if kf["id"] in by_id:
            raise MapError(f"{where}: keyframe id {kf['id']} appears twice in keyframes.json")
        by_id[kf["id"]] = kf
    if not all(_typed(k, int) for k in order) or len(set(order)) != len(order) or set(order) != set(by_id):
        raise MapError(f"{where}: keyframes.json 'order' must name every keyframe id exactly once "
                       f"({len(set(order) - set(by_id))} unknown, {len(set(by_id) - set(order))} missing, "
                       f"{len(order) - len(set(order))} repeated)")
    return order, [by_id[k] for k in order]
