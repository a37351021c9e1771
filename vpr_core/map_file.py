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
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Tuple

import numpy as np

from vpr_core.map_index import IndexFormatError, check_index_bytes
from vpr_core.map_schema import (DEFAULT_MAX_BYTES, DESCRIPTORS_MEMBER, HEADER_MAX_BYTES, HEADER_MEMBER, INDEX_MEMBER,
                                 LOCAL_MEMBER, MAGIC, META_MEMBER, MapError, expected_members, member_limits,
                                 validate_header, validate_keyframes)
from vpr_core.zip_reader import check_directory, stored_span

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
