"""The map file format: a zip of header.json, keyframes.json, index.faiss (and local.npz from version 2;
version 3 adds the model's fingerprint to the header and a session and robot to each keyframe; version 4 adds
descriptors.f16, the exact float16 descriptors of an index that holds only codes: `ivf_rabitq`), stored
uncompressed; written to a temporary file, fsynced and renamed, so a crash never leaves half a map.

Reading trusts nothing in the file. Only a regular file is opened (a FIFO or device would block or never
end), no larger than the caller's cap; the zip directory must list exactly the members of the header's
version, uncompressed (no zip bombs), each no larger than the header's count and descriptor size allow,
before a byte of them is read. The header, the keyframe entries, the order of ids, the FAISS bytes
(vpr_core.map_index) and the local-feature arrays are checked field by field; every failure is a
MapError that says what was wrong.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from vpr_core.config import MAX_LOCAL_FEATURES
from vpr_core.map_index import INDEX_LAYOUTS, IndexFormatError, check_index_bytes, max_index_bytes
from vpr_core.zip_reader import check_directory, stored_span

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


# ---- the container ---------------------------------------------------------------------------------
_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _open_regular(path: Path, max_bytes: int) -> Tuple[BinaryIO, int]:
    """Open a regular file for reading, never blocking (a FIFO opened for reading waits for a writer)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MapError(f"map file not found: {path}") from None
    except OSError as exc:
        raise MapError(f"cannot read map file {path}: {exc.strerror}") from None
    fd = -1
    try:
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            st = os.fstat(fd)  # the path may have been swapped for something else in between
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "something else")
            raise MapError(f"{path} is {kind}, not a regular file: refusing to read it as a map")
        if st.st_size > max_bytes:
            raise MapError(f"{path} is {st.st_size / 2**20:.1f} MB, above map.max_file_mb "
                           f"({max_bytes / 2**20:.0f} MB); raise map.max_file_mb if the map is really that large")
    except (OSError, MapError) as exc:
        if fd >= 0:
            os.close(fd)
        if isinstance(exc, MapError):
            raise
        raise MapError(f"cannot read map file {path}: {exc.strerror}") from None
    return os.fdopen(fd, "rb"), st.st_size


@dataclass
class MapContents:
    """A checked map file: header, ids in insertion order with their keyframe entries, and the raw
    FAISS and local-feature bytes (FAISS bytes already walked; `index_ids` are the ids they hold)."""
    header: Dict[str, Any]
    order: List[int]
    keyframes: List[Dict[str, Any]]
    index_bytes: bytes | bytearray
    index_ids: np.ndarray
    local_bytes: Optional[bytes | bytearray]
    descriptor_bytes: Optional[bytes | bytearray] = None  # exact descriptors of a compressed index


def read_map_file(path: str | Path, expected_dim: Optional[int] = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> MapContents:
    """Read and check a map file; raises MapError (and only MapError) if anything is off."""
    path = Path(path)
    fh, size = _open_regular(path, max_bytes)
    try:
        with fh:
            return _read(fh, size, path, expected_dim, max_bytes)
    except MapError:
        raise
    except Exception as exc:  # zipfile, json and numpy raise many types for damaged input: all mean corrupt
        raise MapError(f"map file {path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                       f"the in-memory map was left unchanged") from None


def _read(fh: BinaryIO, size: int, path: Path, expected_dim: Optional[int], max_bytes: int) -> MapContents:
    check_directory(fh, size)
    with zipfile.ZipFile(fh) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise MapError(f"{path}: the zip lists a member twice ({sorted(names)})")
        if HEADER_MEMBER not in names:
            raise MapError(f"{path} is not a vpr_ros map file (no {HEADER_MEMBER}; members {sorted(names)})")

        def member(name: str, limit: int) -> bytes | bytearray:
            info = zf.getinfo(name)
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise MapError(f"{path}: member {name} is compressed; map files store members uncompressed")
            if info.file_size > limit or info.header_offset + info.file_size > size:
                raise MapError(f"{path}: member {name} declares {info.file_size} bytes, more than the "
                               f"{min(limit, size - info.header_offset)} a map with this header can hold")
            if name == HEADER_MEMBER:
                return zf.read(info)  # small, and not covered by a sha256 of its own: zip's CRC checks it
            start, length = stored_span(lambda off, n: (fh.seek(off), fh.read(n))[1], info, size)
            out = bytearray(length)  # read once, straight into the buffer the arrays will view
            fh.seek(start)
            if fh.readinto(out) != length:
                raise MapError(f"{path}: member {name} is truncated")
            return out

        header = validate_header(json.loads(member(HEADER_MEMBER, HEADER_MAX_BYTES)), str(path))
        if expected_dim is not None and header["dim"] != expected_dim:
            raise MapError(f"{path} holds {header['dim']}-D descriptors but the model produces {expected_dim}-D: "
                           f"it was built with another model; rebuild the map or switch model")
        expected = expected_members(header)
        if sorted(names) != sorted(expected):
            raise MapError(f"{path}: a version {header['version']} map holds {list(expected)}, this file {names}")
        limits = member_limits(header, max_bytes)
        meta = member(META_MEMBER, limits[META_MEMBER])
        index_bytes = member(INDEX_MEMBER, limits[INDEX_MEMBER])
        local_bytes = member(LOCAL_MEMBER, limits[LOCAL_MEMBER]) if LOCAL_MEMBER in expected else None
        descriptor_bytes = member(DESCRIPTORS_MEMBER, limits[DESCRIPTORS_MEMBER]) if DESCRIPTORS_MEMBER in expected else None
    if hashlib.sha256(index_bytes).hexdigest() != header["sha256_index"] or \
            hashlib.sha256(meta).hexdigest() != header["sha256_meta"]:
        raise MapError(f"{path} failed its checksum: the file is corrupt")
    if local_bytes is not None and hashlib.sha256(local_bytes).hexdigest() != header["sha256_local"]:
        raise MapError(f"{path} failed its checksum (local features): the file is corrupt")
    if descriptor_bytes is not None and hashlib.sha256(descriptor_bytes).hexdigest() != header["sha256_descriptors"]:
        raise MapError(f"{path} failed its checksum (descriptors): the file is corrupt")
    order, keyframes = validate_keyframes(json.loads(meta), header["count"], str(path))
    try:
        ids = check_index_bytes(index_bytes, header["index_type"], header["dim"], header["count"])
    except IndexFormatError as exc:
        raise MapError(f"{path}: index.faiss is not a {header['index_type']} index of {header['count']} "
                       f"{header['dim']}-D vectors: {exc}") from None
    if ids.tolist() != order:  # the same ids in the same insertion order: positions in the index are the route's
        raise MapError(f"{path}: the index's ids and the keyframes' order disagree")
    return MapContents(header, order, keyframes, index_bytes, ids, local_bytes, descriptor_bytes)


def is_map_file(path: str | Path) -> bool:
    """True if `path` is a regular file whose header says it is a vpr_ros map (whatever else is in it)."""
    try:
        fh, size = _open_regular(Path(path), 1 << 62)  # only the header is read
        with fh:
            check_directory(fh, size)
            with zipfile.ZipFile(fh) as zf:
                info = zf.getinfo(HEADER_MEMBER)
                if info.file_size > HEADER_MAX_BYTES:
                    return False
                header = json.loads(zf.read(info))
        return isinstance(header, dict) and header.get("magic") == MAGIC
    except Exception:  # noqa: BLE001 -- anything unreadable is not (recognisably) a map
        return False


def _size(data: Any) -> int:
    """Bytes of a member given as a buffer (bytes, a numpy array) or as a seekable file (written from its start)."""
    if _is_file(data):
        return os.fstat(data.fileno()).st_size
    return memoryview(data).nbytes


def _is_file(data: Any) -> bool:
    return hasattr(data, "fileno") and hasattr(data, "read")


def file_sha256(fh: BinaryIO, chunk: int = 1 << 20) -> str:
    """sha256 of a file's whole content, read in chunks from its start."""
    h = hashlib.sha256()
    fh.seek(0)
    for block in iter(lambda: fh.read(chunk), b""):
        h.update(block)
    return h.hexdigest()


def write_map_file(path: str | Path, header: Dict[str, Any], members: Mapping[str, Any],
                   max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Write header + members atomically (`<path>.tmp`, fsync, rename, fsync of the folder). A member is bytes or
    a seekable file, copied in chunks. Refuses (MapError) a map its own reader would refuse as too large,
    before touching the disk."""
    path = Path(path)
    limits = member_limits(header, max_bytes)
    for name, data in members.items():
        if _size(data) > limits[name]:
            raise MapError(f"cannot save {path}: {name} would be {_size(data)} bytes, above the {limits[name]} a map "
                           f"file may hold (map.max_file_mb {max_bytes >> 20}); raise map.max_file_mb")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr(HEADER_MEMBER, json.dumps(header))
                for name, data in members.items():
                    if not _is_file(data):
                        zf.writestr(name, data)
                        continue
                    data.seek(0)
                    with zf.open(name, "w", force_zip64=True) as out:
                        shutil.copyfileobj(data, out, 1 << 20)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if not tmp.is_dir():
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
